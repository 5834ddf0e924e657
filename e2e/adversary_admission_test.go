package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/lambdas/preprovision"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
)

// Admission and revocation against an adversary (who holds the claim
// certificate, on every SD card, and reads serials off the boards) and a
// tired operator (who deploys an empty or truncated allowlist), with real
// fleet-agent processes against the local stack: the real hook and sync
// Lambdas, the local IoT Core and Systems Manager.

// hookDecisions returns the hook's decision lines about serial in the
// cloud side's log.
func hookDecisions(logs *testenv.LogBuffer, serial string) []string {
	var out []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "pre-provisioning hook decision") && strings.Contains(line, `"serial":"`+serial+`"`) {
			out = append(out, line)
		}
	}
	return out
}

// advStartFleet starts the local stack with serials allowlisted and the
// cloud side's log captured.
func advStartFleet(t *testing.T, serials ...string) (*harness.Fleet, *testenv.LogBuffer) {
	t.Helper()
	logs := &testenv.LogBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := harness.Start(ctx, harness.Options{
		Dir: t.TempDir(), AgentBin: agentBin, Allowlist: allowlistOf(serials...), JobMinute: time.Second,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f, logs
}

func advWaitDenied(t *testing.T, ctx context.Context, a *harness.Agent) {
	t.Helper()
	require.NoError(t, harness.Poll(ctx, a.Serial+" denied", func() bool {
		return strings.Contains(a.Log(), "AccessDenied")
	}), a.LogTail(30))
}

func advCertStatus(t *testing.T, f *harness.Fleet, id string) simregistry.CertStatus {
	t.Helper()
	c, err := f.Stack.Core.Registry().Certificate(id)
	require.NoError(t, err)
	return c.Status
}

func advCertID(t *testing.T, a *harness.Agent) string {
	t.Helper()
	id, found, err := a.Identity()
	require.NoError(t, err)
	require.True(t, found, "%s has no identity", a.Serial)
	return id.CertificateID
}

func advRecord(t *testing.T, ctx context.Context, f *harness.Fleet, serial string) registry.Device {
	t.Helper()
	d, err := f.Stack.Registry.Get(ctx, serial)
	require.NoError(t, err)
	return d
}

// A second agent process with another state dir (another key) and the
// same serial is a clone: denied with an alarm-friendly reason, while the
// original device stays connected with its certificate ACTIVE.
func TestAdversaryClonedSerialIsDenied(t *testing.T) {
	f, logs := advStartFleet(t, serialA)
	a := startAgent(t, f, "a", serialA)
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	certA := advCertID(t, a)

	clone := startAgent(t, f, "clone", serialA)
	advWaitDenied(t, ctx, clone)
	decisions := hookDecisions(logs, serialA)
	require.NotEmpty(t, decisions)
	last := decisions[len(decisions)-1]
	assert.Contains(t, last, `"reason":"`+preprovision.ReasonAlreadyProvisioned+`"`)
	assert.Contains(t, last, `"metric":"`+preprovision.MetricClone+`"`)
	assert.Contains(t, last, `"recordedCertificateId":"`+certA+`"`)
	assert.NotContains(t, logs.String(), "BEGIN CERTIFICATE")

	assert.True(t, f.Connected(a.ThingName()), "the original device stays connected")
	assert.Equal(t, simregistry.CertActive, advCertStatus(t, f, certA))
	th, err := f.Stack.Core.Registry().Thing(a.ThingName())
	require.NoError(t, err)
	assert.Equal(t, []string{certA}, th.Principals, "no second identity on the thing")
	rec := advRecord(t, ctx, f, serialA)
	assert.Equal(t, registry.StateProvisioned, rec.State)
	assert.Equal(t, certA, rec.CertificateID)
	_, found, err := clone.Identity()
	require.NoError(t, err)
	assert.False(t, found, "the clone got no identity")
	assert.True(t, a.Running())
}

// serials returns n distinct serials.
func advSerials(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("20000000000000%02x", i)
	}
	return out
}

// An empty or truncated allowlist is refused as a whole; a removal under
// the limit is applied; a mass removal over the limit is refused until the
// object confirms the exact number.
func TestAdversaryEmptyTruncatedAndMassRemovalRefused(t *testing.T) {
	all := advSerials(12)
	f, logs := advStartFleet(t, all...)
	a := startAgent(t, f, "a", all[0])
	b := startAgent(t, f, "b", all[1])
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	require.NoError(t, b.WaitConnected(ctx), b.LogTail(30))
	certB := advCertID(t, b)

	unchanged := func(t *testing.T, res allowlistsync.Result, err error, reason string) {
		t.Helper()
		var re *allowlistsync.RefusedError
		require.ErrorAs(t, err, &re)
		assert.Contains(t, err.Error(), reason)
		assert.True(t, res.Refused)
		for _, s := range all {
			assert.True(t, advRecord(t, ctx, f, s).State.Admitted(), "%s still admitted", s)
		}
		_, err = f.Stack.Registry.Get(ctx, "30000000000000ff")
		assert.ErrorIs(t, err, registry.ErrNotFound, "the refused file's addition was not made")
		assert.True(t, f.Connected(a.ThingName()))
		assert.True(t, f.Connected(b.ThingName()))
		assert.Equal(t, simregistry.CertActive, advCertStatus(t, f, certB))
	}

	// The tired operator deploys an empty file, then a truncated one.
	res, err := f.Stack.DeployAllowlist(ctx, []byte(""))
	unchanged(t, res, err, "lists no serial")
	res, err = f.Stack.DeployAllowlistWithMetadata(ctx, []byte("# nothing\n"), map[string]string{allowlistsync.MetadataConfirm: "12"})
	unchanged(t, res, err, "never revokes")
	res, err = f.Stack.DeployAllowlist(ctx, []byte(allowlistOf(all[0], "30000000000000ff")))
	unchanged(t, res, err, "would revoke 11 of 12")
	assert.Contains(t, logs.String(), `"metric":"`+allowlistsync.MetricRefused+`"`)

	// Under the limit (3 of 12, limit 5): applied.
	res, err = f.Stack.DeployAllowlist(ctx, []byte(allowlistOf(append([]string{all[0]}, all[4:]...)...)))
	require.NoError(t, err)
	assert.Equal(t, 3, res.Revoked)
	assert.Equal(t, simregistry.CertRevoked, advCertStatus(t, f, certB))
	require.NoError(t, harness.Poll(ctx, "B disconnected", func() bool { return !f.Connected(b.ThingName()) }))
	for _, s := range all[1:4] {
		assert.Equal(t, registry.StateRevoked, advRecord(t, ctx, f, s).State)
	}

	// 7 of 9 is over the limit: refused, also with a wrong confirmation,
	// then applied with the exact one.
	keep := allowlistOf(all[0], all[11])
	res, err = f.Stack.DeployAllowlist(ctx, []byte(keep))
	require.ErrorContains(t, err, "confirm-revocations=7")
	assert.Equal(t, 0, res.Revoked)
	_, err = f.Stack.DeployAllowlistWithMetadata(ctx, []byte(keep), map[string]string{allowlistsync.MetadataConfirm: "6"})
	require.ErrorContains(t, err, "which is not the number of revocations")
	assert.Equal(t, registry.StateAllowed, advRecord(t, ctx, f, all[4]).State)
	res, err = f.Stack.DeployAllowlistWithMetadata(ctx, []byte(keep), map[string]string{allowlistsync.MetadataConfirm: "7"})
	require.NoError(t, err)
	assert.Equal(t, 7, res.Revoked)
	for _, s := range all[4:11] {
		assert.Equal(t, registry.StateRevoked, advRecord(t, ctx, f, s).State)
	}
	assert.True(t, f.Connected(a.ThingName()), "the listed device is untouched")
	assert.Equal(t, registry.StateAllowed, advRecord(t, ctx, f, all[11]).State)
}

// While the sync revokes a device (held before its first AWS call, as a
// slow or crashed sync leaves it), the record is revoking and the hook
// denies a provisioning attempt for that serial.
func TestAdversaryProvisioningWhileRevokingIsDenied(t *testing.T) {
	f, logs := advStartFleet(t, serialA, serialB)
	b := startAgent(t, f, "b", serialB)
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, b.WaitConnected(ctx), b.LogTail(30))
	certB := advCertID(t, b)

	release := f.Stack.HoldRevocations()
	t.Cleanup(release)
	type outcome struct {
		res allowlistsync.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := f.Stack.DeployAllowlist(ctx, []byte(allowlistOf(serialA)))
		done <- outcome{res, err}
	}()
	require.NoError(t, harness.Poll(ctx, "B revoking", func() bool {
		d, err := f.Stack.Registry.Get(ctx, serialB)
		return err == nil && d.State == registry.StateRevoking
	}))

	// A reflashed board (new state dir, new key) with B's serial tries to
	// provision mid-revocation.
	reflashed := startAgent(t, f, "b-reflashed", serialB)
	advWaitDenied(t, ctx, reflashed)
	decisions := hookDecisions(logs, serialB)
	require.NotEmpty(t, decisions)
	assert.Contains(t, decisions[len(decisions)-1], `"reason":"`+preprovision.ReasonRevoking+`"`)

	release()
	out := <-done
	require.NoError(t, out.err)
	assert.Equal(t, 1, out.res.Revoked)
	assert.Equal(t, registry.StateRevoked, advRecord(t, ctx, f, serialB).State)
	assert.Equal(t, simregistry.CertRevoked, advCertStatus(t, f, certB))
	require.NoError(t, harness.Poll(ctx, "B disconnected", func() bool { return !f.Connected(b.ThingName()) }))
	_, found, err := reflashed.Identity()
	require.NoError(t, err)
	assert.False(t, found)
}

