package ssmregistered_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmregistered"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle/ssmfake"
)

const (
	serial = "00000000000000b7"
	thing  = "dev-" + serial
)

type env struct {
	t      *testing.T
	ctx    context.Context
	reg    *registry.Memory
	state  ssmstate.Store
	ssm    *ssmfake.SSM
	iot    *lambdatest.SimIoT
	toggle *ssmtoggle.Handler
	h      *ssmregistered.Handler
}

func newEnv(t *testing.T) *env {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, reg: registry.NewMemory(), ssm: ssmfake.NewSSM(nil), iot: lambdatest.NewSimIoT(t, "iot-fleet-dev-device", "iot-fleet-dev")}
	e.state = ssmstate.NewMemory(e.reg, nil)
	require.NoError(t, e.reg.PutAllowed(ctx, serial))
	_, err := e.reg.MarkProvisioned(ctx, serial, fmt.Sprintf("%064x", 7), thing)
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e.toggle, err = ssmtoggle.New(ssmtoggle.Config{
		Registry: e.reg, State: e.state, SSM: e.ssm, IoT: e.iot.Client, Data: e.iot.Data,
		ManagedInstanceRole: "role", Region: "eu-central-1", Environment: "dev", ThingNamePrefix: "dev-",
		SerialPattern: regexp.MustCompile(`^[0-9a-f]{16}$`), Logger: log,
	})
	require.NoError(t, err)
	e.h, err = ssmregistered.New(ssmregistered.Config{
		Registry: e.reg, State: e.state, SSM: e.ssm, Environment: "dev", ThingNamePrefix: "dev-", Logger: log,
	})
	require.NoError(t, err)
	return e
}

// activate runs the toggle and registers as the device's agent would.
func (e *env) activate() (activationID, instanceID string) {
	e.t.Helper()
	resp, err := e.toggle.Handle(e.ctx, ssmtoggle.Request{DeviceID: serial, Action: ssmtoggle.ActionActivate})
	require.NoError(e.t, err)
	require.True(e.t, resp.Results[0].OK, resp.Results[0].Error)
	msgs := e.iot.Messages()
	var cmd protocol.SSMCommand
	require.NoError(e.t, json.Unmarshal(msgs[len(msgs)-1].Payload, &cmd))
	mi, err := e.ssm.Register(cmd.ActivationID, cmd.ActivationCode)
	require.NoError(e.t, err)
	return cmd.ActivationID, mi
}

// event loads a testdata event with the instance and activation ids
// replaced.
func (e *env) event(file, instanceID, activationID string) events.CloudWatchEvent {
	e.t.Helper()
	raw, err := os.ReadFile("testdata/" + file)
	require.NoError(e.t, err)
	s := strings.ReplaceAll(string(raw), "mi-0123456789abcdef0", instanceID)
	s = strings.ReplaceAll(s, "ACTIVATION_ID", activationID)
	var ev events.CloudWatchEvent
	require.NoError(e.t, json.Unmarshal([]byte(s), &ev))
	return ev
}

func (e *env) handle(ev events.CloudWatchEvent) ssmregistered.Outcome {
	e.t.Helper()
	o, err := e.h.Handle(e.ctx, ev)
	require.NoError(e.t, err)
	return o
}

func TestRegistrationEventRecordsInstance(t *testing.T) {
	for _, file := range []string{"registration.json", "association.json"} {
		t.Run(file, func(t *testing.T) {
			e := newEnv(t)
			aid, mi := e.activate()
			o := e.handle(e.event(file, mi, aid))
			assert.Equal(t, ssmregistered.Recorded, o.Result, o.Reason)
			assert.Equal(t, serial, o.Serial)
			rec, err := e.state.Get(e.ctx, serial)
			require.NoError(t, err)
			assert.Equal(t, ssmstate.StateActive, rec.State)
			assert.Equal(t, mi, rec.InstanceID)
			assert.Empty(t, e.ssm.Activations(), "the used activation is deleted")
			assert.Len(t, e.ssm.Instances(), 1, "the instance stays")
			assert.Contains(t, e.ssm.All(), "ListTagsForResource ManagedInstance/"+mi, "tags were checked")

			// Repeated events (the association runs again) are harmless.
			o = e.handle(e.event(file, mi, aid))
			assert.Equal(t, ssmregistered.Recorded, o.Result, o.Reason)
			assert.Len(t, e.ssm.Instances(), 1)

			// The toggle's status shows it.
			resp, err := e.toggle.Handle(e.ctx, ssmtoggle.Request{DeviceID: thing, Action: ssmtoggle.ActionStatus})
			require.NoError(t, err)
			assert.Equal(t, ssmstate.StateActive, resp.Results[0].State)
			assert.Equal(t, mi, resp.Results[0].InstanceID)
		})
	}
}

