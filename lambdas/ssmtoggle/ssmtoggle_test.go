package ssmtoggle_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle/ssmfake"
	"github.com/iot-fleet/iot-fleet/sim/iottest"
)

const (
	role   = "iot-fleet-dev-ssm-managed-instance"
	region = "eu-central-1"
	group  = "iot-fleet-dev"
)

type env struct {
	t     *testing.T
	ctx   context.Context
	clock *registrytest.Clock
	reg   *registry.Memory
	state ssmstate.Store
	ssm   *ssmfake.SSM
	iot   *lambdatest.SimIoT
	logs  *testenv.LogBuffer
	h     *ssmtoggle.Handler
}

func serial(i int) string { return fmt.Sprintf("%016x", 0xa000+i) }
func thing(i int) string  { return "dev-" + serial(i) }

// newEnv provisions devices 0..n-1 (device i in the group) and builds the
// handler; mod may change the configuration.
func newEnv(t *testing.T, n int, mod func(*ssmtoggle.Config)) *env {
	t.Helper()
	c := registrytest.NewClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, clock: c, reg: registry.NewMemory(registry.WithClock(c.Now)), logs: &testenv.LogBuffer{}}
	e.state = ssmstate.NewMemory(e.reg, c.Now)
	e.ssm = ssmfake.NewSSM(c.Now)
	var members []string
	for i := range n {
		require.NoError(t, e.reg.PutAllowed(ctx, serial(i)))
		_, err := e.reg.MarkProvisioned(ctx, serial(i), fmt.Sprintf("%064x", i+1), thing(i))
		require.NoError(t, err)
		members = append(members, thing(i))
	}
	e.iot = lambdatest.NewSimIoT(t, "iot-fleet-dev-device", group)
	for _, m := range members {
		e.iot.AddThing(t, m, group)
	}
	cfg := ssmtoggle.Config{
		Registry: e.reg, State: e.state, SSM: e.ssm, IoT: e.iot.Client, Data: e.iot.Data,
		ManagedInstanceRole: role, Region: region, Environment: "dev", ThingNamePrefix: "dev-",
		SerialPattern: regexp.MustCompile(`^[0-9a-f]{16}$`), ActivationTTL: 2 * time.Hour,
		Concurrency: 3, Now: c.Now, Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := ssmtoggle.New(cfg)
	require.NoError(t, err)
	e.h = h
	return e
}

func (e *env) do(req ssmtoggle.Request) ssmtoggle.Response {
	e.t.Helper()
	resp, err := e.h.Handle(e.ctx, req)
	require.NoError(e.t, err)
	return resp
}

func (e *env) one(action, id string) ssmtoggle.Result {
	e.t.Helper()
	resp := e.do(ssmtoggle.Request{DeviceID: id, Action: action})
	require.Len(e.t, resp.Results, 1)
	return resp.Results[0]
}

func (e *env) commands(thing string) []protocol.SSMCommand {
	e.t.Helper()
	var out []protocol.SSMCommand
	for _, m := range e.iot.Messages() {
		if m.Topic == protocol.CommandTopic(thing, protocol.KindSSM) {
			require.Equal(e.t, int32(1), m.QoS)
			var c protocol.SSMCommand
			require.NoError(e.t, json.Unmarshal(m.Payload, &c))
			out = append(out, c)
		}
	}
	return out
}

