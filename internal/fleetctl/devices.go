package fleetctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"
	dptypes "github.com/aws/aws-sdk-go-v2/service/iotdataplane/types"
	"github.com/spf13/cobra"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// ShadowName is the agent's named shadow (docs/shadow.md).
const ShadowName = "fleet-agent"

// Connectivity states, as fleetctl derives them from the shadow (the
// local IoT Core has no fleet index; in AWS, `aws iot search-index` with
// connectivity.connected is authoritative).
const (
	ConnOnline  = "online"      // the agent reported connected within its report interval (plus slack)
	ConnSilent  = "silent"      // the last report is older than that: offline, or cut off
	ConnUnknown = "no-shadow"   // the device never reported (not provisioned, or an agent without the shadow)
	ConnError   = "unavailable" // the shadow could not be read
)

// DeviceView is what fleetctl shows of one device.
type DeviceView struct {
	Serial        string `json:"serial"`
	State         string `json:"state"`
	ThingName     string `json:"thingName,omitempty"`
	CertificateID string `json:"certificateId,omitempty"`
	// CertificateStatus is AWS IoT's (DescribeCertificate): ACTIVE,
	// REVOKED, INACTIVE, ...
	CertificateStatus string     `json:"certificateStatus,omitempty"`
	CertNotAfter      *time.Time `json:"certNotAfter,omitempty"`
	Rotation          string     `json:"rotation,omitempty"`
	// Revocation is the emergency revocation's record (reason, by, at),
	// and whether it still holds the serial out of allowlist deploys.
	Revocation *Revocation `json:"revocation,omitempty"`
	// Connectivity is derived from the named shadow fleet-agent.
	Connectivity string     `json:"connectivity"`
	LastSeen     *time.Time `json:"lastSeen,omitempty"`
	// Reported is the shadow's reported state (devices show only).
	Reported json.RawMessage `json:"reported,omitempty"`
	// Problems lists what could not be read.
	Problems []string `json:"problems,omitempty"`
}

// Revocation is an emergency revocation as the registry records it.
type Revocation struct {
	Reason  string    `json:"reason"`
	By      string    `json:"by"`
	At      time.Time `json:"at"`
	HeldOut bool      `json:"heldOut"`
}

// ListDevices returns every registry record with its certificate and
// connectivity, sorted by serial.
func (f *Fleet) ListDevices(ctx context.Context) ([]DeviceView, error) {
	reg, err := f.Registry()
	if err != nil {
		return nil, err
	}
	var records []registry.Device
	if err := registry.ScanAll(ctx, reg, func(d registry.Device) error {
		records = append(records, d)
		return nil
	}); err != nil {
		return nil, err
	}
	slices.SortFunc(records, func(a, b registry.Device) int { return strings.Compare(a.Serial, b.Serial) })
	views := make([]DeviceView, len(records))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, d := range records {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			views[i] = f.describe(ctx, d, false)
		})
	}
	wg.Wait()
	return views, ctx.Err()
}

// errNoDevice: no registry record has that serial or thing name.
var errNoDevice = errors.New("no such device")

// ShowDevice returns one device, by serial or thing name, with its
// shadow's reported state.
func (f *Fleet) ShowDevice(ctx context.Context, id string) (DeviceView, error) {
	d, err := f.findDevice(ctx, id)
	if err != nil {
		return DeviceView{}, err
	}
	return f.describe(ctx, d, true), nil
}

// findDevice finds a registry record by serial, else by thing name.
func (f *Fleet) findDevice(ctx context.Context, id string) (registry.Device, error) {
	if strings.TrimSpace(id) == "" {
		return registry.Device{}, usagef("a device (serial or thing name) is required")
	}
	reg, err := f.Registry()
	if err != nil {
		return registry.Device{}, err
	}
	d, err := reg.Get(ctx, id)
	if err == nil {
		return d, nil
	}
	if !errors.Is(err, registry.ErrNotFound) {
		return registry.Device{}, fmt.Errorf("registry: %w", err)
	}
	var found *registry.Device
	err = registry.ScanAll(ctx, reg, func(r registry.Device) error {
		if r.ThingName == id {
			found = &r
		}
		return nil
	})
	if err != nil {
		return registry.Device{}, err
	}
	if found == nil {
		return registry.Device{}, fmt.Errorf("%w: %q is neither a serial nor a thing name of the registry", errNoDevice, id)
	}
	return *found, nil
}

