// Package ssmtoggle is the Lambda that turns AWS Systems Manager on or off
// for one device or a thing group ("SSM on demand", docs/ssm.md).
//
// Input (exactly one of device_id / thing_group):
//
//	{"device_id": "<serial or thing name>", "action": "activate" | "deactivate" | "status"}
//	{"thing_group": "<group>", "action": "activate" | "deactivate" | "status"}
//
// Activate creates a hybrid activation (registration limit 1, short expiry,
// tagged with the project, environment, thing name and serial), records its
// id and expiry in the registry item (never the code), publishes the code
// to the device on cmd/fleet/<thing>/ssm with QoS 1 and returns at once.
// Deactivate publishes the deactivation, deletes the activation,
// deregisters the managed instance and resets the state. Status reports the
// state and removes an activation that expired unused.
package ssmtoggle

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/bounded"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/required"
)

// Actions of a Request.
const (
	ActionActivate   = "activate"
	ActionDeactivate = "deactivate"
	ActionStatus     = "status"
)

// Tags put on every activation; SSM copies them onto the managed instance
// that registers with it. The registered Lambda checks TagProject and
// TagEnvironment before it trusts TagThingName.
const (
	TagProject     = "project"
	ProjectName    = "iot-fleet"
	TagEnvironment = "environment"
	TagThingName   = "thingName"
	TagSerial      = "serial"
)

// Defaults.
const (
	DefaultActivationTTL = 2 * time.Hour
	MaxActivationTTL     = 30 * 24 * time.Hour // SSM's limit
	DefaultConcurrency   = 8
	// DefaultReserveGrace is how long a reservation may stay without an
	// activation (the toggle crashed between the two writes) before status,
	// activate or the expiry sweep reset it.
	DefaultReserveGrace = 5 * time.Minute
)

// Request is the toggle Lambda's input.
type Request struct {
	DeviceID   string `json:"device_id,omitempty"`
	ThingGroup string `json:"thing_group,omitempty"`
	Action     string `json:"action"`
}

// Result is the outcome for one device.
type Result struct {
	DeviceID  string `json:"device_id"`
	Serial    string `json:"serial,omitempty"`
	ThingName string `json:"thing_name,omitempty"`
	// OK is false when Error is set.
	OK bool `json:"ok"`
	// Changed is false when the request found nothing to do (a duplicate).
	Changed             bool           `json:"changed"`
	State               ssmstate.State `json:"state,omitempty"`
	ActivationID        string         `json:"activation_id,omitempty"`
	ActivationExpiresAt *time.Time     `json:"activation_expires_at,omitempty"`
	InstanceID          string         `json:"instance_id,omitempty"`
	// RequestID is the requestId of the command published to the device.
	RequestID string `json:"request_id,omitempty"`
	Message   string `json:"message,omitempty"`
	Error     string `json:"error,omitempty"`
}

// Response is the toggle Lambda's output.
type Response struct {
	Action     string   `json:"action"`
	ThingGroup string   `json:"thing_group,omitempty"`
	Results    []Result `json:"results"`
	Succeeded  int      `json:"succeeded"`
	Failed     int      `json:"failed"`
}

// SSMAPI is the part of the Systems Manager client the toggle uses.
type SSMAPI interface {
	CreateActivation(ctx context.Context, in *ssm.CreateActivationInput, optFns ...func(*ssm.Options)) (*ssm.CreateActivationOutput, error)
	DeleteActivation(ctx context.Context, in *ssm.DeleteActivationInput, optFns ...func(*ssm.Options)) (*ssm.DeleteActivationOutput, error)
	DeregisterManagedInstance(ctx context.Context, in *ssm.DeregisterManagedInstanceInput, optFns ...func(*ssm.Options)) (*ssm.DeregisterManagedInstanceOutput, error)
	DescribeInstanceInformation(ctx context.Context, in *ssm.DescribeInstanceInformationInput, optFns ...func(*ssm.Options)) (*ssm.DescribeInstanceInformationOutput, error)
}

// IoTAPI is the part of the IoT control-plane client the toggle uses.
type IoTAPI interface {
	ListThingsInThingGroup(ctx context.Context, in *iot.ListThingsInThingGroupInput, optFns ...func(*iot.Options)) (*iot.ListThingsInThingGroupOutput, error)
}

// DataAPI is the part of the IoT data-plane client the toggle uses.
type DataAPI interface {
	Publish(ctx context.Context, in *iotdataplane.PublishInput, optFns ...func(*iotdataplane.Options)) (*iotdataplane.PublishOutput, error)
}