func TestActivateCreatesLimitedActivationAndDeliversCode(t *testing.T) {
	e := newEnv(t, 1, nil)
	res := e.one(ssmtoggle.ActionActivate, serial(0))
	require.True(t, res.OK, res.Error)
	assert.True(t, res.Changed)
	assert.Equal(t, ssmstate.StateActivating, res.State)
	assert.Equal(t, thing(0), res.ThingName)

	acts := e.ssm.Activations()
	require.Len(t, acts, 1)
	a := acts[0]
	assert.Equal(t, int32(1), a.Limit, "registration limit 1")
	assert.Equal(t, e.clock.Now().Add(2*time.Hour), a.Expiry)
	assert.Equal(t, role, a.IamRole)
	assert.Equal(t, thing(0), a.DefaultInstanceName)
	assert.Equal(t, map[string]string{"project": "iot-fleet", "environment": "dev", "thingName": thing(0), "serial": serial(0)}, a.Tags)

	rec, err := e.state.Get(e.ctx, serial(0))
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateActivating, rec.State)
	assert.Equal(t, a.ID, rec.ActivationID)
	assert.Equal(t, a.Expiry, rec.ActivationExpiry)
	assert.Equal(t, res.ActivationID, a.ID)
	require.NotNil(t, res.ActivationExpiresAt)

	cmds := e.commands(thing(0))
	require.Len(t, cmds, 1)
	c := cmds[0]
	assert.Equal(t, protocol.SSMActivate, c.Action)
	assert.Equal(t, a.ID, c.ActivationID)
	assert.Equal(t, a.Code, c.ActivationCode)
	assert.Equal(t, region, c.Region)
	assert.Equal(t, a.Expiry.Unix(), c.ExpiresAt)
	assert.Equal(t, rec.RequestID, c.RequestID)
	assert.Equal(t, res.RequestID, c.RequestID)

	// The code is delivered, never stored, logged or returned.
	out, err := json.Marshal(res)
	require.NoError(t, err)
	assert.NotContains(t, string(out), a.Code)
	assert.NotContains(t, e.logs.String(), a.Code)
	assert.Contains(t, e.logs.String(), a.ID, "the activation id is logged")

	// The device can register with what it got.
	_, err = e.ssm.Register(c.ActivationID, c.ActivationCode)
	require.NoError(t, err)
}

func TestDeviceIDIsSerialOrThingName(t *testing.T) {
	e := newEnv(t, 3, nil)
	require.True(t, e.one(ssmtoggle.ActionActivate, thing(1)).OK, "thing name accepted")
	res := e.one(ssmtoggle.ActionStatus, serial(1))
	require.True(t, res.OK)
	assert.Equal(t, ssmstate.StateActivating, res.State, "serial and thing name name the same device")

	for _, bad := range []string{"prod-" + serial(0), "dev-xyz", "0000", "dev-" + serial(99), serial(99)} {
		r := e.one(ssmtoggle.ActionActivate, bad)
		assert.False(t, r.OK, bad)
		assert.NotEmpty(t, r.Error, bad)
	}
	assert.Equal(t, 1, e.ssm.Count("CreateActivation"))
}

func TestActivateRequiresProvisionedDevice(t *testing.T) {
	e := newEnv(t, 0, nil)
	require.NoError(t, e.reg.PutAllowed(e.ctx, serial(5)))
	r := e.one(ssmtoggle.ActionActivate, serial(5))
	assert.False(t, r.OK)
	assert.Contains(t, r.Error, "not provisioned")
	assert.Zero(t, e.ssm.Count("CreateActivation"))
	assert.Empty(t, e.iot.Messages())
}

// revokedBeforeReserve is the SSM state with a revocation that runs in
// full between the toggle's registry check and its reservation (as the
// revocation does: the device marked revoking, SSM found off, nothing to
// turn off).
type revokedBeforeReserve struct {
	ssmstate.Store
	revoke func()
}

func (r revokedBeforeReserve) Reserve(ctx context.Context, serial, requestID string) (ssmstate.Record, error) {
	r.revoke()
	return r.Store.Reserve(ctx, serial, requestID)
}

// A device revoked while SSM is being turned on gets no activation: no
// code is created or published for a device that can no longer connect.
func TestActivateRacingARevocationCreatesNoActivation(t *testing.T) {
	var e *env
	e = newEnv(t, 1, func(c *ssmtoggle.Config) {
		c.State = revokedBeforeReserve{Store: c.State, revoke: func() {
			_, err := e.reg.MarkRevoking(e.ctx, serial(0), fmt.Sprintf("%064x", 1))
			require.NoError(t, err)
		}}
	})
	r := e.one(ssmtoggle.ActionActivate, serial(0))
	assert.False(t, r.OK)
	assert.Contains(t, r.Error, "became revoking while SSM was being turned on")
	assert.Zero(t, e.ssm.Count("CreateActivation"))
	assert.Empty(t, e.iot.Messages())
	rec, err := e.state.Get(e.ctx, serial(0))
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateInactive, rec.State, "the reservation is released")
}

