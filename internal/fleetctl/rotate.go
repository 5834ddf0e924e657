package fleetctl

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
)

// Rotation is one device's rotation as fleetctl watched it.
type Rotation struct {
	ThingName  string `json:"thingName"`
	Serial     string `json:"serial,omitempty"`
	RotationID string `json:"rotationId,omitempty"`
	// Status: completed, failed, or the step still in progress
	// (requested, issued) when the wait ended.
	Status        string     `json:"status"`
	CertificateID string     `json:"certificateId,omitempty"`
	CertNotAfter  *time.Time `json:"certNotAfter,omitempty"`
}

// RequestRotation invokes the certificate scan (docs/rotation.md) for a
// device (serial or thing name), a thing group, or, with neither, the
// scheduled scan of the certificates expiring within its window.
func (f *Fleet) RequestRotation(ctx context.Context, device, group string) (certscan.Report, error) {
	req := certscan.Request{ThingGroup: group}
	if device != "" {
		d, err := f.findDevice(ctx, device)
		if err != nil {
			return certscan.Report{}, err
		}
		if d.ThingName == "" || d.State == registry.StateRevoked || d.State == registry.StateRevoking {
			return certscan.Report{}, withCode(ExitRefused, fmt.Errorf("device %s is %s: it has no certificate to rotate", d.Serial, d.State))
		}
		req.ThingName = d.ThingName
	}
	var rep certscan.Report
	err := f.invoke(ctx, OutCertScan, req, &rep)
	return rep, err
}

// WaitRotations watches the registry until each requested rotation
// (thing → rotation id) finished; the context's deadline bounds it. It
// returns the last state of each.
func (f *Fleet) WaitRotations(ctx context.Context, requested map[string]string) ([]Rotation, error) {
	reg, err := f.Registry()
	if err != nil {
		return nil, err
	}
	serials := map[string]string{}
	if err := registry.ScanAll(ctx, reg, func(d registry.Device) error {
		if _, ok := requested[d.ThingName]; ok {
			serials[d.ThingName] = d.Serial
		}
		return nil
	}); err != nil {
		return nil, err
	}
	things := slices.Sorted(maps.Keys(requested))
	out := make([]Rotation, len(things))
	last := map[string]string{}
	for {
		pending := 0
		for i, thing := range things {
			r := Rotation{ThingName: thing, Serial: serials[thing], RotationID: requested[thing], Status: "requested"}
			if r.Serial == "" {
				r.Status = "not in the registry"
				out[i] = r
				continue
			}
			d, err := reg.Get(ctx, r.Serial)
			if err != nil {
				return out, fmt.Errorf("registry %s: %w", r.Serial, err)
			}
			switch {
			case d.LastRotationID == r.RotationID:
				r.Status = string(d.LastRotationStatus)
			case d.RotationID == r.RotationID:
				r.Status = string(d.RotationState)
				pending++
			default:
				r.Status = "superseded"
			}
			r.CertificateID = d.CertificateID
			if !d.CertNotAfter.IsZero() {
				t := d.CertNotAfter
				r.CertNotAfter = &t
			}
			out[i] = r
			if last[thing] != r.Status {
				last[thing] = r.Status
				f.progressf("rotation %s: %s", thing, r.Status)
			}
		}
		if pending == 0 {
			return out, nil
		}
		if err := backoff.Sleep(ctx, f.poll()); err != nil {
			return out, err
		}
	}
}