// Devices reads registry records; registry.Store implements it.
type Devices interface {
	Get(ctx context.Context, serial string) (registry.Device, error)
}

// Config configures a Handler.
type Config struct {
	Registry Devices
	State    ssmstate.Store
	SSM      SSMAPI
	IoT      IoTAPI
	Data     DataAPI
	// ManagedInstanceRole is the IAM role name the managed instances get
	// (it must allow ssm.amazonaws.com to assume it and carry
	// AmazonSSMManagedInstanceCore).
	ManagedInstanceRole string
	// Region is sent to the device for `amazon-ssm-agent -register`.
	Region string
	// Environment is the stack environment (dev, prod): a tag.
	Environment string
	// ThingNamePrefix is "<env>-": thing name = prefix + serial.
	ThingNamePrefix string
	// SerialPattern is the anchored serial regexp.
	SerialPattern *regexp.Regexp
	// ActivationTTL is how long an activation can be used (default
	// DefaultActivationTTL, at most 30 days).
	ActivationTTL time.Duration
	// ReserveGrace: see DefaultReserveGrace.
	ReserveGrace time.Duration
	// Concurrency bounds the devices of a group handled at once.
	Concurrency int
	Now         func() time.Time
	// NewID returns request ids (default: 16 random bytes, hex).
	NewID  func() string
	Logger *slog.Logger
}

// Handler is the toggle Lambda's handler. It keeps no state between
// invocations.
type Handler struct {
	c Config
}