// An operator re-admits a provisioned serial with readmit=TOKEN: the
// reflashed board (new state dir) provisions once, its old certificate
// ends REVOKED; the annotation left in the file does not re-admit again.
func TestAdversaryReadmissionReplacesTheIdentityOnce(t *testing.T) {
	f, logs := advStartFleet(t, serialA)
	old := startAgent(t, f, "a", serialA)
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, old.WaitConnected(ctx), old.LogTail(30))
	oldCert := advCertID(t, old)
	require.NoError(t, old.Stop(10*time.Second)) // the SD card is reflashed

	annotated := []byte("# board swapped\n" + serialA + " readmit=INC-42\n")
	res, err := f.Stack.DeployAllowlistWithMetadata(ctx, annotated, map[string]string{allowlistsync.MetadataDeployedBy: "e2e-operator"})
	require.NoError(t, err)
	assert.Equal(t, 1, res.Readmitted)
	rec := advRecord(t, ctx, f, serialA)
	assert.Equal(t, registry.StateReadmitted, rec.State)
	assert.Equal(t, "INC-42", rec.ReadmitToken)
	assert.Equal(t, "e2e-operator", rec.ReadmittedBy)

	reflashed := startAgent(t, f, "a-reflashed", serialA)
	require.NoError(t, reflashed.WaitConnected(ctx), reflashed.LogTail(30))
	newCert := advCertID(t, reflashed)
	require.NotEqual(t, oldCert, newCert)
	assert.Equal(t, simregistry.CertRevoked, advCertStatus(t, f, oldCert), "the old certificate is retired in the same flow")
	assert.Equal(t, simregistry.CertActive, advCertStatus(t, f, newCert))
	th, err := f.Stack.Core.Registry().Thing(reflashed.ThingName())
	require.NoError(t, err)
	assert.Equal(t, []string{newCert}, th.Principals)
	rec = advRecord(t, ctx, f, serialA)
	assert.Equal(t, registry.StateProvisioned, rec.State)
	assert.Equal(t, newCert, rec.CertificateID)
	require.Len(t, rec.CertificateHistory, 1)
	assert.Equal(t, oldCert, rec.CertificateHistory[0].CertificateID)
	assert.Equal(t, registry.RetiredReadmitted, rec.CertificateHistory[0].Reason)
	decisions := hookDecisions(logs, serialA)
	assert.Contains(t, decisions[len(decisions)-1], `"retiredCertificateId":"`+oldCert+`"`)

	// Deploying the same file again does nothing; another board is a
	// clone again.
	res, err = f.Stack.DeployAllowlist(ctx, annotated)
	require.NoError(t, err)
	assert.Equal(t, 0, res.Readmitted)
	clone := startAgent(t, f, "a-clone", serialA)
	advWaitDenied(t, ctx, clone)
	assert.True(t, f.Connected(reflashed.ThingName()))
	assert.Equal(t, simregistry.CertActive, advCertStatus(t, f, newCert))
}

