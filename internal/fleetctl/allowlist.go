package fleetctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/spf13/cobra"

	"github.com/iot-fleet/iot-fleet/infra/stackconfig"
	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/registry"
)

func newAllowlistCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "allowlist",
		Short: "Check allowlist.txt and show what deploying it would do",
		Long: `allowlist.txt lists the serials that may provision, one per line; a serial may
carry readmit=TOKEN to re-admit a device that was provisioned before (a
reflashed SD card, a replaced board). See README "Admitting and revoking
devices".`,
	}
	cmd.AddCommand(newAllowlistCheckCommand(g), newAllowlistDiffCommand(g))
	return cmd
}

func newAllowlistCheckCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "check [FILE]",
		Short: "Validate an allowlist file (every bad line, with its number)",
		Long: `check validates FILE (default: the stack's allowlistPath, allowlist.txt) with the
stack's serial pattern, exactly as the allowlist sync will, and reports every
bad line with its number. It needs no AWS access.

Exit codes: 0 valid; 3 the file is invalid; 1 it cannot be read; 2 usage.`,
		Args: cobraArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, path, entries, err := g.readStackAllowlist(args)
			if err != nil {
				return err
			}
			readmits := 0
			for _, e := range entries {
				if e.ReadmitToken != "" {
					readmits++
				}
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return writeJSON(out, map[string]any{"file": path, "serials": len(entries), "readmissions": readmits, "valid": true})
			}
			fmt.Fprintf(out, "%s: %d serial(s), %d with readmit: valid\n", path, len(entries), readmits)
			return nil
		},
	}
}

func newAllowlistDiffCommand(g *globalFlags) *cobra.Command {
	var (
		table   string
		confirm int
	)
	cmd := &cobra.Command{
		Use:   "diff [FILE]",
		Short: "Show what deploying an allowlist would admit, re-admit and revoke",
		Long: `diff compares FILE (default: the stack's allowlistPath) with the stack's device
registry and prints what the allowlist sync would do with it: the serials it
admits, the devices it re-admits and the devices it revokes, and whether the
revocation limit (stack config maxRevocationsPerSync, default max(5, 10% of the
provisioned fleet)) refuses it. It is the sync's own plan; it changes nothing.

The registry table comes from --registry-table or the stack output
registryTable (--stack, --outputs or --local). Credentials, region and
endpoint are the AWS SDK's usual settings (AWS_PROFILE, AWS_REGION,
AWS_ENDPOINT_URL_DYNAMODB…); the region defaults to the stack's; with --local
the local IoT Core's registry is read.

Exit codes: 0 the sync would apply the plan; 3 the file is invalid; 4 the sync
would refuse the plan (the reason says how to confirm it); 1 the registry
could not be read.`,
		Args: cobraArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cfg, path, entries, err := g.readStackAllowlist(args)
			if err != nil {
				return err
			}
			outputs := Outputs{}
			if table == "" || g.hasOutputs() {
				if outputs, err = g.outputs(ctx); err != nil {
					return err
				}
			}
			f, err := g.connect(cmd, outputs)
			if err != nil {
				return err
			}
			ch, err := f.PlanAllowlist(ctx, table, entries, allowlist.Limits{MaxRevocations: cfg.MaxRevocationsPerSync, Confirm: confirm})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				err = writeJSON(out, planJSON(path, ch))
			} else {
				err = WritePlan(out, path, ch)
			}
			if err != nil {
				return err
			}
			if ch.Refused {
				return withCode(ExitRefused, errors.New("the allowlist sync would refuse this allowlist: "+ch.Reason))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&table, "registry-table", "", "DynamoDB table of the device registry (default: stack output registryTable)")
	cmd.Flags().IntVar(&confirm, "confirm-revocations", 0, "plan as if the deploy set allowlistConfirmRevocations to N")
	return cmd
}

// readStackAllowlist checks the global flags, reads the stack's
// configuration and parses the allowlist (FILE in args, else the stack's)
// with the stack's serial pattern.
func (g *globalFlags) readStackAllowlist(args []string) (cfg stackconfig.Config, path string, entries []allowlist.Entry, err error) {
	if err := g.validate(); err != nil {
		return cfg, "", nil, err
	}
	if cfg, err = g.stackConfig(); err != nil {
		return cfg, "", nil, err
	}
	path = allowlistPath(g, cfg.AllowlistPath, args)
	entries, err = readAllowlist(path, cfg.SerialPattern)
	return cfg, path, entries, err
}

// allowlistPath is the file named on the command line, else the stack's
// allowlistPath inside the project directory.
func allowlistPath(g *globalFlags, stackPath string, args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	return filepath.Join(g.projectDir, stackPath)
}

