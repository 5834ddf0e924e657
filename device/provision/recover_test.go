package provision

import (
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// provisioned provisions the fixture's device and returns its identity.
func (f *fixture) provisioned() store.Identity {
	f.t.Helper()
	id := f.runToCompletion()
	f.checkProvisioned(id)
	return id
}

func (f *fixture) store() *store.Store {
	f.t.Helper()
	st, err := store.Open(f.dir)
	require.NoError(f.t, err)
	return st
}

func (f *fixture) identity() store.Identity {
	f.t.Helper()
	id, found, err := f.store().Identity()
	require.NoError(f.t, err)
	require.True(f.t, found)
	return id
}

func (f *fixture) exists(rel string) bool {
	_, err := os.Stat(filepath.Join(f.dir, rel))
	return err == nil
}

// usable checks the invariant a power cut must keep: identity.json names a
// key and certificate that are on disk and belong together.
func (f *fixture) usable() store.Identity {
	f.t.Helper()
	id := f.identity()
	_, err := f.store().TLSCertificate(id)
	require.NoError(f.t, err, "identity.json names a usable key pair")
	return id
}

// recovered checks the end state of a successful recovery from old.
func (f *fixture) recovered(old, id store.Identity) {
	f.t.Helper()
	assert.Equal(f.t, old.ThingName, id.ThingName)
	assert.NotEqual(f.t, old.CertificateID, id.CertificateID)
	assert.NotEqual(f.t, old.KeyFile, id.KeyFile, "a new key made on the device")
	assert.Equal(f.t, id, f.usable())
	fi, err := os.Stat(f.store().Path(id.KeyFile))
	require.NoError(f.t, err)
	assert.Equal(f.t, os.FileMode(0o600), fi.Mode().Perm())
	assert.False(f.t, f.exists(old.KeyFile), "the old key is removed once the new certificate connected")
	assert.False(f.t, f.exists(old.CertFile))
	assert.False(f.t, f.exists(store.ProvisionFile))
	assert.False(f.t, f.exists(RetryFile))
	// The cloud has the new certificate ACTIVE on the thing and the broker
	// accepts it as the thing.
	c, err := f.b.Registry().Certificate(id.CertificateID)
	require.NoError(f.t, err)
	assert.Equal(f.t, registry.CertActive, c.Status)
	assert.Equal(f.t, []string{id.ThingName}, c.Things)
	cert, err := f.store().TLSCertificate(id)
	require.NoError(f.t, err)
	ctx, _ := ctxTimeout(f.t, 30*time.Second)
	assert.NoError(f.t, mqttconn.Probe(ctx, mqttconn.Options{
		Address: f.b.Endpoint(), ClientID: id.ThingName, ConnectTimeout: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(f.logs, nil)),
		TLSConfig: func() (*tls.Config, error) {
			return mqttconn.NewTLSConfig(f.b.RootCAPEM(), cert, "127.0.0.1", false)
		},
	}))
	assert.NotContains(f.t, f.logs.String(), "PRIVATE KEY")
}

// revokedAfterProvisioning provisions the fixture's device, then revokes
// its certificate in the cloud, and returns the identity it had.
func (f *fixture) revokedAfterProvisioning() store.Identity {
	f.t.Helper()
	old := f.provisioned()
	f.refuse(old, registry.CertRevoked)
	return old
}

// refuse sets the certificate of id to status in the cloud and, as an
// operator does, re-admits the serial in the device registry, so that the
// stack's pre-provisioning hook lets it provision once more (a provisioned
// serial is otherwise a clone).
func (f *fixture) refuse(id store.Identity, status registry.CertStatus) {
	f.t.Helper()
	require.NoError(f.t, f.b.SetCertificateStatus(id.CertificateID, status))
	_, changed, err := f.b.DeviceRegistry().Readmit(context.Background(), serial, "INC-1", "test")
	require.NoError(f.t, err)
	require.True(f.t, changed)
}

// recoverReplaces runs a recovery and checks it replaced old.
func (f *fixture) recoverReplaces(old store.Identity) {
	f.t.Helper()
	ctx, _ := ctxTimeout(f.t, 30*time.Second)
	id, replaced, err := f.recover(ctx)
	require.NoError(f.t, err)
	assert.True(f.t, replaced)
	f.recovered(old, id)
}

func (f *fixture) recover(ctx context.Context) (store.Identity, bool, error) {
	return f.provisioner().Recover(ctx)
}

func TestRecoverReplacesARevokedCertificate(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	f.recoverReplaces(f.revokedAfterProvisioning())
	assert.Contains(t, f.logs.String(), "refuses the current certificate")
}

func TestRecoverKeepsAWorkingCertificate(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	old := f.provisioned()
	csrs := f.csrs()

	ctx, _ := ctxTimeout(t, 30*time.Second)
	id, replaced, err := f.recover(ctx)
	require.NoError(t, err)
	assert.False(t, replaced)
	assert.Equal(t, old, id)
	assert.Equal(t, csrs, f.csrs(), "no new certificate requested")
	assert.False(t, f.exists(store.ProvisionFile))
}

// A broker that is down (or a network outage) is not a refusal: the
// recovery retries with the short backoff and never asks for a new
// certificate.
func TestRecoverNeverReprovisionsOnANetworkFailure(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	old := f.provisioned()
	csrs := f.csrs()
	f.b.StopBroker()

	ctx, cancel := ctxTimeout(t, 30*time.Second)
	p := f.provisioner()
	p.o.Sleep = f.cancelAfter(3, cancel)
	_, _, err := p.Recover(ctx)
	require.ErrorIs(t, err, context.Canceled)
	for _, d := range f.sleeps {
		assert.LessOrEqual(t, d, 10*time.Millisecond, "transient backoff")
	}
	assert.Equal(t, old, f.usable())
	assert.Equal(t, csrs, f.csrs())
	assert.False(t, f.exists(store.ProvisionFile), "no new key was made")
	assert.True(t, f.exists(old.KeyFile))
}