func TestDuplicateActivateIsHarmless(t *testing.T) {
	e := newEnv(t, 1, nil)
	first := e.one(ssmtoggle.ActionActivate, serial(0))
	require.True(t, first.OK)
	second := e.one(ssmtoggle.ActionActivate, thing(0))
	require.True(t, second.OK)
	assert.False(t, second.Changed)
	assert.Equal(t, first.ActivationID, second.ActivationID)
	assert.Equal(t, 1, e.ssm.Count("CreateActivation"))
	assert.Len(t, e.commands(thing(0)), 1, "no second code is sent")

	// Also once active.
	c := e.commands(thing(0))[0]
	mi, err := e.ssm.Register(c.ActivationID, c.ActivationCode)
	require.NoError(t, err)
	_, err = e.state.MarkActive(e.ctx, serial(0), c.ActivationID, mi)
	require.NoError(t, err)
	third := e.one(ssmtoggle.ActionActivate, serial(0))
	require.True(t, third.OK)
	assert.False(t, third.Changed)
	assert.Equal(t, ssmstate.StateActive, third.State)
	assert.Equal(t, mi, third.InstanceID)
	assert.Equal(t, 1, e.ssm.Count("CreateActivation"))
}

func TestConcurrentActivatesCreateOneActivation(t *testing.T) {
	e := newEnv(t, 1, nil)
	var wg sync.WaitGroup
	results := make([]ssmtoggle.Result, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.one(ssmtoggle.ActionActivate, serial(0))
		}()
	}
	wg.Wait()
	changed := 0
	for _, r := range results {
		require.True(t, r.OK, r.Error)
		if r.Changed {
			changed++
		}
	}
	assert.Equal(t, 1, changed)
	assert.Equal(t, 1, e.ssm.Count("CreateActivation"))
	assert.Len(t, e.ssm.Activations(), 1)
}

func TestCreateActivationFailureReleasesTheDevice(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.ssm.FailNext("CreateActivation", role, ssmfake.Throttled())
	r := e.one(ssmtoggle.ActionActivate, serial(0))
	assert.False(t, r.OK)
	assert.Contains(t, r.Error, "create activation")
	rec, err := e.state.Get(e.ctx, serial(0))
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateInactive, rec.State)
	assert.Empty(t, e.iot.Messages())

	r = e.one(ssmtoggle.ActionActivate, serial(0))
	assert.True(t, r.OK, "a retry works: %s", r.Error)
}

func TestPublishFailureLeavesNoValidCode(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.iot.FailNext("Publish", protocol.CommandTopic(thing(0), protocol.KindSSM), iottest.Throttled())
	r := e.one(ssmtoggle.ActionActivate, serial(0))
	assert.False(t, r.OK)
	assert.Contains(t, r.Error, "publish")
	assert.Contains(t, r.Error, "ThrottlingException", "the data plane's answer reaches the result")
	assert.Empty(t, e.ssm.Activations(), "the activation was deleted")
	rec, err := e.state.Get(e.ctx, serial(0))
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateInactive, rec.State)
}

// activateAndRegister activates device i and registers it as the device
// would, recording the instance as the registered Lambda does.
func (e *env) activateAndRegister(i int, record bool) (protocol.SSMCommand, string) {
	e.t.Helper()
	r := e.one(ssmtoggle.ActionActivate, serial(i))
	require.True(e.t, r.OK, r.Error)
	cmds := e.commands(thing(i))
	c := cmds[len(cmds)-1]
	mi, err := e.ssm.Register(c.ActivationID, c.ActivationCode)
	require.NoError(e.t, err)
	if record {
		_, err = e.state.MarkActive(e.ctx, serial(i), c.ActivationID, mi)
		require.NoError(e.t, err)
	}
	return c, mi
}