func TestForeignAndMalformedEventsAreIgnored(t *testing.T) {
	e := newEnv(t)
	aid, mi := e.activate()

	o := e.handle(e.event("ec2-association.json", "", ""))
	assert.Equal(t, ssmregistered.Ignored, o.Result, "EC2 instances are not ours")

	other := e.event("registration.json", mi, aid)
	other.Source = "aws.ec2"
	assert.Equal(t, ssmregistered.Ignored, e.handle(other).Result)

	bad := e.event("registration.json", mi, aid)
	bad.Detail = json.RawMessage(`[1,2]`)
	assert.Equal(t, ssmregistered.Ignored, e.handle(bad).Result)

	// An instance of another project or environment is neither recorded
	// nor touched.
	for i, tags := range []map[string]string{
		{"project": "someone-else", "environment": "dev", "thingName": thing},
		{"project": "iot-fleet", "environment": "prod", "thingName": thing},
		{},
	} {
		id := fmt.Sprintf("mi-%017x", 0xf00+i)
		e.ssm.AddInstance(ssmfake.Instance{ID: id, ActivationID: aid, Tags: tags})
		o := e.handle(e.event("registration.json", id, aid))
		assert.Equal(t, ssmregistered.Ignored, o.Result, "%v", tags)
	}
	assert.Len(t, e.ssm.Instances(), 4)
	assert.Zero(t, e.ssm.Count("DeregisterManagedInstance"))

	// A deleted instance's late event.
	o = e.handle(e.event("registration.json", "mi-00000000000000abc", aid))
	assert.Equal(t, ssmregistered.Ignored, o.Result)

	rec, err := e.state.Get(e.ctx, serial)
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateActivating, rec.State, "nothing was recorded")
}

func TestStrayInstanceIsDeregistered(t *testing.T) {
	e := newEnv(t)
	aid, mi := e.activate()
	// Deactivated before the registration event arrived (the toggle found
	// and deregistered the instance by its activation id already); a late
	// event finds nothing to record.
	resp, err := e.toggle.Handle(e.ctx, ssmtoggle.Request{DeviceID: serial, Action: ssmtoggle.ActionDeactivate})
	require.NoError(t, err)
	require.True(t, resp.Results[0].OK)
	assert.Equal(t, ssmregistered.Ignored, e.handle(e.event("registration.json", mi, aid)).Result)

	// An instance of this stack that registered with an activation the
	// registry does not expect (e.g. an old code) is deregistered.
	aid2, mi2 := e.activate()
	stray := fmt.Sprintf("mi-%017x", 0xabc)
	e.ssm.AddInstance(ssmfake.Instance{ID: stray, ActivationID: "old-activation",
		Tags: map[string]string{"project": "iot-fleet", "environment": "dev", "thingName": thing, "serial": serial}})
	o := e.handle(e.event("association.json", stray, ""))
	assert.Equal(t, ssmregistered.Deregistered, o.Result)
	var ids []string
	for _, i := range e.ssm.Instances() {
		ids = append(ids, i.ID)
	}
	assert.Equal(t, []string{mi2}, ids)

	// A tagged instance naming a device that is not in the registry.
	ghost := fmt.Sprintf("mi-%017x", 0xdef)
	e.ssm.AddInstance(ssmfake.Instance{ID: ghost, ActivationID: aid2,
		Tags: map[string]string{"project": "iot-fleet", "environment": "dev", "thingName": "dev-00000000000000ff"}})
	assert.Equal(t, ssmregistered.Deregistered, e.handle(e.event("registration.json", ghost, aid2)).Result)

	// The real one is still recorded.
	assert.Equal(t, ssmregistered.Recorded, e.handle(e.event("registration.json", mi2, aid2)).Result)
}

func TestTransientErrorsAreReturnedForRetry(t *testing.T) {
	e := newEnv(t)
	aid, mi := e.activate()
	e.ssm.FailNext("ListTagsForResource", mi, ssmfake.Throttled())
	_, err := e.h.Handle(e.ctx, e.event("registration.json", mi, aid))
	require.Error(t, err)
	rec, gerr := e.state.Get(e.ctx, serial)
	require.NoError(t, gerr)
	assert.Equal(t, ssmstate.StateActivating, rec.State)
	assert.Equal(t, ssmregistered.Recorded, e.handle(e.event("registration.json", mi, aid)).Result, "the retry records it")
}