// readAllowlist parses path with the stack's serial pattern; a bad file is
// ExitInvalid.
func readAllowlist(path, serialPattern string) ([]allowlist.Entry, error) {
	pattern, err := allowlist.CompilePattern(serialPattern)
	if err != nil {
		return nil, withCode(ExitInvalid, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := allowlist.ParseEntries(f, pattern)
	if err != nil {
		var le *allowlist.LineError
		if errors.As(err, &le) {
			return nil, withCode(ExitInvalid, fmt.Errorf("%s: %w", path, err))
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return entries, nil
}

// PlanAllowlist is what the allowlist sync would do with entries against
// the registry table (table; "" : the stack output registryTable): the
// sync's own plan (internal/allowlist.Plan). It changes nothing.
func (f *Fleet) PlanAllowlist(ctx context.Context, table string, entries []allowlist.Entry, lim allowlist.Limits) (allowlist.Changes, error) {
	if table == "" {
		var err error
		if table, err = f.Outputs.String(OutRegistryTable); err != nil {
			return allowlist.Changes{}, err
		}
	}
	devices, err := scanRegistry(ctx, f.DynamoDB, table)
	if err != nil {
		return allowlist.Changes{}, err
	}
	return allowlist.Plan(devices, entries, lim), nil
}

// scanRegistry reads every record of the registry table.
func scanRegistry(ctx context.Context, client *dynamodb.Client, table string) ([]registry.Device, error) {
	store, err := registry.NewDynamoDB(client, table)
	if err != nil {
		return nil, err
	}
	var devices []registry.Device
	err = registry.ScanAll(ctx, store, func(d registry.Device) error {
		devices = append(devices, d)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", table, err)
	}
	return devices, nil
}

type revocationJSON struct {
	Serial        string `json:"serial"`
	State         string `json:"state"`
	ThingName     string `json:"thingName,omitempty"`
	CertificateID string `json:"certificateId,omitempty"`
}

func revocations(ds []registry.Device) []revocationJSON {
	out := make([]revocationJSON, 0, len(ds))
	for _, d := range ds {
		out = append(out, revocationJSON{Serial: d.Serial, State: string(d.State), ThingName: d.ThingName, CertificateID: d.CertificateID})
	}
	return out
}

func planJSON(path string, ch allowlist.Changes) map[string]any {
	readmit := make([]map[string]any, 0, len(ch.Readmit))
	for _, r := range ch.Readmit {
		m := map[string]any{"serial": r.Serial, "token": r.Token}
		if r.LiftsHold {
			m["liftsEmergencyRevocation"] = true
			m["revokeReason"], m["revokedBy"], m["revokedAt"] = r.RevokeReason, r.RevokedBy, registry.FormatTime(r.RevokedAt)
		}
		readmit = append(readmit, m)
	}
	add := ch.Add
	if add == nil {
		add = []string{}
	}
	held := ch.Held
	if held == nil {
		held = []string{}
	}
	return map[string]any{
		"file": path, "listed": ch.Listed, "admitted": ch.Admitted,
		"admit": add, "held": held, "readmit": readmit, "revoke": revocations(ch.Remove), "resume": revocations(ch.Resume),
		"limit": ch.Limit, "confirmed": ch.Confirmed, "refused": ch.Refused, "reason": ch.Reason,
	}
}

// WritePlan prints an allowlist plan for a person (and a pull-request
// comment), as "fleetctl allowlist diff" does.
func WritePlan(w io.Writer, path string, ch allowlist.Changes) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d serial(s) listed; registry: %d admitted device(s)\n", path, ch.Listed, ch.Admitted)
	switch {
	case ch.Refused:
		fmt.Fprintf(&b, "REFUSED: %s\n", ch.Reason)
	case len(ch.Add)+len(ch.Readmit)+len(ch.Remove)+len(ch.Resume) == 0:
		b.WriteString("no changes\n")
	}
	fmt.Fprintf(&b, "admits %d device(s)%s\n", len(ch.Add), list(ch.Add))
	if len(ch.Held) > 0 {
		fmt.Fprintf(&b, "holds out %d emergency-revoked device(s), listed but not admitted (readmit=TOKEN with a token never used for that serial admits one)%s\n", len(ch.Held), list(ch.Held))
	}
	readmits := make([]string, 0, len(ch.Readmit))
	for _, r := range ch.Readmit {
		readmits = append(readmits, r.Serial+" (readmit="+r.Token+")")
	}
	fmt.Fprintf(&b, "re-admits %d device(s)%s\n", len(ch.Readmit), list(readmits))
	for _, r := range ch.Readmit {
		if r.LiftsHold {
			fmt.Fprintf(&b, "LIFTS EMERGENCY REVOCATION of %s (reason %q, by %s, at %s): readmit=%s admits it again; deploy only if the device is trusted again\n",
				r.Serial, r.RevokeReason, orDash(r.RevokedBy), revokedAt(r.RevokedAt), r.Token)
		}
	}
	fmt.Fprintf(&b, "revokes %d device(s) (limit %d per sync%s)%s\n", len(ch.Remove), ch.Limit, confirmedNote(ch), colon(len(ch.Remove)))
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	for _, d := range ch.Remove {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", d.Serial, d.State, orDash(d.ThingName), orDash(d.CertificateID))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(ch.Resume) > 0 {
		serials := make([]string, 0, len(ch.Resume))
		for _, d := range ch.Resume {
			serials = append(serials, d.Serial)
		}
		fmt.Fprintf(&b, "finishes %d interrupted revocation(s)%s\n", len(ch.Resume), list(serials))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// revokedAt prints when an emergency revocation was recorded.
func revokedAt(t time.Time) string {
	if t.IsZero() {
		return "unknown time"
	}
	return registry.FormatTime(t)
}

func confirmedNote(ch allowlist.Changes) string {
	if ch.Confirmed {
		return ", over it and confirmed"
	}
	return ""
}

func list(items []string) string {
	if len(items) == 0 {
		return ""
	}
	return ": " + strings.Join(items, ", ")
}

func colon(n int) string {
	if n == 0 {
		return ""
	}
	return ":"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