func TestDeactivateRemovesEverything(t *testing.T) {
	for _, recorded := range []bool{true, false} {
		t.Run(fmt.Sprintf("InstanceRecorded=%v", recorded), func(t *testing.T) {
			e := newEnv(t, 1, nil)
			act, mi := e.activateAndRegister(0, recorded)
			r := e.one(ssmtoggle.ActionDeactivate, thing(0))
			require.True(t, r.OK, r.Error)
			assert.True(t, r.Changed)
			assert.Equal(t, ssmstate.StateInactive, r.State)
			assert.Equal(t, mi, r.InstanceID)

			cmds := e.commands(thing(0))
			require.Len(t, cmds, 2)
			assert.Equal(t, protocol.SSMDeactivate, cmds[1].Action)
			assert.Empty(t, cmds[1].ActivationCode)
			assert.NotEqual(t, act.RequestID, cmds[1].RequestID)
			assert.Empty(t, e.ssm.Activations(), "activation deleted")
			assert.Empty(t, e.ssm.Instances(), "managed instance deregistered")
			rec, err := e.state.Get(e.ctx, serial(0))
			require.NoError(t, err)
			assert.Equal(t, ssmstate.StateInactive, rec.State)
			assert.Empty(t, rec.ActivationID)
			assert.Empty(t, rec.InstanceID)

			d, err := e.reg.Get(e.ctx, serial(0))
			require.NoError(t, err)
			assert.Equal(t, registry.StateProvisioned, d.State, "the registry record is intact")

			// A duplicate deactivate is harmless.
			calls := len(e.ssm.All())
			again := e.one(ssmtoggle.ActionDeactivate, serial(0))
			require.True(t, again.OK, again.Error)
			assert.False(t, again.Changed)
			assert.Len(t, e.ssm.All(), calls, "no SSM calls")
			assert.Len(t, e.commands(thing(0)), 3, "the device is told again (it ignores it when off)")

			// And it can be activated again.
			_, _ = e.activateAndRegister(0, true)
		})
	}
}

func TestDeactivateFailureIsFinishedByARetry(t *testing.T) {
	e := newEnv(t, 1, nil)
	_, mi := e.activateAndRegister(0, true)
	e.ssm.FailNext("DeregisterManagedInstance", mi, ssmfake.Throttled())
	r := e.one(ssmtoggle.ActionDeactivate, serial(0))
	assert.False(t, r.OK)
	assert.Contains(t, r.Error, "run deactivate again")
	rec, err := e.state.Get(e.ctx, serial(0))
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateDeactivating, rec.State)
	assert.Equal(t, mi, rec.InstanceID, "kept for the retry")

	a := e.one(ssmtoggle.ActionActivate, serial(0))
	assert.False(t, a.OK, "no activation while a deactivation is unfinished")

	r = e.one(ssmtoggle.ActionDeactivate, serial(0))
	require.True(t, r.OK, r.Error)
	assert.Empty(t, e.ssm.Instances())
	rec, err = e.state.Get(e.ctx, serial(0))
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateInactive, rec.State)
}

func TestDeactivateRevokedDeviceCleansUpWithoutPublishing(t *testing.T) {
	e := newEnv(t, 1, nil)
	_, _ = e.activateAndRegister(0, true)
	require.NoError(t, e.reg.MarkRevoked(e.ctx, serial(0), fmt.Sprintf("%064x", 1)))
	r := e.one(ssmtoggle.ActionDeactivate, serial(0))
	require.True(t, r.OK, r.Error)
	assert.Len(t, e.commands(thing(0)), 1, "only the activation; a revoked thing gets nothing")
	assert.Empty(t, e.ssm.Instances())
	assert.Empty(t, e.ssm.Activations())
}

