package fleetctl

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

// SSM invokes the toggle Lambda (docs/ssm.md) for one device (serial or
// thing name) or a thing group. A device the toggle could not change is
// in the response (Result.OK false, Failed > 0), not an error.
func (f *Fleet) SSM(ctx context.Context, action, device, group string) (ssmtoggle.Response, error) {
	if (device == "") == (group == "") {
		return ssmtoggle.Response{}, usagef("give a DEVICE or --group G (one of them)")
	}
	var resp ssmtoggle.Response
	err := f.invoke(ctx, OutSSMToggle, ssmtoggle.Request{DeviceID: device, ThingGroup: group, Action: action}, &resp)
	return resp, err
}

// WaitSSMRegistered asks the toggle for the status of the devices until
// each registered its SSM agent (state active, with a managed-instance
// id) or failed; the context's deadline bounds it.
func (f *Fleet) WaitSSMRegistered(ctx context.Context, devices []string) ([]ssmtoggle.Result, error) {
	results := make([]ssmtoggle.Result, len(devices))
	pending := map[int]bool{}
	for i := range devices {
		pending[i] = true
	}
	for {
		for i := range pending {
			resp, err := f.SSM(ctx, ssmtoggle.ActionStatus, devices[i], "")
			if err != nil {
				return results, err
			}
			if len(resp.Results) != 1 {
				return results, fmt.Errorf("ssm status of %s: %d results", devices[i], len(resp.Results))
			}
			r := resp.Results[0]
			results[i] = r
			switch {
			case !r.OK:
				delete(pending, i)
			case r.State == ssmstate.StateActive && r.InstanceID != "":
				f.progressf("%s registered as managed node %s", orDash(r.ThingName), r.InstanceID)
				delete(pending, i)
			case r.State != ssmstate.StateActivating:
				// Expired or turned off meanwhile: it will not register.
				if r.Message == "" {
					r.Message = "the device is " + string(r.State) + ", not registering"
				}
				r.OK, r.Error = false, r.Message
				results[i] = r
				delete(pending, i)
			}
		}
		if len(pending) == 0 {
			return results, nil
		}
		f.progressf("waiting for %d device(s) to install and register the SSM agent...", len(pending))
		if err := backoff.Sleep(ctx, f.poll()); err != nil {
			return results, err
		}
	}
}

// StartSessionCommand is what an operator types to open a session.
func (f *Fleet) StartSessionCommand(instanceID string) string {
	cmd := "aws ssm start-session --target " + instanceID
	if r := f.Outputs.optional(OutRegion); r != "" && !f.Local {
		cmd += " --region " + r
	}
	return cmd
}

func newSSMCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ssm",
		Short: "Turn AWS Systems Manager on or off for a device or a thing group",
		Long: `ssm invokes the stack's SSM toggle Lambda (docs/ssm.md). "on" creates a one-time
hybrid activation and sends it to the device, which installs and registers the
SSM agent; fleetctl waits for the registration and prints the managed-instance
id and the aws ssm start-session command. "off" removes it again; "status"
shows the state.`,
	}
	for _, a := range []struct{ name, action, short string }{
		{"on", ssmtoggle.ActionActivate, "Turn SSM on and wait for the device to register"},
		{"off", ssmtoggle.ActionDeactivate, "Turn SSM off (deregister the managed node, remove the agent)"},
		{"status", ssmtoggle.ActionStatus, "Show the SSM state"},
	} {
		cmd.AddCommand(newSSMActionCommand(g, a.name, a.action, a.short))
	}
	return cmd
}

func newSSMActionCommand(g *globalFlags, name, action, short string) *cobra.Command {
	var (
		group   string
		noWait  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   name + " (DEVICE | --group G)",
		Short: short,
		Long: short + `. DEVICE is a serial or a thing name.

` + exitCodesHelp + ` 1 when the toggle failed for any device; 5 when a device did not register
within --timeout.`,
		Args: cobraArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			device := ""
			if len(args) == 1 {
				device = args[0]
			}
			if (device == "") == (group == "") {
				return usagef("give a DEVICE or --group G (one of them)")
			}
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			resp, err := f.SSM(ctx, action, device, group)
			if err != nil {
				return err
			}
			results := resp.Results
			var waitErr error
			if action == ssmtoggle.ActionActivate && !noWait {
				var ids []string
				var idx []int
				for i, r := range results {
					if r.OK {
						ids = append(ids, cmp.Or(r.ThingName, r.Serial, r.DeviceID))
						idx = append(idx, i)
					}
				}
				wctx, cancel := context.WithTimeout(ctx, timeout)
				got, err := f.WaitSSMRegistered(wctx, ids)
				cancel()
				for j, i := range idx {
					if got[j].DeviceID != "" {
						results[i] = got[j]
					}
				}
				waitErr = timedOut(err, "SSM registration", timeout)
			}
			if err := writeSSM(cmd.OutOrStdout(), g.output, f, action, results); err != nil {
				return err
			}
			if waitErr != nil {
				return waitErr
			}
			var failed []string
			for _, r := range results {
				if !r.OK {
					failed = append(failed, cmp.Or(r.ThingName, r.DeviceID)+": "+r.Error)
				}
			}
			if len(failed) > 0 {
				return withCode(ExitFailed, fmt.Errorf("ssm %s failed for %d device(s): %s", name, len(failed), strings.Join(failed, "; ")))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "thing group (instead of DEVICE)")
	if action == ssmtoggle.ActionActivate {
		cmd.Flags().BoolVar(&noWait, "no-wait", false, "do not wait for the registration")
		cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for the registration (exit 5 after)")
	}
	return cmd
}

func writeSSM(w io.Writer, format string, f *Fleet, action string, results []ssmtoggle.Result) error {
	if format == "json" {
		type row struct {
			ssmtoggle.Result
			StartSession string `json:"start_session,omitempty"`
		}
		rows := make([]row, 0, len(results))
		for _, r := range results {
			x := row{Result: r}
			if r.InstanceID != "" && r.State == ssmstate.StateActive {
				x.StartSession = f.StartSessionCommand(r.InstanceID)
			}
			rows = append(rows, x)
		}
		return writeJSON(w, map[string]any{"action": action, "results": rows})
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tTHING\tOK\tSTATE\tMANAGED INSTANCE\tMESSAGE")
	for _, r := range results {
		msg := r.Message
		if r.Error != "" {
			msg = r.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\n", cmp.Or(r.Serial, r.DeviceID), orDash(r.ThingName), r.OK, orDash(string(r.State)), orDash(r.InstanceID), orDash(msg))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		if r.InstanceID != "" && r.State == ssmstate.StateActive {
			fmt.Fprintf(w, "session on %s: %s\n", orDash(r.ThingName), f.StartSessionCommand(r.InstanceID))
		}
	}
	return nil
}
