package e2e

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmregistered"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// SSM on demand end to end: the real toggle and registered Lambdas in the
// local stack (sim/stack ssm.go) over a fake Systems Manager, a real
// fleet-agent process whose SSM commands are /bin/sh scripts standing in
// for amazon-ssm-agent, the package manager and systemctl.
//
// The fake amazon-ssm-agent's -register does what the real one does in a
// round trip to Systems Manager: it records its argv (its own storage, in
// the test's directory), then waits for the service's answer, which the
// test plays: it reads the activation id and code the script was given,
// registers them with the stack's Systems Manager (code, expiry and limit
// checked; the registration event runs the registered Lambda) and writes
// the managed instance id back, which the script stores in its
// registration file as amazon-ssm-agent does.

func newFakeSSMHost(t *testing.T) *harness.FakeSSMHost {
	t.Helper()
	h, err := harness.NewFakeSSMHost(t.TempDir())
	require.NoError(t, err)
	return h
}

// assertNotInFiles checks that secret is in no file under dir.
func assertNotInFiles(t *testing.T, dir, secret string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		assert.NotContains(t, string(data), secret, "%s holds the activation code", path)
		return nil
	}))
}

func toggle(t *testing.T, ctx context.Context, f *harness.Fleet, action, deviceID string) ssmtoggle.Result {
	t.Helper()
	resp, err := f.Stack.SSMToggle(ctx, ssmtoggle.Request{DeviceID: deviceID, Action: action})
	require.NoError(t, err)
	require.Len(t, resp.Results, 1)
	require.True(t, resp.Results[0].OK, "%s: %+v", action, resp.Results[0])
	return resp.Results[0]
}

func TestSSMActivateRegisterDeactivate(t *testing.T) {
	f := startFleet(t, serialA)
	host := newFakeSSMHost(t)
	a, err := f.NewAgent("a", harness.AgentOptions{Serial: serialA, Configure: func(c *config.Config) { c.SSM = host.Config }})
	require.NoError(t, err)
	require.NoError(t, a.Start())
	t.Cleanup(func() {
		_ = a.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("agent log tail:\n%s\nfake ssm argv:\n%s", a.LogTail(40), strings.Join(host.Argv(), "\n"))
		}
	})
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	thing := a.ThingName()
	watcher, err := f.Stack.WatchSSMStatus(ctx)
	require.NoError(t, err)
	t.Cleanup(watcher.Close)
	svc := f.Stack.SSM.Service

	// The operator activates SSM on the device.
	act := toggle(t, ctx, f, ssmtoggle.ActionActivate, serialA)
	assert.True(t, act.Changed)
	assert.Equal(t, ssmstate.StateActivating, act.State)
	require.NotEmpty(t, act.ActivationID)
	activations := svc.Activations()
	require.Len(t, activations, 1)
	code := activations[0].Code
	assert.Equal(t, int32(1), activations[0].Limit, "registration limit 1")
	assert.Equal(t, stack.ManagedInstanceRoleName("dev"), activations[0].IamRole)
	assert.Equal(t, map[string]string{"project": "iot-fleet", "environment": "dev", "thingName": thing, "serial": serialA}, activations[0].Tags)

	// The agent installs the SSM agent, stops it and registers with the
	// code it was sent, then waits for Systems Manager.
	require.NoError(t, harness.Poll(ctx, "the register call", func() bool { return len(host.RegisterCalls()) == 1 }))
	call := host.RegisterCalls()[0]
	assert.Equal(t, harness.RegisterCall{Code: code, ActivationID: act.ActivationID, Region: "local-1"}, call,
		"register got the activation's code, id and region")
	_, err = watcher.Wait(ctx, thing, func(s protocol.SSMStatus) bool {
		return s.State == protocol.SSMStateInstalling && s.RequestID == act.RequestID
	})
	require.NoError(t, err)

	// Systems Manager registers the instance; the registration event runs
	// the registered Lambda, which records it against the device.
	reg, err := f.Stack.SSM.Register(ctx, call.ActivationID, call.Code)
	require.NoError(t, err)
	assert.Equal(t, ssmregistered.Recorded, reg.Outcome.Result, "%+v", reg.Outcome)
	assert.Equal(t, serialA, reg.Outcome.Serial)
	require.NoError(t, host.Answer(call.ActivationID, reg.InstanceID))

	// The agent starts the service and reports "registered" with the
	// instance id, seen by the operator's MQTT client through the local
	// IoT Core.
	st, err := watcher.Wait(ctx, thing, func(s protocol.SSMStatus) bool { return s.State == protocol.SSMStateRegistered })
	require.NoError(t, err)
	assert.Equal(t, act.RequestID, st.RequestID)
	assert.Equal(t, reg.InstanceID, st.ManagedInstanceID)
	assert.Equal(t, []string{
		"apt-get install -y amazon-ssm-agent",
		"systemctl disable --now amazon-ssm-agent",
		"amazon-ssm-agent -register -code " + code + " -id " + act.ActivationID + " -region local-1 -y",
		"systemctl enable --now amazon-ssm-agent",
	}, host.Argv())

	// Registry state: active with the managed instance; the used
	// activation is deleted, so the code is no longer valid.
	rec, err := f.Stack.SSM.State.Get(ctx, serialA)
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateActive, rec.State)
	assert.Equal(t, reg.InstanceID, rec.InstanceID)
	assert.Empty(t, svc.Activations())
	status := toggle(t, ctx, f, ssmtoggle.ActionStatus, thing)
	assert.Equal(t, ssmstate.StateActive, status.State)
	assert.Equal(t, reg.InstanceID, status.InstanceID)

	// A duplicate activate is harmless: nothing created, nothing sent.
	dup := toggle(t, ctx, f, ssmtoggle.ActionActivate, serialA)
	assert.False(t, dup.Changed)
	assert.Equal(t, ssmstate.StateActive, dup.State)
	assert.Equal(t, 1, svc.Count("CreateActivation"))
	// And the device handles a redelivered activate command (QoS 1) once:
	// it re-sends its status without registering again.
	msgs := f.Stack.SSM.Data.Messages()
	require.Len(t, msgs, 1)
	f.Stack.SSM.Data.Redeliver(msgs[0])
	require.NoError(t, harness.Poll(ctx, "the status re-sent", func() bool {
		n := 0
		for _, s := range watcher.Statuses(thing) {
			if s.State == protocol.SSMStateRegistered {
				n++
			}
		}
		return n >= 2
	}))
	assert.Len(t, host.RegisterCalls(), 1, "no second registration")

	// The operator deactivates: the agent stops the service, clears the
	// registration and uninstalls; the cloud deregisters the instance.
	deact := toggle(t, ctx, f, ssmtoggle.ActionDeactivate, serialA)
	assert.True(t, deact.Changed)
	assert.Equal(t, ssmstate.StateInactive, deact.State)
	st, err = watcher.Wait(ctx, thing, func(s protocol.SSMStatus) bool {
		return s.State == protocol.SSMStateDeactivated && s.RequestID == deact.RequestID
	})
	require.NoError(t, err, a.LogTail(20))
	assert.Empty(t, svc.Instances(), "managed instance deregistered")
	assert.Empty(t, svc.Activations())
	assert.Equal(t, 1, svc.Count("DeregisterManagedInstance"))
	rec, err = f.Stack.SSM.State.Get(ctx, serialA)
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateInactive, rec.State)
	assert.Empty(t, rec.InstanceID)
	assert.Empty(t, rec.ActivationID)
	assert.Equal(t, []string{
		"systemctl disable --now amazon-ssm-agent",
		"amazon-ssm-agent -register -clear",
		"apt-get-remove amazon-ssm-agent",
	}, host.Argv()[4:])
	assert.NoFileExists(t, host.AgentPath, "uninstalled")
	assert.NoFileExists(t, host.RegistrationFile, "registration cleared")

	// A duplicate deactivate is harmless too: the device reports
	// "deactivated" again without running anything.
	dupDeact := toggle(t, ctx, f, ssmtoggle.ActionDeactivate, thing)
	assert.Equal(t, ssmstate.StateInactive, dupDeact.State)
	_, err = watcher.Wait(ctx, thing, func(s protocol.SSMStatus) bool {
		return s.State == protocol.SSMStateDeactivated && s.RequestID == dupDeact.RequestID
	})
	require.NoError(t, err)
	assert.Len(t, host.Argv(), 7, "nothing run for the duplicate")

	// The code was only in the register process's argv: never in the
	// agent's output, its state directory or a published status.
	assert.NotContains(t, a.Log(), code)
	assertNotInFiles(t, a.StateDir, code)
	for _, s := range watcher.Statuses(thing) {
		assert.NotContains(t, s.Reason, code)
	}
}