func TestStatusExpiresUnusedActivation(t *testing.T) {
	e := newEnv(t, 1, nil)
	r := e.one(ssmtoggle.ActionActivate, serial(0))
	require.True(t, r.OK)
	s := e.one(ssmtoggle.ActionStatus, serial(0))
	assert.Equal(t, ssmstate.StateActivating, s.State)
	assert.False(t, s.Changed)

	e.clock.Advance(2*time.Hour + time.Second)
	s = e.one(ssmtoggle.ActionStatus, serial(0))
	require.True(t, s.OK, s.Error)
	assert.Equal(t, ssmstate.StateInactive, s.State)
	assert.Contains(t, s.Message, "expired")
	assert.Empty(t, e.ssm.Activations(), "the expired activation was deleted")

	r = e.one(ssmtoggle.ActionActivate, serial(0))
	require.True(t, r.OK)
	assert.True(t, r.Changed, "a new activation after expiry")
	assert.Equal(t, 2, e.ssm.Count("CreateActivation"))
}

func TestActivateReplacesExpiredActivation(t *testing.T) {
	e := newEnv(t, 1, nil)
	first := e.one(ssmtoggle.ActionActivate, serial(0))
	e.clock.Advance(3 * time.Hour)
	second := e.one(ssmtoggle.ActionActivate, serial(0))
	require.True(t, second.OK, second.Error)
	assert.True(t, second.Changed)
	assert.NotEqual(t, first.ActivationID, second.ActivationID)
	acts := e.ssm.Activations()
	require.Len(t, acts, 1)
	assert.Equal(t, second.ActivationID, acts[0].ID)
}

func TestStaleReservationIsReset(t *testing.T) {
	e := newEnv(t, 1, nil)
	// The toggle died between the reservation and CreateActivation.
	_, err := e.state.Reserve(e.ctx, serial(0), "dead-request")
	require.NoError(t, err)
	r := e.one(ssmtoggle.ActionActivate, serial(0))
	assert.False(t, r.Changed, "a fresh reservation is respected")
	e.clock.Advance(ssmtoggle.DefaultReserveGrace + time.Second)
	r = e.one(ssmtoggle.ActionActivate, serial(0))
	require.True(t, r.OK, r.Error)
	assert.True(t, r.Changed)
}

func TestStatusRecordsMissedRegistration(t *testing.T) {
	e := newEnv(t, 1, nil)
	_, mi := e.activateAndRegister(0, false)
	s := e.one(ssmtoggle.ActionStatus, serial(0))
	require.True(t, s.OK, s.Error)
	assert.Equal(t, ssmstate.StateActive, s.State)
	assert.Equal(t, mi, s.InstanceID)
}

// countingSSM tracks how many CreateActivation calls run at once.
type countingSSM struct {
	ssmtoggle.SSMAPI
	inflight, max atomic.Int32
}