// Revoking a device turns SSM off for it: the pending activation is
// deleted, the registered managed instance deregistered and the SSM state
// reset, so no remote shell outlives the revocation.
func TestAdversaryRevocationTurnsSSMOff(t *testing.T) {
	f, _ := advStartFleet(t, serialA, serialB, serialC)
	b := startAgent(t, f, "b", serialB)
	c := startAgent(t, f, "c", serialC)
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, b.WaitConnected(ctx), b.LogTail(30))
	require.NoError(t, c.WaitConnected(ctx), c.LogTail(30))
	svc := f.Stack.SSM.Service

	// B registered a managed instance; C has an activation pending.
	actB := toggle(t, ctx, f, ssmtoggle.ActionActivate, serialB)
	var codeB string
	for _, a := range svc.Activations() {
		if a.ID == actB.ActivationID {
			codeB = a.Code
		}
	}
	require.NotEmpty(t, codeB)
	reg, err := f.Stack.SSM.Register(ctx, actB.ActivationID, codeB)
	require.NoError(t, err)
	actC := toggle(t, ctx, f, ssmtoggle.ActionActivate, serialC)
	recB, err := f.Stack.SSM.State.Get(ctx, serialB)
	require.NoError(t, err)
	require.Equal(t, ssmstate.StateActive, recB.State)
	require.Len(t, svc.Instances(), 1)

	res, err := f.Stack.DeployAllowlist(ctx, []byte(allowlistOf(serialA)))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Revoked)
	assert.Empty(t, svc.Instances(), "managed instance %s deregistered", reg.InstanceID)
	for _, a := range svc.Activations() {
		assert.NotEqual(t, actC.ActivationID, a.ID, "C's activation deleted")
	}
	for _, s := range []string{serialB, serialC} {
		rec, err := f.Stack.SSM.State.Get(ctx, s)
		require.NoError(t, err)
		assert.Equal(t, ssmstate.StateInactive, rec.State, s)
		assert.Equal(t, registry.StateRevoked, advRecord(t, ctx, f, s).State)
	}
}
