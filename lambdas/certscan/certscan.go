// Package certscan finds devices whose certificate must be rotated and asks
// them to rotate. It runs daily from an EventBridge Scheduler schedule (an
// empty event: every provisioned device whose certificate expires within
// the window, found by a query of the registry's expiry index), and on
// demand for one thing or one thing group:
//
//	{"thingName": "dev-0123456789abcdef"}
//	{"thingGroup": "iot-fleet-dev"}
//
// Asking a device to rotate records a rotation (id, time) in the registry
// with a conditional write and publishes protocol.RotateRequest on
// cmd/fleet/<thing>/rotate/request. A device whose rotation is still in
// progress is asked again, with the same rotation id, only once that
// rotation is older than ResendAfter (on demand: always), so the daily scan
// is idempotent. Devices are handled with bounded concurrency; one device
// failing does not stop the others, and the run then returns a *ScanError
// naming every failed device.
package certscan

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/bounded"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/required"
)

// IoTAPI is the part of the AWS IoT control plane the scan uses (on demand
// for a thing group); *iot.Client implements it. An unknown group is a
// *types.ResourceNotFoundException; pages continue with NextToken.
type IoTAPI interface {
	ListThingsInThingGroup(ctx context.Context, in *iot.ListThingsInThingGroupInput, optFns ...func(*iot.Options)) (*iot.ListThingsInThingGroupOutput, error)
}

// Registry is the part of the device registry the scan uses.
type Registry interface {
	ExpiringBefore(ctx context.Context, t time.Time, cursor string, limit int) (registry.Page, error)
	RequestRotation(ctx context.Context, serial, rotationID string, resendAfter time.Duration) (registry.Device, error)
}

// Request is the Lambda's event. Empty: the scheduled scan. At most one
// field may be set.
type Request struct {
	ThingName  string `json:"thingName,omitempty"`
	ThingGroup string `json:"thingGroup,omitempty"`
}

// Report says what a run did, per thing name.
type Report struct {
	// Requested: devices asked to rotate (new or re-sent rotation).
	Requested map[string]string `json:"requested"` // thing → rotation id
	// Pending: devices skipped because a recent rotation is in progress.
	Pending []string `json:"pending,omitempty"`
	// Skipped: devices that cannot rotate (not in the registry, not
	// provisioned, not of this environment), with the reason.
	Skipped map[string]string `json:"skipped,omitempty"`
	// Failed: devices whose request failed (retry worth it), with the error.
	Failed map[string]string `json:"failed,omitempty"`
}

// ScanError is returned when some devices failed; the Report lists them.
type ScanError struct{ Failed []string }

func (e *ScanError) Error() string {
	return fmt.Sprintf("certscan: %d device(s) failed: %s", len(e.Failed), strings.Join(e.Failed, ", "))
}

// Defaults of Config.
const (
	DefaultWindow = 30 * 24 * time.Hour
	// DefaultResendAfter is a little under a day, so each daily run asks
	// again the devices that did not finish (or never got) yesterday's
	// request.
	DefaultResendAfter = 20 * time.Hour
	DefaultConcurrency = 8
	DefaultCallTimeout = 10 * time.Second
)

// Config configures a Handler.
type Config struct {
	IoT      IoTAPI             // required
	Data     certrotate.DataAPI // required
	Registry Registry           // required
	// ThingNamePrefix maps thing names to serials (thing = prefix +
	// serial). Required.
	ThingNamePrefix string
	// Window: the scheduled scan asks devices whose certificate expires
	// within it.
	Window time.Duration
	// ResendAfter: a rotation in progress is asked again by the scheduled
	// scan once it is this old.
	ResendAfter time.Duration
	// KeyAlgorithm, if set, is sent in the request (ecdsa-p256 or
	// rsa-2048); empty keeps each device's configured algorithm.
	KeyAlgorithm string
	Concurrency  int
	CallTimeout  time.Duration
	Now          func() time.Time
	// NewID makes rotation ids (default: 128 random bits, hex).
	NewID  func() string
	Logger *slog.Logger
}

// Handler is the scan. It is immutable after New.
type Handler struct {
	cfg Config
	log *slog.Logger
}