func (f *Fleet) describe(ctx context.Context, d registry.Device, withReported bool) DeviceView {
	v := DeviceView{Serial: d.Serial, State: string(d.State), ThingName: d.ThingName, CertificateID: d.CertificateID, Connectivity: ConnUnknown}
	if !d.CertNotAfter.IsZero() {
		t := d.CertNotAfter
		v.CertNotAfter = &t
	}
	if d.RevokeReason != "" {
		v.Revocation = &Revocation{Reason: d.RevokeReason, By: d.RevokedBy, At: d.RevokedAt.UTC(), HeldOut: d.HeldOut()}
	}
	switch {
	case d.RotationID != "":
		v.Rotation = string(d.RotationState) + " since " + d.RotationRequestedAt.UTC().Format(time.RFC3339)
	case d.LastRotationStatus != "":
		v.Rotation = "last " + string(d.LastRotationStatus)
	}
	if d.CertificateID != "" {
		out, err := f.IoT.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(d.CertificateID)})
		switch {
		case err != nil && isNotFound(err):
			v.CertificateStatus = "DELETED"
		case err != nil:
			v.Problems = append(v.Problems, "certificate: "+err.Error())
		case out.CertificateDescription != nil:
			v.CertificateStatus = string(out.CertificateDescription.Status)
			if vd := out.CertificateDescription.Validity; vd != nil && vd.NotAfter != nil {
				t := vd.NotAfter.UTC()
				v.CertNotAfter = &t
			}
		}
	}
	if d.ThingName == "" || d.State == registry.StateRevoked {
		return v
	}
	sh, err := f.shadow(ctx, d.ThingName)
	switch {
	case err != nil && isNotFound(err):
	case err != nil:
		v.Connectivity = ConnError
		v.Problems = append(v.Problems, "shadow: "+err.Error())
	default:
		v.Connectivity, v.LastSeen = sh.connectivity(f.now())
		if withReported {
			v.Reported = sh.State.Reported
		}
	}
	return v
}

// shadowDoc is the part of a shadow document fleetctl reads.
type shadowDoc struct {
	State struct {
		Reported json.RawMessage `json:"reported"`
	} `json:"state"`
	Metadata struct {
		Reported json.RawMessage `json:"reported"`
	} `json:"metadata"`
}

func (f *Fleet) shadow(ctx context.Context, thing string) (shadowDoc, error) {
	out, err := f.Data.GetThingShadow(ctx, &iotdataplane.GetThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String(ShadowName)})
	if err != nil {
		return shadowDoc{}, err
	}
	var doc shadowDoc
	if err := json.Unmarshal(out.Payload, &doc); err != nil {
		return shadowDoc{}, fmt.Errorf("shadow of %s: %w", thing, err)
	}
	return doc, nil
}

// connectivity is what the shadow says: the latest metadata timestamp of
// reported is when the agent last reported; it reports at least every
// reportInterval (default 5m), so a longer silence means it is not
// connected (or cannot publish).
func (s shadowDoc) connectivity(now time.Time) (string, *time.Time) {
	var reported struct {
		Connectivity struct {
			Connected bool `json:"connected"`
		} `json:"connectivity"`
		ReportInterval string `json:"reportInterval"`
	}
	_ = json.Unmarshal(s.State.Reported, &reported)
	var meta any
	_ = json.Unmarshal(s.Metadata.Reported, &meta)
	last := latestTimestamp(meta)
	if last == 0 {
		return ConnUnknown, nil
	}
	seen := time.Unix(last, 0).UTC()
	interval, err := time.ParseDuration(reported.ReportInterval)
	if err != nil || interval <= 0 {
		interval = 5 * time.Minute
	}
	if reported.Connectivity.Connected && now.Sub(seen) <= 2*interval+time.Minute {
		return ConnOnline, &seen
	}
	return ConnSilent, &seen
}