func newRotateCommand(g *globalFlags) *cobra.Command {
	var (
		expiring bool
		group    string
		noWait   bool
		timeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rotate (DEVICE | --group G | --expiring)",
		Short: "Rotate device certificates now, and wait until the rotation completes",
		Long: `rotate invokes the stack's certificate scan Lambda (docs/rotation.md): for DEVICE
(a serial or a thing name), for every device of --group G, or with --expiring
the scheduled scan (every certificate expiring within the scan's window). Each
device asked makes a new key, gets a new certificate and confirms it by
connecting with it; fleetctl watches the registry until every rotation
completed or failed.

` + exitCodesHelp + ` 1 when a rotation failed or a device could not be asked;
4 when the device cannot rotate (revoked); 5 when --timeout ended the wait (the
device may be offline: the daily scan asks it again).`,
		Args: cobraArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			device := ""
			if len(args) == 1 {
				device = args[0]
			}
			n := 0
			for _, set := range []bool{device != "", group != "", expiring} {
				if set {
					n++
				}
			}
			if n != 1 {
				return usagef("give exactly one of DEVICE, --group G or --expiring")
			}
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			rep, err := f.RequestRotation(ctx, device, group)
			if err != nil {
				return err
			}
			f.progressf("rotation requested for %d device(s)%s", len(rep.Requested), pendingNote(rep))
			var rotations []Rotation
			var waitErr error
			if !noWait && len(rep.Requested) > 0 {
				wctx, cancel := context.WithTimeout(ctx, timeout)
				rotations, err = f.WaitRotations(wctx, rep.Requested)
				cancel()
				waitErr = timedOut(err, "certificate rotation", timeout)
				if waitErr != nil && rotations == nil {
					return waitErr
				}
			} else {
				for _, thing := range slices.Sorted(maps.Keys(rep.Requested)) {
					rotations = append(rotations, Rotation{ThingName: thing, RotationID: rep.Requested[thing], Status: "requested"})
				}
			}
			if err := writeRotations(cmd.OutOrStdout(), g.output, rotations, rep); err != nil {
				return err
			}
			if waitErr != nil {
				return waitErr
			}
			var failed []string
			for _, r := range rotations {
				if r.Status == string(registry.RotationFailed) || r.Status == "not in the registry" {
					failed = append(failed, r.ThingName)
				}
			}
			for thing := range rep.Failed {
				failed = append(failed, thing)
			}
			if device != "" && len(rep.Requested) == 0 && len(rep.Pending) == 0 {
				for thing, why := range rep.Skipped {
					failed = append(failed, thing+" skipped: "+why)
				}
			}
			if len(failed) > 0 {
				slices.Sort(failed)
				return withCode(ExitFailed, fmt.Errorf("rotation failed for %s", strings.Join(failed, ", ")))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&expiring, "expiring", false, "run the scheduled scan: every certificate expiring within its window")
	cmd.Flags().StringVar(&group, "group", "", "every device of this thing group")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "only ask; do not wait for the rotations")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for the rotations (exit 5 after)")
	return cmd
}

func pendingNote(rep certscan.Report) string {
	if len(rep.Pending) == 0 {
		return ""
	}
	return fmt.Sprintf("; %d already rotating (recently asked): %s", len(rep.Pending), strings.Join(rep.Pending, ", "))
}

func writeRotations(w io.Writer, format string, rotations []Rotation, rep certscan.Report) error {
	if format == "json" {
		if rotations == nil {
			rotations = []Rotation{}
		}
		return writeJSON(w, map[string]any{"rotations": rotations, "pending": rep.Pending, "skipped": rep.Skipped, "failed": rep.Failed})
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "THING\tSERIAL\tROTATION\tCERTIFICATE\tEXPIRES")
	for _, r := range rotations {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ThingName, orDash(r.Serial), r.Status, orDash(shortID(r.CertificateID)), date(r.CertNotAfter))
	}
	for _, thing := range slices.Sorted(maps.Keys(rep.Skipped)) {
		fmt.Fprintf(tw, "%s\t-\tskipped\t%s\t-\n", thing, rep.Skipped[thing])
	}
	for _, thing := range slices.Sorted(maps.Keys(rep.Failed)) {
		fmt.Fprintf(tw, "%s\t-\tnot asked\t%s\t-\n", thing, rep.Failed[thing])
	}
	return tw.Flush()
}