func (c *countingSSM) CreateActivation(ctx context.Context, in *ssm.CreateActivationInput, o ...func(*ssm.Options)) (*ssm.CreateActivationOutput, error) {
	n := c.inflight.Add(1)
	defer c.inflight.Add(-1)
	for {
		m := c.max.Load()
		if n <= m || c.max.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(5 * time.Millisecond) // let others overlap; the bound is what is checked
	return c.SSMAPI.CreateActivation(ctx, in, o...)
}

func TestGroupToggleWithOneFailingDevice(t *testing.T) {
	var counting *countingSSM
	e := newEnv(t, 7, func(c *ssmtoggle.Config) {
		counting = &countingSSM{SSMAPI: c.SSM}
		c.SSM = counting
	})
	// Device 3 is in the group but missing from the registry; device 5's
	// publish fails.
	members := []string{thing(0), thing(1), thing(2), "dev-" + serial(50), thing(4), thing(5), thing(6)}
	iotSim := lambdatest.NewSimIoT(t, "iot-fleet-dev-device", group)
	for _, m := range members {
		iotSim.AddThing(t, m, group)
	}
	iotSim.SetPageSize(2)
	h, err := ssmtoggle.New(ssmtoggle.Config{
		Registry: e.reg, State: e.state, SSM: counting, IoT: iotSim.Client, Data: iotSim.Data,
		ManagedInstanceRole: role, Region: region, Environment: "dev", ThingNamePrefix: "dev-",
		SerialPattern: regexp.MustCompile(`^[0-9a-f]{16}$`), Concurrency: 2, Now: e.clock.Now,
		Logger: slog.New(slog.NewJSONHandler(e.logs, nil)),
	})
	require.NoError(t, err)
	iotSim.FailNext("Publish", protocol.CommandTopic(thing(5), protocol.KindSSM), iottest.Throttled())

	resp, err := h.Handle(e.ctx, ssmtoggle.Request{ThingGroup: group, Action: ssmtoggle.ActionActivate})
	require.NoError(t, err)
	assert.Equal(t, 5, resp.Succeeded)
	assert.Equal(t, 2, resp.Failed)
	require.Len(t, resp.Results, 7)
	// The results keep the order AWS IoT lists the group in (by name).
	listed := slices.Sorted(slices.Values(members))
	for i, r := range resp.Results {
		assert.Equal(t, listed[i], r.DeviceID, "results keep the group order")
		switch r.DeviceID {
		case "dev-" + serial(50):
			assert.Contains(t, r.Error, "not in the registry")
		case thing(5):
			assert.Contains(t, r.Error, "publish")
			assert.Contains(t, r.Error, "ThrottlingException")
		default:
			assert.True(t, r.OK, "%s: %s", r.DeviceID, r.Error)
			assert.Equal(t, ssmstate.StateActivating, r.State)
		}
	}
	assert.Equal(t, 4, iotSim.CallCount("ListThingsInThingGroup"), "paginated listing")
	assert.LessOrEqual(t, counting.max.Load(), int32(2), "bounded concurrency")
	assert.Len(t, e.ssm.Activations(), 5, "the failed publish left no activation")

	// Deactivate the group: everything goes, including for the device whose
	// activation failed (a harmless no-op).
	resp, err = h.Handle(e.ctx, ssmtoggle.Request{ThingGroup: group, Action: ssmtoggle.ActionDeactivate})
	require.NoError(t, err)
	assert.Equal(t, 6, resp.Succeeded)
	assert.Equal(t, 1, resp.Failed)
	assert.Empty(t, e.ssm.Activations())

	// Status of the group.
	resp, err = h.Handle(e.ctx, ssmtoggle.Request{ThingGroup: group, Action: ssmtoggle.ActionStatus})
	require.NoError(t, err)
	for _, r := range resp.Results {
		if r.DeviceID != "dev-"+serial(50) {
			assert.Equal(t, ssmstate.StateInactive, r.State)
		}
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, 1, nil)
	for _, req := range []ssmtoggle.Request{
		{DeviceID: serial(0), Action: "enable"},
		{DeviceID: serial(0)},
		{Action: ssmtoggle.ActionStatus},
		{DeviceID: serial(0), ThingGroup: group, Action: ssmtoggle.ActionStatus},
	} {
		_, err := e.h.Handle(e.ctx, req)
		assert.Error(t, err, "%+v", req)
	}
	_, err := e.h.Handle(e.ctx, ssmtoggle.Request{ThingGroup: "nope", Action: ssmtoggle.ActionStatus})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "list things in group nope")
}

func TestNewValidatesConfig(t *testing.T) {
	_, err := ssmtoggle.New(ssmtoggle.Config{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ManagedInstanceRole")
	e := newEnv(t, 0, nil)
	_, err = ssmtoggle.New(ssmtoggle.Config{
		Registry: e.reg, State: e.state, SSM: e.ssm, IoT: e.iot.Client, Data: e.iot.Data, ManagedInstanceRole: role,
		Region: region, Environment: "dev", ThingNamePrefix: "dev-", SerialPattern: regexp.MustCompile("^x$"),
		ActivationTTL: 31 * 24 * time.Hour,
	})
	require.Error(t, err)
}
