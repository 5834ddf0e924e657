// Package ssmregistered is the Lambda that records a device's managed
// instance once its SSM agent registered with the activation the toggle
// sent (docs/ssm.md, "Registration event").
//
// It is the target of an EventBridge rule on source aws.ssm matching
// detail-type "SSM Managed Instance Registration" (emitted when a hybrid
// node registers; detail carries instance-id and activation-id) and, as a
// fallback, "EC2 State Manager Instance Association State Change" (emitted
// when an association such as AWS-GatherSoftwareInventory first runs on the
// new node; detail carries instance-id only). Either way the handler trusts
// nothing in the event but the instance id: it reads the instance's tags
// (ListTagsForResource, ResourceType ManagedInstance), requires the
// project and environment tags of this stack, maps the thingName tag to
// the registry serial, and records the instance only if it registered
// with the activation the registry holds for that device. An instance of
// this project that registered with any other activation (a stale code,
// or after a deactivation) is deregistered so it cannot linger.
package ssmregistered

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

// Event sources and detail types the handler accepts.
const (
	Source                  = "aws.ssm"
	DetailTypeRegistration  = "SSM Managed Instance Registration"
	DetailTypeAssociationOK = "EC2 State Manager Instance Association State Change"
)

// managedInstanceRE matches hybrid managed instance ids (EC2 instances,
// i-..., also produce association events; they are ignored).
var managedInstanceRE = regexp.MustCompile(`^mi-[0-9a-f]{17}$`)

// SSMAPI is the part of the Systems Manager client the handler uses.
type SSMAPI interface {
	ListTagsForResource(ctx context.Context, in *ssm.ListTagsForResourceInput, optFns ...func(*ssm.Options)) (*ssm.ListTagsForResourceOutput, error)
	DescribeInstanceInformation(ctx context.Context, in *ssm.DescribeInstanceInformationInput, optFns ...func(*ssm.Options)) (*ssm.DescribeInstanceInformationOutput, error)
	DeleteActivation(ctx context.Context, in *ssm.DeleteActivationInput, optFns ...func(*ssm.Options)) (*ssm.DeleteActivationOutput, error)
	DeregisterManagedInstance(ctx context.Context, in *ssm.DeregisterManagedInstanceInput, optFns ...func(*ssm.Options)) (*ssm.DeregisterManagedInstanceOutput, error)
}

// Config configures a Handler.
type Config struct {
	Registry        ssmtoggle.Devices
	State           ssmstate.Store
	SSM             SSMAPI
	Environment     string
	ThingNamePrefix string
	Logger          *slog.Logger
}

// Outcomes.
const (
	Recorded     = "recorded"
	Ignored      = "ignored"
	Deregistered = "deregistered"
)

// Outcome is the handler's answer (logged by Lambda; useful in tests).
type Outcome struct {
	Result     string `json:"result"`
	InstanceID string `json:"instance_id,omitempty"`
	Serial     string `json:"serial,omitempty"`
	Reason     string `json:"reason,omitempty"`
}

// Handler is the registered Lambda's handler.
type Handler struct {
	c Config
}