// New returns the scan handler for cfg.
func New(cfg Config) (*Handler, error) {
	if err := required.Fields("certscan: missing",
		required.Field("IoT", cfg.IoT != nil),
		required.Field("Data", cfg.Data != nil),
		required.Field("Registry", cfg.Registry != nil),
		required.Field("ThingNamePrefix", cfg.ThingNamePrefix != ""),
	); err != nil {
		return nil, err
	}
	switch cfg.KeyAlgorithm {
	case "", "ecdsa-p256", "rsa-2048":
	default:
		return nil, fmt.Errorf("certscan: KeyAlgorithm %q: want ecdsa-p256 or rsa-2048", cfg.KeyAlgorithm)
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.ResendAfter <= 0 {
		cfg.ResendAfter = DefaultResendAfter
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NewID == nil {
		cfg.NewID = randomID
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Handler{cfg: cfg, log: log}, nil
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// target is one device to ask.
type target struct{ thing, serial string }

// Handle runs the scheduled scan (empty request) or an on-demand request.
func (h *Handler) Handle(ctx context.Context, req Request) (Report, error) {
	rep := Report{Requested: map[string]string{}, Skipped: map[string]string{}, Failed: map[string]string{}}
	if req.ThingName != "" && req.ThingGroup != "" {
		return rep, errors.New("certscan: give thingName or thingGroup, not both")
	}
	var mu sync.Mutex
	resendAfter := time.Duration(0) // on demand: always (re-)ask
	if req.ThingName == "" && req.ThingGroup == "" {
		resendAfter = h.cfg.ResendAfter
	}
	g := bounded.NewGroup(h.cfg.Concurrency)
	err := h.targets(ctx, req, func(tg target) error {
		return g.Go(ctx, func() {
			id, kind, msg := h.ask(ctx, tg, resendAfter)
			mu.Lock()
			defer mu.Unlock()
			switch kind {
			case "requested":
				rep.Requested[tg.thing] = id
			case "pending":
				rep.Pending = append(rep.Pending, tg.thing)
			case "skipped":
				rep.Skipped[tg.thing] = msg
			default:
				rep.Failed[tg.thing] = msg
			}
		})
	}, func(thing, reason string) {
		mu.Lock()
		rep.Skipped[thing] = reason
		mu.Unlock()
	})
	g.Wait()
	sort.Strings(rep.Pending)
	h.log.InfoContext(ctx, "rotation scan", "thingName", req.ThingName, "thingGroup", req.ThingGroup,
		"requested", len(rep.Requested), "pending", len(rep.Pending), "skipped", len(rep.Skipped), "failed", len(rep.Failed))
	if err != nil {
		return rep, err
	}
	if len(rep.Failed) > 0 {
		var failed []string
		for thing := range rep.Failed {
			failed = append(failed, thing)
		}
		sort.Strings(failed)
		return rep, &ScanError{Failed: failed}
	}
	return rep, nil
}

// targets feeds every device of req to send.
func (h *Handler) targets(ctx context.Context, req Request, send func(target) error, skip func(thing, reason string)) error {
	byThing := func(thing string) error {
		serial, ok := strings.CutPrefix(thing, h.cfg.ThingNamePrefix)
		if !ok || serial == "" {
			skip(thing, "thing name lacks the environment prefix "+h.cfg.ThingNamePrefix)
			return nil
		}
		return send(target{thing: thing, serial: serial})
	}
	switch {
	case req.ThingName != "":
		return byThing(req.ThingName)
	case req.ThingGroup != "":
		var token *string
		for {
			cctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
			out, err := h.cfg.IoT.ListThingsInThingGroup(cctx, &iot.ListThingsInThingGroupInput{
				ThingGroupName: aws.String(req.ThingGroup), NextToken: token, MaxResults: aws.Int32(250),
			})
			cancel()
			if err != nil {
				return fmt.Errorf("certscan: ListThingsInThingGroup %s: %w", req.ThingGroup, err)
			}
			for _, thing := range out.Things {
				if err := byThing(thing); err != nil {
					return err
				}
			}
			if aws.ToString(out.NextToken) == "" {
				return nil
			}
			token = out.NextToken
		}
	}
	before := h.cfg.Now().Add(h.cfg.Window)
	cursor := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
		page, err := h.cfg.Registry.ExpiringBefore(cctx, before, cursor, 0)
		cancel()
		if err != nil {
			return fmt.Errorf("certscan: %w", err)
		}
		for _, d := range page.Devices {
			thing := d.ThingName
			if thing == "" {
				thing = h.cfg.ThingNamePrefix + d.Serial
			}
			if err := send(target{thing: thing, serial: d.Serial}); err != nil {
				return err
			}
		}
		if page.Next == "" {
			return nil
		}
		cursor = page.Next
	}
}

// ask records and publishes the rotation request of one device. kind is
// requested, pending, skipped or failed.
func (h *Handler) ask(ctx context.Context, tg target, resendAfter time.Duration) (id, kind, msg string) {
	cctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
	d, err := h.cfg.Registry.RequestRotation(cctx, tg.serial, h.cfg.NewID(), resendAfter)
	cancel()
	switch {
	case errors.Is(err, registry.ErrRotationPending):
		return "", "pending", ""
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrConflict):
		return "", "skipped", err.Error()
	case err != nil:
		h.log.ErrorContext(ctx, "rotation request failed", "thingName", tg.thing, "error", err.Error())
		return "", "failed", err.Error()
	}
	if d.ThingName != "" && d.ThingName != tg.thing {
		return "", "skipped", fmt.Sprintf("registry records thing %s", d.ThingName)
	}
	rr := protocol.RotateRequest{RotationID: d.RotationID, KeyAlgorithm: h.cfg.KeyAlgorithm, Timestamp: h.cfg.Now().Unix()}
	if err := certrotate.Publish(ctx, h.cfg.Data, h.cfg.CallTimeout, protocol.CommandTopic(tg.thing, protocol.KindRotateRequest), rr); err != nil {
		// The rotation stays recorded; the next run (or the Lambda's
		// retry of this one, on demand) asks again with the same id.
		h.log.ErrorContext(ctx, "rotation request failed", "thingName", tg.thing, "rotationId", d.RotationID, "error", err.Error())
		return d.RotationID, "failed", err.Error()
	}
	h.log.InfoContext(ctx, "rotation requested", "thingName", tg.thing, "rotationId", d.RotationID)
	return d.RotationID, "requested", ""
}