// A serial the hook denies backs off exponentially (with jitter) and the
// schedule survives a restart: the restarted recovery waits for the rest
// of the backoff before any new request.
func TestRecoverDeniedBacksOffLongAcrossRestarts(t *testing.T) {
	var allow atomic.Bool
	allow.Store(true)
	f := newFixture(t, cloudOptions{Allow: func(string) bool { return allow.Load() }})
	old := f.provisioned()
	allow.Store(false)
	f.refuse(old, registry.CertRevoked)

	policy := backoff.Policy{Initial: time.Minute, Max: time.Hour}
	ctx, cancel := ctxTimeout(t, 30*time.Second)
	p := f.provisioner()
	p.o.Denied = policy
	p.o.Sleep = f.cancelAfter(3, cancel)
	_, _, err := p.Recover(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, f.sleeps, 3)
	for i, d := range f.sleeps {
		ceiling := policy.Initial << i
		assert.GreaterOrEqual(t, d, ceiling/2, "denial %d", i)
		assert.LessOrEqual(t, d, ceiling, "denial %d", i)
	}
	registers := f.registers()
	assert.Equal(t, 1+3, registers, "one RegisterThing per attempt")
	assert.Equal(t, 3, strings.Count(f.logs.String(), "provisioning refused; backing off"), "the denial is logged once per attempt")

	var r Retry
	found, err := f.store().ReadJSON(RetryFile, &r)
	require.NoError(t, err)
	require.True(t, found)
	assert.Equal(t, 3, r.Denials)
	assert.True(t, r.NextAttempt.After(time.Now()))
	assert.Contains(t, r.LastError, "AccessDenied")
	// Still a usable identity (the old one) and a recovery to resume.
	assert.Equal(t, old, f.usable())
	rec, err := Recovering(f.store())
	require.NoError(t, err)
	assert.True(t, rec)

	// Restart: the first thing the new process does is wait for the rest
	// of the persisted backoff.
	f.sleeps = nil
	ctx2, cancel2 := ctxTimeout(t, 30*time.Second)
	p2 := f.provisioner()
	p2.o.Denied = policy
	p2.o.Sleep = f.cancelAfter(1, cancel2)
	_, _, err = p2.Recover(ctx2)
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, f.sleeps, 1)
	assert.Greater(t, f.sleeps[0], time.Duration(0))
	assert.LessOrEqual(t, f.sleeps[0], policy.Initial<<2)
	assert.Equal(t, registers, f.registers(), "no request before the backoff ended")

	// Re-admitted: the recovery completes.
	allow.Store(true)
	p3 := f.provisioner()
	p3.o.Sleep = func(ctx context.Context, d time.Duration) error { return ctx.Err() } // skip the wait
	ctx3, _ := ctxTimeout(t, 30*time.Second)
	id, replaced, err := p3.Recover(ctx3)
	require.NoError(t, err)
	assert.True(t, replaced)
	f.recovered(old, id)
}

// A power cut at every persisted step of a recovery leaves a usable
// identity (the old pair until the switch, the new one after) and a
// recovery that resumes and completes.
func TestRecoverPowerCutAtEveryStep(t *testing.T) {
	for _, at := range []Step{StepKey, StepCertificate, StepRegistered, StepSwitched} {
		t.Run(string(at), func(t *testing.T) {
			f := newFixture(t, cloudOptions{})
			old := f.revokedAfterProvisioning()

			ctx, cancel := ctxTimeout(t, 30*time.Second)
			p := f.provisioner()
			p.o.AfterPersist = func(st State) {
				if st.Step == at {
					cancel()
				}
			}
			_, _, err := p.Recover(ctx)
			require.ErrorIs(t, err, context.Canceled)

			id := f.usable()
			if at == StepSwitched {
				assert.NotEqual(t, old.CertificateID, id.CertificateID)
			} else {
				assert.Equal(t, old, id, "the old identity stays until the new certificate connected")
				assert.True(t, f.exists(old.KeyFile))
			}
			rec, err := Recovering(f.store())
			require.NoError(t, err)
			assert.True(t, rec)

			ctx2, _ := ctxTimeout(t, 30*time.Second)
			got, _, err := f.recover(ctx2)
			require.NoError(t, err)
			f.recovered(old, got)
		})
	}
}

// A killed first provisioning that left provision.json next to a written
// identity.json does not confuse a later recovery.
func TestRecoverIgnoresALeftoverFirstProvisioningState(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	old := f.provisioned()
	require.NoError(t, f.store().WriteJSON(store.ProvisionFile, State{Step: StepRegistered, Serial: serial, KeyFile: old.KeyFile, CertFile: old.CertFile, CertificateID: old.CertificateID, ThingName: old.ThingName}))
	f.refuse(old, registry.CertInactive)
	f.recoverReplaces(old)
}

// A truncated provision.json does not stop a recovery: it starts over and
// the current identity is untouched until the new one connected.
func TestRecoverStartsOverAfterACorruptState(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	old := f.revokedAfterProvisioning()
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, store.ProvisionFile), []byte(`{"step":"certif`), 0o600))
	f.recoverReplaces(old)
}
