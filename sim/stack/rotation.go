package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/sim/rules"
)

// RotationRuleName is the name of the rotation topic rule in the local
// IoT Core's rules engine.
const RotationRuleName = "certrotate"

// RotationOptions configure certificate rotation in the local stack.
type RotationOptions struct {
	// ExpiryWindow is the scheduled scan's window (the stack's
	// certExpiryWindowDays); default certscan.DefaultWindow.
	ExpiryWindow time.Duration
	// Now is the Lambdas' clock; default time.Now.
	Now func() time.Time
}

// Rotation is the cloud side of certificate rotation (docs/rotation.md),
// wired as the Pulumi program wires it in AWS: the topic rule
// certrotate.RuleSQL on dt/fleet/+/rotate/+ in the local IoT Core's rules
// engine invokes the real rotation Lambda handler (asynchronously, with
// retries) over the stack's control-plane endpoint (certificates signed by
// the local CA), the local data plane and the device registry; the real
// scan Lambda handler asks devices to rotate.
type Rotation struct {
	// IoT is the rotation Lambda's IoT client (the stack's endpoint, with
	// certificates signed by the local CA).
	IoT *iot.Client

	rotate *certrotate.Handler
	scan   *certscan.Handler
	log    *slog.Logger

	mu       sync.Mutex
	records  []RotationRecord
	onIssue  func(certificateID string)
	inflight int // rotation invocations running
}

// RotationRecord is one invocation of the rotation Lambda by the topic
// rule.
type RotationRecord struct {
	Event  certrotate.Event
	Result certrotate.Result
	// Err is the handler's error ("" when it succeeded); the rule retries
	// failed invocations.
	Err string
}

func newRotation(s *Stack, opts RotationOptions, log *slog.Logger) (*Rotation, error) {
	names := s.Core.Names()
	r := &Rotation{IoT: s.IoTClient, log: log}
	data := s.SSM.Data.Client
	var err error
	if r.rotate, err = certrotate.New(certrotate.Config{
		IoT: issueHook{Client: r.IoT, r: r}, Data: data, Registry: s.Registry,
		DevicePolicy: names.DevicePolicy, ThingNamePrefix: names.ThingNamePrefix,
		RetryDelay: 10 * time.Millisecond, Now: opts.Now, Logger: log.With("lambda", "certrotate"),
	}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	if r.scan, err = certscan.New(certscan.Config{
		IoT: s.IoTClient, Data: data, Registry: s.Registry, ThingNamePrefix: names.ThingNamePrefix,
		Window: opts.ExpiryWindow, Now: opts.Now, Logger: log.With("lambda", "certscan"),
	}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	if err := s.Core.Rules().Add(rules.Rule{Name: RotationRuleName, SQL: certrotate.RuleSQL, Action: r.invoke}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	return r, nil
}

// invoke is the rule's Lambda action: the event is decoded as the Lambda
// runtime decodes it and handed to the handler.
func (r *Rotation) invoke(ctx context.Context, event []byte) error {
	var ev certrotate.Event
	if err := json.Unmarshal(event, &ev); err != nil {
		return fmt.Errorf("certrotate event: %w", err)
	}
	_, err := r.Invoke(ctx, ev)
	return err
}

// Invoke invokes the rotation Lambda with ev, as the topic rule does (a
// test replays a recorded event with it), and records the invocation.
func (r *Rotation) Invoke(ctx context.Context, ev certrotate.Event) (certrotate.Result, error) {
	r.mu.Lock()
	r.inflight++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.inflight--
		r.mu.Unlock()
	}()
	res, err := r.rotate.Handle(ctx, ev)
	rec := RotationRecord{Event: ev, Result: res}
	if err != nil {
		rec.Err = err.Error()
	}
	r.mu.Lock()
	r.records = append(r.records, rec)
	r.mu.Unlock()
	return res, err
}

// idle reports whether no rotation invocation is running.
func (r *Rotation) idle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inflight == 0
}

// Records returns the rotation Lambda's invocations so far, in order.
func (r *Rotation) Records() []RotationRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]RotationRecord(nil), r.records...)
}

// OnIssue sets a function called with the id of every certificate the
// rotation Lambda creates, right after CreateCertificateFromCsr (nil
// removes it). Tests use it to make a new certificate unusable, e.g.
// Core.SetCertificateStatus(id, INACTIVE), as if it did not work.
func (r *Rotation) OnIssue(fn func(certificateID string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onIssue = fn
}

// Request invokes the scan Lambda: on demand for a thing or a thing group
// (certscan.Request), or the daily scan with an empty request.
func (r *Rotation) Request(ctx context.Context, req certscan.Request) (certscan.Report, error) {
	return r.scan.Handle(ctx, req)
}

// RequestRotation asks one thing (req.ThingName) or every thing of a
// group (req.ThingGroup) to rotate its certificate now, as the operator
// command of docs/rotation.md does; an empty request runs the daily scan.
func (s *Stack) RequestRotation(ctx context.Context, req certscan.Request) (certscan.Report, error) {
	return s.Rotation.Request(ctx, req)
}

// WaitRotation waits until the registry records the end of rotation
// rotationID of serial (completed or failed) and the rotation Lambda
// invocation that wrote it has returned (it retires the old or the refused
// certificate after the registry write), and returns the record.
func (s *Stack) WaitRotation(ctx context.Context, serial, rotationID string) (registry.Device, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		d, err := s.Registry.Get(ctx, serial)
		if err != nil {
			return d, fmt.Errorf("stack: rotation %s of %s: %w", rotationID, serial, err)
		}
		if d.LastRotationID == rotationID && d.RotationID != rotationID && s.Rotation.idle() {
			return d, nil
		}
		select {
		case <-ctx.Done():
			return d, fmt.Errorf("stack: waiting for rotation %s of %s: %w (registry: state %s, rotation %q %s)",
				rotationID, serial, ctx.Err(), d.State, d.RotationID, d.RotationState)
		case <-t.C:
		}
	}
}

// issueHook calls the Rotation's OnIssue function after each certificate
// the rotation Lambda creates.
type issueHook struct {
	*iot.Client
	r *Rotation
}

func (h issueHook) CreateCertificateFromCsr(ctx context.Context, in *iot.CreateCertificateFromCsrInput, optFns ...func(*iot.Options)) (*iot.CreateCertificateFromCsrOutput, error) {
	out, err := h.Client.CreateCertificateFromCsr(ctx, in, optFns...)
	if err != nil {
		return out, err
	}
	h.r.mu.Lock()
	fn := h.r.onIssue
	h.r.mu.Unlock()
	if fn != nil {
		fn(aws.ToString(out.CertificateId))
	}
	return out, nil
}