// New validates c.
func New(c Config) (*Handler, error) {
	if c.Registry == nil || c.State == nil || c.SSM == nil || c.Environment == "" || c.ThingNamePrefix == "" {
		return nil, errors.New("ssmregistered: Registry, State, SSM, Environment and ThingNamePrefix are required")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Handler{c: c}, nil
}

type detail struct {
	InstanceID   string `json:"instance-id"`
	ActivationID string `json:"activation-id"`
	DocumentName string `json:"document-name"`
	Status       string `json:"status"`
}

func (h *Handler) ignore(o Outcome, reason string) (Outcome, error) {
	o.Result, o.Reason = Ignored, reason
	h.c.Logger.Info("ssm event ignored", "instanceId", o.InstanceID, "serial", o.Serial, "reason", reason)
	return o, nil
}

// Handle processes one EventBridge event. Transient AWS or registry errors
// are returned (EventBridge's async invocation retries); events that are
// not for this stack are ignored.
func (h *Handler) Handle(ctx context.Context, ev events.CloudWatchEvent) (Outcome, error) {
	var o Outcome
	if ev.Source != Source || (ev.DetailType != DetailTypeRegistration && ev.DetailType != DetailTypeAssociationOK) {
		return h.ignore(o, fmt.Sprintf("not an SSM registration event (%s / %s)", ev.Source, ev.DetailType))
	}
	var d detail
	if len(ev.Detail) > 0 {
		if err := json.Unmarshal(ev.Detail, &d); err != nil {
			return h.ignore(o, "malformed detail: "+err.Error())
		}
	}
	o.InstanceID = d.InstanceID
	if !managedInstanceRE.MatchString(d.InstanceID) {
		return h.ignore(o, "not a hybrid managed instance id")
	}
	tags, err := h.tags(ctx, d.InstanceID)
	if err != nil {
		if ssmtoggle.IsGone(err) {
			return h.ignore(o, "instance no longer exists")
		}
		return o, err
	}
	if tags[ssmtoggle.TagProject] != ssmtoggle.ProjectName || tags[ssmtoggle.TagEnvironment] != h.c.Environment {
		return h.ignore(o, fmt.Sprintf("tags project=%q environment=%q are not this stack's", tags[ssmtoggle.TagProject], tags[ssmtoggle.TagEnvironment]))
	}
	thing := tags[ssmtoggle.TagThingName]
	serial, ok := strings.CutPrefix(thing, h.c.ThingNamePrefix)
	if !ok || serial == "" || (tags[ssmtoggle.TagSerial] != "" && tags[ssmtoggle.TagSerial] != serial) {
		return h.deregister(ctx, o, fmt.Sprintf("tags thingName=%q serial=%q do not name a device", thing, tags[ssmtoggle.TagSerial]))
	}
	o.Serial = serial
	dev, err := h.c.Registry.Get(ctx, serial)
	if errors.Is(err, registry.ErrNotFound) {
		return h.deregister(ctx, o, "device "+serial+" is not in the registry")
	}
	if err != nil {
		return o, fmt.Errorf("ssmregistered: registry: %w", err)
	}
	if dev.ThingName != "" && dev.ThingName != thing {
		return h.deregister(ctx, o, fmt.Sprintf("registry names thing %q, instance is tagged %q", dev.ThingName, thing))
	}
	activationID := d.ActivationID
	if activationID == "" {
		if activationID, err = h.activationOf(ctx, d.InstanceID); err != nil {
			return o, err
		}
		if activationID == "" {
			return h.ignore(o, "instance information not found")
		}
	}
	rec, err := h.c.State.MarkActive(ctx, serial, activationID, d.InstanceID)
	if errors.Is(err, ssmstate.ErrConflict) {
		return h.deregister(ctx, o, "registered with activation "+activationID+", which the registry does not expect")
	}
	if err != nil {
		return o, fmt.Errorf("ssmregistered: %w", err)
	}
	// The registration limit is 1, so the code is spent; delete the
	// activation so nothing about it stays valid.
	if err := ssmtoggle.DeleteActivation(ctx, h.c.SSM, activationID); err != nil {
		h.c.Logger.Warn("could not delete the used activation; the expiry sweep retries", "activationId", activationID, "err", err)
	}
	o.Result = Recorded
	h.c.Logger.Info("ssm managed instance recorded", "serial", serial, "thing", thing, "instanceId", d.InstanceID,
		"activationId", activationID, "state", rec.State)
	return o, nil
}

func (h *Handler) deregister(ctx context.Context, o Outcome, reason string) (Outcome, error) {
	if err := ssmtoggle.Deregister(ctx, h.c.SSM, o.InstanceID); err != nil {
		return o, fmt.Errorf("ssmregistered: %s: %w", reason, err)
	}
	o.Result, o.Reason = Deregistered, reason
	h.c.Logger.Warn("stray ssm managed instance deregistered", "instanceId", o.InstanceID, "serial", o.Serial, "reason", reason)
	return o, nil
}

func (h *Handler) tags(ctx context.Context, instanceID string) (map[string]string, error) {
	out, err := h.c.SSM.ListTagsForResource(ctx, &ssm.ListTagsForResourceInput{
		ResourceType: ssmtypes.ResourceTypeForTaggingManagedInstance, ResourceId: aws.String(instanceID),
	})
	if err != nil {
		return nil, fmt.Errorf("ssmregistered: tags of %s: %w", instanceID, err)
	}
	tags := map[string]string{}
	for _, t := range out.TagList {
		tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return tags, nil
}

func (h *Handler) activationOf(ctx context.Context, instanceID string) (string, error) {
	out, err := h.c.SSM.DescribeInstanceInformation(ctx, &ssm.DescribeInstanceInformationInput{
		Filters: []ssmtypes.InstanceInformationStringFilter{{Key: aws.String("InstanceIds"), Values: []string{instanceID}}},
	})
	if err != nil {
		return "", fmt.Errorf("ssmregistered: describe %s: %w", instanceID, err)
	}
	for _, in := range out.InstanceInformationList {
		if aws.ToString(in.InstanceId) == instanceID {
			return aws.ToString(in.ActivationId), nil
		}
	}
	return "", nil
}