// New validates c and fills in defaults.
func New(c Config) (*Handler, error) {
	// Listed in name (byte) order, the order the error names them in.
	if err := required.Fields("ssmtoggle: missing configuration:",
		required.Field("Data", c.Data != nil),
		required.Field("Environment", c.Environment != ""),
		required.Field("IoT", c.IoT != nil),
		required.Field("ManagedInstanceRole", c.ManagedInstanceRole != ""),
		required.Field("Region", c.Region != ""),
		required.Field("Registry", c.Registry != nil),
		required.Field("SSM", c.SSM != nil),
		required.Field("SerialPattern", c.SerialPattern != nil),
		required.Field("State", c.State != nil),
		required.Field("ThingNamePrefix", c.ThingNamePrefix != ""),
	); err != nil {
		return nil, err
	}
	if c.ActivationTTL == 0 {
		c.ActivationTTL = DefaultActivationTTL
	}
	if c.ActivationTTL < time.Minute || c.ActivationTTL > MaxActivationTTL {
		return nil, fmt.Errorf("ssmtoggle: activation TTL %v out of range [1m, %v]", c.ActivationTTL, MaxActivationTTL)
	}
	if c.ReserveGrace <= 0 {
		c.ReserveGrace = DefaultReserveGrace
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.NewID == nil {
		c.NewID = NewRequestID
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Handler{c: c}, nil
}

// NewRequestID returns 16 random bytes in hex.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Handle runs one request. Invalid requests and a failure to list a
// group's members are errors; per-device failures are reported in the
// results (Failed > 0) and do not stop the other devices.
func (h *Handler) Handle(ctx context.Context, req Request) (Response, error) {
	var fn func(context.Context, string) Result
	switch req.Action {
	case ActionActivate:
		fn = h.activate
	case ActionDeactivate:
		fn = h.deactivate
	case ActionStatus:
		fn = h.status
	default:
		return Response{}, fmt.Errorf("ssmtoggle: field \"action\" must be %q, %q or %q, got %q", ActionActivate, ActionDeactivate, ActionStatus, req.Action)
	}
	req.DeviceID, req.ThingGroup = strings.TrimSpace(req.DeviceID), strings.TrimSpace(req.ThingGroup)
	if (req.DeviceID == "") == (req.ThingGroup == "") {
		return Response{}, errors.New("ssmtoggle: exactly one of the fields \"device_id\" and \"thing_group\" is required")
	}
	resp := Response{Action: req.Action, ThingGroup: req.ThingGroup}
	if req.DeviceID != "" {
		resp.Results = []Result{fn(ctx, req.DeviceID)}
	} else {
		things, err := h.groupMembers(ctx, req.ThingGroup)
		if err != nil {
			return Response{}, err
		}
		resp.Results = h.each(ctx, things, fn)
	}
	for _, r := range resp.Results {
		if r.OK {
			resp.Succeeded++
		} else {
			resp.Failed++
		}
	}
	h.c.Logger.Info("ssm toggle done", "action", req.Action, "device", req.DeviceID, "group", req.ThingGroup,
		"succeeded", resp.Succeeded, "failed", resp.Failed)
	return resp, nil
}

func (h *Handler) groupMembers(ctx context.Context, group string) ([]string, error) {
	var things []string
	var next *string
	for {
		out, err := h.c.IoT.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{
			ThingGroupName: aws.String(group), NextToken: next, MaxResults: aws.Int32(250),
		})
		if err != nil {
			return nil, fmt.Errorf("ssmtoggle: list things in group %s: %w", group, err)
		}
		things = append(things, out.Things...)
		if aws.ToString(out.NextToken) == "" {
			return things, nil
		}
		next = out.NextToken
	}
}

// each runs fn for every thing with at most Concurrency at once; results
// keep the order of things.
func (h *Handler) each(ctx context.Context, things []string, fn func(context.Context, string) Result) []Result {
	results := make([]Result, len(things))
	g := bounded.NewGroup(h.c.Concurrency)
	for i, thing := range things {
		if err := g.Go(ctx, func() { results[i] = fn(ctx, thing) }); err != nil {
			results[i] = Result{DeviceID: thing, Error: err.Error()}
		}
	}
	g.Wait()
	return results
}

// device is a resolved device id.
type device struct {
	id, serial, thing string
	state             registry.State
}

// resolve accepts a serial or a thing name (prefix + serial) and reads the
// registry record.
func (h *Handler) resolve(ctx context.Context, id string) (device, error) {
	serial := strings.TrimPrefix(id, h.c.ThingNamePrefix)
	if !h.c.SerialPattern.MatchString(serial) {
		return device{}, fmt.Errorf("device %q is neither a serial matching %s nor a thing name %s<serial>", id, h.c.SerialPattern, h.c.ThingNamePrefix)
	}
	d, err := h.c.Registry.Get(ctx, serial)
	if err != nil {
		if errors.Is(err, registry.ErrNotFound) {
			return device{}, fmt.Errorf("device %s is not in the registry", serial)
		}
		return device{}, fmt.Errorf("registry: %w", err)
	}
	thing := d.ThingName
	if thing == "" {
		thing = h.c.ThingNamePrefix + serial
	}
	if id != serial && id != thing {
		return device{}, fmt.Errorf("device %q: the registry names serial %s's thing %q", id, serial, thing)
	}
	return device{id: id, serial: serial, thing: thing, state: d.State}, nil
}

func (d device) result(r ssmstate.Record) Result {
	res := Result{DeviceID: d.id, Serial: d.serial, ThingName: d.thing, OK: true, State: r.State,
		ActivationID: r.ActivationID, InstanceID: r.InstanceID, RequestID: r.RequestID}
	if !r.ActivationExpiry.IsZero() {
		t := r.ActivationExpiry
		res.ActivationExpiresAt = &t
	}
	return res
}

func failed(id string, d device, err error) Result {
	return Result{DeviceID: id, Serial: d.serial, ThingName: d.thing, Error: err.Error()}
}

func (h *Handler) activate(ctx context.Context, id string) Result {
	d, err := h.resolve(ctx, id)
	if err != nil {
		return failed(id, d, err)
	}
	if d.state != registry.StateProvisioned {
		return failed(id, d, fmt.Errorf("device %s is %s, not provisioned", d.serial, d.state))
	}
	rec, err := h.c.State.Get(ctx, d.serial)
	if err != nil {
		return failed(id, d, err)
	}
	if rec, err = h.expireStale(ctx, rec); err != nil {
		return failed(id, d, err)
	}
	switch rec.State {
	case ssmstate.StateActivating, ssmstate.StateActive:
		res := d.result(rec)
		res.Message = "already " + string(rec.State) + "; nothing done"
		return res
	case ssmstate.StateDeactivating:
		return failed(id, d, errors.New("a deactivation is in progress; run deactivate again to finish it first"))
	}

	reqID := h.c.NewID()
	if _, err := h.c.State.Reserve(ctx, d.serial, reqID); err != nil {
		if errors.Is(err, ssmstate.ErrConflict) {
			// A concurrent activation won the reservation.
			if cur, gerr := h.c.State.Get(ctx, d.serial); gerr == nil {
				res := d.result(cur)
				res.Message = "activation already under way; nothing done"
				return res
			}
		}
		return failed(id, d, err)
	}
	log := h.c.Logger.With("serial", d.serial, "thing", d.thing, "requestId", reqID)
	// A revocation may have run since resolve read the registry, and
	// found SSM off. It marks the device revoking before it turns SSM
	// off, so a device still provisioned now will find this reservation
	// when it does (and the SetActivation below then fails); one that is
	// not any more gets no activation.
	if cur, err := h.c.Registry.Get(ctx, d.serial); err != nil || cur.State != registry.StateProvisioned {
		h.release(ctx, d.serial, reqID, log)
		if err != nil {
			return failed(id, d, fmt.Errorf("registry: %w", err))
		}
		return failed(id, d, fmt.Errorf("device %s became %s while SSM was being turned on; no activation created", d.serial, cur.State))
	}
	now := h.c.Now().UTC()
	expiry := now.Add(h.c.ActivationTTL).Truncate(time.Second)
	out, err := h.c.SSM.CreateActivation(ctx, &ssm.CreateActivationInput{
		IamRole:             aws.String(h.c.ManagedInstanceRole),
		RegistrationLimit:   aws.Int32(1),
		ExpirationDate:      aws.Time(expiry),
		DefaultInstanceName: aws.String(d.thing),
		Description:         aws.String("iot-fleet SSM on demand for " + d.thing),
		Tags: []ssmtypes.Tag{
			{Key: aws.String(TagProject), Value: aws.String(ProjectName)},
			{Key: aws.String(TagEnvironment), Value: aws.String(h.c.Environment)},
			{Key: aws.String(TagThingName), Value: aws.String(d.thing)},
			{Key: aws.String(TagSerial), Value: aws.String(d.serial)},
		},
	})
	if err != nil {
		h.release(ctx, d.serial, reqID, log)
		return failed(id, d, fmt.Errorf("create activation: %w", err))
	}
	activationID, code := aws.ToString(out.ActivationId), aws.ToString(out.ActivationCode)
	if activationID == "" || code == "" {
		h.release(ctx, d.serial, reqID, log)
		return failed(id, d, errors.New("create activation: empty activation id or code"))
	}
	rec, err = h.c.State.SetActivation(ctx, d.serial, reqID, activationID, expiry)
	if err != nil {
		h.deleteActivation(ctx, activationID, log)
		return failed(id, d, err)
	}
	cmd := protocol.SSMCommand{
		RequestID: reqID, Action: protocol.SSMActivate, ActivationID: activationID, ActivationCode: code,
		Region: h.c.Region, ExpiresAt: expiry.Unix(), Timestamp: now.Unix(),
	}
	if err := h.publish(ctx, d.thing, cmd); err != nil {
		// The code never reached the device: do not leave it valid.
		h.deleteActivation(ctx, activationID, log)
		h.release(ctx, d.serial, reqID, log)
		return failed(id, d, err)
	}
	log.Info("ssm activation sent", "activationId", activationID, "expires", expiry)
	res := d.result(rec)
	res.Changed = true
	res.Message = "activation sent to the device; it registers asynchronously (see status)"
	return res
}

// release undoes a reservation whose activation could not be completed.
func (h *Handler) release(ctx context.Context, serial, reqID string, log *slog.Logger) {
	if err := h.c.State.Clear(ctx, serial, ssmstate.Guard{RequestID: reqID, State: ssmstate.StateActivating}); err != nil {
		log.Warn("could not release the ssm reservation", "err", err)
	}
}

func (h *Handler) deleteActivation(ctx context.Context, activationID string, log *slog.Logger) {
	if err := DeleteActivation(ctx, h.c.SSM, activationID); err != nil {
		log.Error("could not delete the activation; the expiry sweep retries", "activationId", activationID, "err", err)
	}
}

// DeleteActivation deletes an activation; one that is already gone is not
// an error.
func DeleteActivation(ctx context.Context, api interface {
	DeleteActivation(context.Context, *ssm.DeleteActivationInput, ...func(*ssm.Options)) (*ssm.DeleteActivationOutput, error)
}, activationID string) error {
	_, err := api.DeleteActivation(ctx, &ssm.DeleteActivationInput{ActivationId: aws.String(activationID)})
	if err != nil && !IsGone(err) {
		return fmt.Errorf("delete activation %s: %w", activationID, err)
	}
	return nil
}

// Deregister deregisters a managed instance; one that is already gone is
// not an error.
func Deregister(ctx context.Context, api interface {
	DeregisterManagedInstance(context.Context, *ssm.DeregisterManagedInstanceInput, ...func(*ssm.Options)) (*ssm.DeregisterManagedInstanceOutput, error)
}, instanceID string) error {
	_, err := api.DeregisterManagedInstance(ctx, &ssm.DeregisterManagedInstanceInput{InstanceId: aws.String(instanceID)})
	if err != nil && !IsGone(err) {
		return fmt.Errorf("deregister managed instance %s: %w", instanceID, err)
	}
	return nil
}

// IsGone reports whether err is SSM's answer for an activation, instance
// or resource that does not exist (any more).
func IsGone(err error) bool {
	var a *ssmtypes.InvalidActivation
	var ai *ssmtypes.InvalidActivationId
	var ii *ssmtypes.InvalidInstanceId
	var ri *ssmtypes.InvalidResourceId
	return errors.As(err, &a) || errors.As(err, &ai) || errors.As(err, &ii) || errors.As(err, &ri)
}

func (h *Handler) publish(ctx context.Context, thing string, cmd protocol.SSMCommand) error {
	payload, err := json.Marshal(cmd)
	if err != nil {
		return fmt.Errorf("encode ssm command: %w", err)
	}
	topic := protocol.CommandTopic(thing, protocol.KindSSM)
	if _, err := h.c.Data.Publish(ctx, &iotdataplane.PublishInput{Topic: aws.String(topic), Payload: payload, Qos: 1}); err != nil {
		return fmt.Errorf("publish %s command on %s: %w", cmd.Action, topic, err)
	}
	return nil
}

// expireStale resets an activating record whose activation expired unused,
// or whose reservation never got an activation within ReserveGrace.
func (h *Handler) expireStale(ctx context.Context, rec ssmstate.Record) (ssmstate.Record, error) {
	if rec.State != ssmstate.StateActivating {
		return rec, nil
	}
	now := h.c.Now()
	switch {
	case rec.ActivationID != "" && !rec.ActivationExpiry.After(now):
		if err := DeleteActivation(ctx, h.c.SSM, rec.ActivationID); err != nil {
			return rec, err
		}
	case rec.ActivationID == "" && now.Sub(rec.UpdatedAt) > h.c.ReserveGrace:
	default:
		return rec, nil
	}
	err := h.c.State.Clear(ctx, rec.Serial, ssmstate.Guard{RequestID: rec.RequestID, ActivationID: rec.ActivationID, State: ssmstate.StateActivating})
	if err != nil && !errors.Is(err, ssmstate.ErrConflict) {
		return rec, err
	}
	h.c.Logger.Info("stale ssm activation reset", "serial", rec.Serial, "activationId", rec.ActivationID)
	return h.c.State.Get(ctx, rec.Serial)
}

// OffAPI is the part of Systems Manager that turning SSM off uses.
type OffAPI interface {
	DeleteActivation(ctx context.Context, in *ssm.DeleteActivationInput, optFns ...func(*ssm.Options)) (*ssm.DeleteActivationOutput, error)
	DeregisterManagedInstance(ctx context.Context, in *ssm.DeregisterManagedInstanceInput, optFns ...func(*ssm.Options)) (*ssm.DeregisterManagedInstanceOutput, error)
	DescribeInstanceInformation(ctx context.Context, in *ssm.DescribeInstanceInformationInput, optFns ...func(*ssm.Options)) (*ssm.DescribeInstanceInformationOutput, error)
}

// instancesOf returns the managed instances registered with activationID.
func instancesOf(ctx context.Context, api OffAPI, activationID string) ([]string, error) {
	var ids []string
	var next *string
	for {
		out, err := api.DescribeInstanceInformation(ctx, &ssm.DescribeInstanceInformationInput{
			Filters:   []ssmtypes.InstanceInformationStringFilter{{Key: aws.String("ActivationIds"), Values: []string{activationID}}},
			NextToken: next,
		})
		if err != nil {
			return nil, fmt.Errorf("describe instances of activation %s: %w", activationID, err)
		}
		for _, in := range out.InstanceInformationList {
			if id := aws.ToString(in.InstanceId); id != "" {
				ids = append(ids, id)
			}
		}
		if aws.ToString(out.NextToken) == "" {
			return ids, nil
		}
		next = out.NextToken
	}
}

// TurnOff turns SSM off in the cloud for the device whose SSM state is
// rec (read just before): it moves the state to deactivating with
// requestID, calls notify (if not nil: e.g. telling the device), deletes
// the activation, deregisters every managed instance registered with it
// or recorded, and resets the state to inactive. Every step runs even if
// an earlier one failed; on any error the state stays deactivating (a
// second TurnOff finishes it) and the error joins every failure. It
// returns the managed instances it deregistered. Deactivate and the
// allowlist sync's revocation both use it.
func TurnOff(ctx context.Context, api OffAPI, state ssmstate.Store, rec ssmstate.Record, requestID string, notify func(context.Context) error) ([]string, error) {
	if _, err := state.BeginDeactivation(ctx, rec.Serial, requestID); err != nil {
		return nil, err
	}
	var errs []error
	if notify != nil {
		if err := notify(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	instances := map[string]bool{}
	if rec.InstanceID != "" {
		instances[rec.InstanceID] = true
	}
	if rec.ActivationID != "" {
		// The registered event may have been missed: find instances by
		// their activation too.
		found, err := instancesOf(ctx, api, rec.ActivationID)
		if err != nil {
			errs = append(errs, err)
		}
		for _, i := range found {
			instances[i] = true
		}
		if err := DeleteActivation(ctx, api, rec.ActivationID); err != nil {
			errs = append(errs, err)
		}
	}
	ids := slices.Sorted(maps.Keys(instances))
	for _, i := range ids {
		if err := Deregister(ctx, api, i); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return ids, fmt.Errorf("ssm off for %s incomplete (state stays %s): %w", rec.Serial, ssmstate.StateDeactivating, errors.Join(errs...))
	}
	if err := state.Clear(ctx, rec.Serial, ssmstate.Guard{RequestID: requestID}); err != nil {
		return ids, err
	}
	return ids, nil
}

func (h *Handler) deactivate(ctx context.Context, id string) Result {
	d, err := h.resolve(ctx, id)
	if err != nil {
		return failed(id, d, err)
	}
	rec, err := h.c.State.Get(ctx, d.serial)
	if err != nil {
		return failed(id, d, err)
	}
	reqID := h.c.NewID()
	log := h.c.Logger.With("serial", d.serial, "thing", d.thing, "requestId", reqID)
	cmd := protocol.SSMCommand{RequestID: reqID, Action: protocol.SSMDeactivate, Timestamp: h.c.Now().Unix()}
	// A revoked device has no thing any more: nothing to publish to.
	canPublish := d.state == registry.StateProvisioned
	if rec.State == ssmstate.StateInactive {
		// Nothing to clean up in the cloud; the device still gets the
		// command (harmless if it is already off) in case it was left on.
		res := d.result(rec)
		res.Message = "already inactive"
		if canPublish {
			if err := h.publish(ctx, d.thing, cmd); err != nil {
				return failed(id, d, err)
			}
			res.RequestID = reqID
		}
		return res
	}
	var notify func(context.Context) error
	if canPublish {
		notify = func(ctx context.Context) error { return h.publish(ctx, d.thing, cmd) }
	}
	instances, err := TurnOff(ctx, h.c.SSM, h.c.State, rec, reqID, notify)
	if err != nil {
		return failed(id, d, fmt.Errorf("deactivation incomplete (run deactivate again): %w", err))
	}
	log.Info("ssm deactivated", "activationId", rec.ActivationID, "instances", instances)
	res := d.result(ssmstate.Record{Serial: d.serial, State: ssmstate.StateInactive, RequestID: reqID})
	res.Changed = true
	res.InstanceID = strings.Join(instances, ",")
	res.Message = "deactivated: activation deleted, managed instance deregistered, device told to stop the agent"
	return res
}

func (h *Handler) status(ctx context.Context, id string) Result {
	d, err := h.resolve(ctx, id)
	if err != nil {
		return failed(id, d, err)
	}
	rec, err := h.c.State.Get(ctx, d.serial)
	if err != nil {
		return failed(id, d, err)
	}
	before := rec
	if rec, err = h.expireStale(ctx, rec); err != nil {
		return failed(id, d, err)
	}
	msg := ""
	if before.State == ssmstate.StateActivating && rec.State == ssmstate.StateInactive {
		msg = "the activation expired before the device registered; it was removed"
	}
	if rec.State == ssmstate.StateActivating && rec.ActivationID != "" {
		// Catch up if the registered event was missed.
		found, err := instancesOf(ctx, h.c.SSM, rec.ActivationID)
		if err != nil {
			msg = "could not check for a registration: " + err.Error()
		}
		if len(found) > 0 {
			if cur, err := h.c.State.MarkActive(ctx, d.serial, rec.ActivationID, found[0]); err == nil {
				rec = cur
				msg = "registered (recorded by status)"
			}
		}
	}
	res := d.result(rec)
	res.Message = msg
	return res
}