// latestTimestamp is the largest "timestamp" in a shadow metadata tree.
func latestTimestamp(v any) int64 {
	var best int64
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			if n, ok := c.(float64); ok && k == "timestamp" {
				best = max(best, int64(n))
				continue
			}
			best = max(best, latestTimestamp(c))
		}
	case []any:
		for _, c := range x {
			best = max(best, latestTimestamp(c))
		}
	}
	return best
}

func isNotFound(err error) bool {
	var nf *dptypes.ResourceNotFoundException
	if errors.As(err, &nf) {
		return true
	}
	var code interface{ ErrorCode() string }
	return errors.As(err, &code) && code.ErrorCode() == "ResourceNotFoundException"
}

func newDevicesCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "List and show devices: registry state, certificate, connectivity, shadow",
		Long: `devices reads the device registry (DynamoDB table registryTable), each device's
certificate (DescribeCertificate: status and expiry) and its named shadow
fleet-agent (docs/shadow.md).

Connectivity comes from the shadow: "online" when the agent reported itself
connected within twice its report interval (+1m), "silent" when its last
report is older (offline, or unable to publish), "no-shadow" when it never
reported. In AWS, fleet indexing is authoritative for connectivity
(aws iot search-index --query-string 'connectivity.connected:false'); the
local IoT Core has no index, so fleetctl uses what both have.`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List every device of the registry",
		Long:  "list prints every registry record with its thing, certificate, expiry and connectivity.\n\n" + exitCodesHelp,
		Args:  cobraArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			views, err := f.ListDevices(cmd.Context())
			if err != nil {
				return err
			}
			if g.output == "json" {
				if views == nil {
					views = []DeviceView{}
				}
				return writeJSON(cmd.OutOrStdout(), views)
			}
			return writeDeviceTable(cmd.OutOrStdout(), views)
		},
	}, &cobra.Command{
		Use:   "show DEVICE",
		Short: "Show one device (serial or thing name), with its shadow's reported state",
		Long:  "show prints one device's registry record, certificate, connectivity and the reported state of its\nshadow fleet-agent. DEVICE is a serial or a thing name.\n\n" + exitCodesHelp,
		Args:  cobraArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			v, err := f.ShowDevice(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.output == "json" {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			return writeDevice(cmd.OutOrStdout(), v)
		},
	})
	return cmd
}

func writeDeviceTable(w io.Writer, views []DeviceView) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tSTATE\tTHING\tCERTIFICATE\tCERT STATUS\tEXPIRES\tCONNECTIVITY\tLAST SEEN")
	for _, v := range views {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Serial, v.State, orDash(v.ThingName), orDash(shortID(v.CertificateID)),
			orDash(v.CertificateStatus), date(v.CertNotAfter), v.Connectivity, timeOrDash(v.LastSeen))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d device(s)\n", len(views))
	return err
}

func writeDevice(w io.Writer, v DeviceView) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, row := range [][2]string{
		{"serial", v.Serial}, {"state", v.State}, {"thing", orDash(v.ThingName)},
		{"certificate", orDash(v.CertificateID)}, {"certificate status", orDash(v.CertificateStatus)},
		{"certificate expires", timeOrDash(v.CertNotAfter)}, {"rotation", orDash(v.Rotation)},
		{"connectivity", v.Connectivity + " (from the shadow fleet-agent)"}, {"last seen", timeOrDash(v.LastSeen)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
	}
	if r := v.Revocation; r != nil {
		held := ""
		if r.HeldOut {
			held = "; held out of allowlist deploys until readmit=TOKEN"
		}
		fmt.Fprintf(tw, "revoked:\t%s by %s: %s%s\n", r.At.Format(time.RFC3339), r.By, r.Reason, held)
	}
	for _, p := range v.Problems {
		fmt.Fprintf(tw, "problem:\t%s\n", p)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(v.Reported) > 0 {
		var pretty any
		if json.Unmarshal(v.Reported, &pretty) == nil {
			b, _ := json.MarshalIndent(pretty, "  ", "  ")
			fmt.Fprintf(w, "shadow fleet-agent reported:\n  %s\n", b)
		}
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}

func date(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02")
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