// An activation the device never uses stays valid only until it expires:
// a code sent to a device whose registration fails is refused by Systems
// Manager after a deactivation, and the agent reports the failure without
// leaking the code.
func TestSSMDeactivateBeforeRegistrationInvalidatesTheCode(t *testing.T) {
	f := startFleet(t, serialA)
	host := newFakeSSMHost(t)
	a, err := f.NewAgent("a", harness.AgentOptions{Serial: serialA, Configure: func(c *config.Config) { c.SSM = host.Config }})
	require.NoError(t, err)
	require.NoError(t, a.Start())
	t.Cleanup(func() {
		_ = a.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("agent log tail:\n%s\nfake ssm argv:\n%s", a.LogTail(40), strings.Join(host.Argv(), "\n"))
		}
	})
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	watcher, err := f.Stack.WatchSSMStatus(ctx)
	require.NoError(t, err)
	t.Cleanup(watcher.Close)

	act := toggle(t, ctx, f, ssmtoggle.ActionActivate, serialA)
	require.NoError(t, harness.Poll(ctx, "the register call", func() bool { return len(host.RegisterCalls()) == 1 }))
	call := host.RegisterCalls()[0]

	// The operator changes their mind before Systems Manager answered.
	deact := toggle(t, ctx, f, ssmtoggle.ActionDeactivate, serialA)
	assert.Equal(t, ssmstate.StateInactive, deact.State)
	assert.Empty(t, f.Stack.SSM.Service.Activations(), "activation deleted")

	// The code no longer registers anything.
	_, err = f.Stack.SSM.Register(ctx, call.ActivationID, call.Code)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "InvalidActivation")
	require.NoError(t, host.Answer(call.ActivationID, "InvalidActivation: activation "+act.ActivationID+" not found (code "+call.Code+")"))

	st, err := watcher.Wait(ctx, a.ThingName(), func(s protocol.SSMStatus) bool {
		return s.State == protocol.SSMStateFailed && s.RequestID == act.RequestID
	})
	require.NoError(t, err)
	assert.Contains(t, st.Reason, "register")
	assert.NotContains(t, st.Reason, call.Code, "the failure is reported redacted")
	// The queued deactivate then runs: the device ends deactivated.
	_, err = watcher.Wait(ctx, a.ThingName(), func(s protocol.SSMStatus) bool {
		return s.State == protocol.SSMStateDeactivated && s.RequestID == deact.RequestID
	})
	require.NoError(t, err)
	assert.Empty(t, f.Stack.SSM.Service.Instances())
	assert.NotContains(t, a.Log(), call.Code)
	assertNotInFiles(t, a.StateDir, call.Code)
}
