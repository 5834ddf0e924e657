package rotation_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/rotation"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
)

// provisioned starts a device and lets it provision by claim through the
// stack's hook. It returns the device's provisioned identity.
func provisioned(t *testing.T, c *cloud, rc rotation.Config) (*device, *running, store.Identity) {
	t.Helper()
	d := newDevice(t, c)
	r := d.start(rc, true)
	id := d.identity()
	c.connectedWith(id.CertificateID)
	return d, r, id
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Mode().Perm()
}

func TestRotationCompletes(t *testing.T) {
	c := newCloud(t)
	d, _, old := provisioned(t, c, rotation.Config{})
	st := d.store()

	id := c.request()
	rec := c.waitFinished(id)
	require.Equal(t, registry.RotationCompleted, rec.LastRotationStatus)
	dst := d.waitIdle(id)
	require.Equal(t, protocol.RotateConfirmed, dst.LastStatus)

	// The device uses the new pair, generated on the device and kept 0600.
	now := d.identity()
	require.NotEqual(t, old.CertificateID, now.CertificateID)
	require.Equal(t, rec.CertificateID, now.CertificateID)
	require.Equal(t, os.FileMode(0o600), fileMode(t, st.Path(now.KeyFile)))
	_, err := st.TLSCertificate(now)
	require.NoError(t, err)
	c.connectedWith(now.CertificateID)

	// The old pair is gone from the device (the idle state is persisted
	// first, then the old files go) and from the cloud.
	require.Eventually(t, func() bool {
		_, err := os.Stat(st.Path(old.KeyFile))
		return errors.Is(err, os.ErrNotExist)
	}, 30*time.Second, 20*time.Millisecond, "the old key is removed")
	c.settled(now.CertificateID)
	_, ok := c.cert(old.CertificateID)
	require.False(t, ok)
	c.mu.Lock()
	require.Equal(t, []string{"INACTIVE"}, c.statusAtUpdate[old.CertificateID], "deactivated before it was deleted")
	c.mu.Unlock()

	// The confirmation came over the new certificate.
	require.Eventually(t, func() bool { return slices.Contains(c.outcomes(), "confirm:completed") }, 30*time.Second, 20*time.Millisecond)

	// A replayed CSR (same message again) creates nothing.
	var csr certrotate.Event
	for _, r := range c.s.Rotation.Records() {
		if r.Event.Kind == certrotate.KindCSR {
			csr = r.Event
		}
	}
	res, err := c.s.Rotation.Invoke(c.ctx, csr)
	require.NoError(t, err)
	require.Equal(t, "ignored", res.Outcome)
	require.Len(t, c.deviceCerts(), 1)
	require.Len(t, c.s.IoT.CallsOf("CreateCertificateFromCsr"), 1)

	// A second rotation works from the rotated identity.
	id2 := c.request()
	require.NotEqual(t, id, id2)
	require.Equal(t, registry.RotationCompleted, c.waitFinished(id2).LastRotationStatus)
	d.waitIdle(id2)
	require.NotEqual(t, now.CertificateID, d.identity().CertificateID)
	c.settled(d.identity().CertificateID)
}

// The new certificate is refused at connect: the device falls back to the
// old pair, reports the failure, and the cloud keeps the old certificate
// and deletes the new one.
func TestRefusedCertificateFallsBack(t *testing.T) {
	c := newCloud(t)
	d, _, old := provisioned(t, c, rotation.Config{SwitchTimeout: 2 * time.Second})
	c.refuseNew.Store(true)

	id := c.request()
	rec := c.waitFinished(id)
	require.Equal(t, registry.RotationFailed, rec.LastRotationStatus)
	require.Equal(t, old.CertificateID, rec.CertificateID)
	dst := d.waitIdle(id)
	require.Equal(t, protocol.RotateFailed, dst.LastStatus)
	require.Contains(t, dst.LastReason, "no connection with the new certificate")

	require.Equal(t, old, d.identity())
	c.connectedWith(old.CertificateID)
	c.settled(old.CertificateID) // the refused certificate is deleted
	oc, ok := c.cert(old.CertificateID)
	require.True(t, ok)
	require.Equal(t, simregistry.CertActive, oc.Status)
	// The device did try the new certificate and was refused.
	refused := false
	for _, rec := range c.connects() {
		if !rec.Accepted && rec.CertID != old.CertificateID {
			refused = true
		}
	}
	require.True(t, refused)
	// The rotation's key and certificate files are removed (after the
	// idle state is persisted).
	require.Eventually(t, func() bool {
		_, err := os.Stat(d.store().Path("certs/rotation-" + id + ".key"))
		return errors.Is(err, os.ErrNotExist)
	}, 30*time.Second, 20*time.Millisecond, "the rotation's key is removed")
}

// No certificate arrives: the device gives up after CertTimeout without
// ever switching, and the cloud deletes the certificate it had issued.
func TestNoCertificateFallsBack(t *testing.T) {
	c := newCloud(t)
	d, _, old := provisioned(t, c, rotation.Config{CertTimeout: 2 * time.Second})
	c.dropCerts()
	id := c.request()
	require.Equal(t, registry.RotationFailed, c.waitFinished(id).LastRotationStatus)
	require.Contains(t, d.waitIdle(id).LastReason, "no certificate within")
	require.Equal(t, old, d.identity())
	c.settled(old.CertificateID)
	connects := c.connects()
	require.NotEmpty(t, connects)
	for _, rec := range connects {
		require.Equal(t, old.CertificateID, rec.CertID, "never tried another certificate")
	}
}

// A repeated request for a finished rotation makes the device report the
// outcome again (the cloud may have missed it); nothing else changes.
func TestRepeatedRequestReportsOutcome(t *testing.T) {
	c := newCloud(t)
	d, _, _ := provisioned(t, c, rotation.Config{})
	id := c.request()
	c.waitFinished(id)
	d.waitIdle(id)
	now := d.identity()
	// The completing invocation has returned.
	require.Eventually(t, func() bool { return slices.Contains(c.outcomes(), "confirm:completed") }, 30*time.Second, 20*time.Millisecond)
	n := len(c.outcomes())
	msg := []byte(`{"rotationId":"` + id + `","ts":1}`)
	c.s.Core.Publish(protocol.CommandTopic(thing, protocol.KindRotateRequest), msg)
	require.Eventually(t, func() bool { return len(c.outcomes()) > n }, 30*time.Second, 20*time.Millisecond)
	require.Equal(t, "confirm:replay", c.outcomes()[n])
	require.Equal(t, now, d.identity())
	c.settled(now.CertificateID)
}

// kill point: a step and whether the new certificate has connected.
type killPoint struct {
	step         rotation.Step
	newConnected bool
	refuse       bool // the new certificate is refused (fallback path)
}

// Crash at every persisted step: the agent is stopped right after the
// step's state write (nothing of the following steps runs) and a new
// agent starts on the same state directory. The rotation then completes
// (or falls back) and the device always ends with a working certificate
// that the cloud accepts.
func TestCrashAtEveryStep(t *testing.T) {
	points := []killPoint{
		{step: rotation.StepCSR},
		{step: rotation.StepCert},
		{step: rotation.StepSwitched},
		{step: rotation.StepSwitched, newConnected: true},
		{step: rotation.StepIdle},
		{step: rotation.StepCSR, refuse: true},
		{step: rotation.StepSwitched, refuse: true},
		{step: rotation.StepFallback, refuse: true},
		{step: rotation.StepIdle, refuse: true},
	}
	for _, kp := range points {
		name := string(kp.step)
		if name == "" {
			name = "idle"
		}
		if kp.newConnected {
			name += "-connected"
		}
		if kp.refuse {
			name += "-refused"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := newCloud(t)
			killed := make(chan struct{})
			fired := false
			rc := rotation.Config{SwitchTimeout: 3 * time.Second, CertTimeout: 20 * time.Second,
				AfterPersist: func(ctx context.Context, st rotation.State) {
					if fired || st.Step != kp.step || st.NewConnected != kp.newConnected || (kp.step == rotation.StepIdle && st.LastID == "") {
						return
					}
					fired = true
					close(killed)
					<-ctx.Done() // frozen until the "process" dies
				}}
			d, r, old := provisioned(t, c, rc)
			c.refuseNew.Store(kp.refuse)
			id := c.request()
			select {
			case <-killed:
			case <-time.After(60 * time.Second):
				t.Fatalf("never reached step %q", kp.step)
			}
			r.stop()
			d.start(rotation.Config{SwitchTimeout: 3 * time.Second, CertTimeout: 20 * time.Second}, false)

			rec := c.waitFinished(id)
			dst := d.waitIdle(id)
			now := d.identity()
			if kp.refuse {
				require.Equal(t, registry.RotationFailed, rec.LastRotationStatus)
				require.Equal(t, protocol.RotateFailed, dst.LastStatus)
				require.Equal(t, old, now)
			} else {
				require.Equal(t, registry.RotationCompleted, rec.LastRotationStatus)
				require.Equal(t, protocol.RotateConfirmed, dst.LastStatus)
				require.NotEqual(t, old.CertificateID, now.CertificateID)
			}
			require.Equal(t, rec.CertificateID, now.CertificateID)
			c.connectedWith(now.CertificateID)
			c.settled(now.CertificateID)
		})
	}
}

// The device is revoked and re-admitted while a rotation waits for its
// certificate: the agent re-provisions by claim, and the rotation, whose
// old pair is gone, ends as failed without touching the new identity.
func TestRotationOvertakenByARecoveryIsVoided(t *testing.T) {
	c := newCloud(t)
	d, _, old := provisioned(t, c, rotation.Config{CertTimeout: 3 * time.Second})
	c.dropCerts()
	id := c.request()
	require.Eventually(t, func() bool { return d.state().Step == rotation.StepCSR }, 30*time.Second, 20*time.Millisecond)
	newKey := d.state().New.KeyFile

	// Re-admitted (a new key may provision), then its certificate revoked,
	// which closes its connection.
	_, err := c.s.DeployAllowlist(c.ctx, []byte(serial+" readmit=T1\n"))
	require.NoError(t, err)
	require.NoError(t, c.s.Core.SetCertificateStatus(old.CertificateID, simregistry.CertRevoked))

	dst := d.waitIdle(id)
	require.Equal(t, protocol.RotateFailed, dst.LastStatus)
	require.Contains(t, dst.LastReason, "identity replaced by a re-provisioning")
	now := d.identity()
	require.NotEqual(t, old.CertificateID, now.CertificateID)
	_, err = d.store().TLSCertificate(now)
	require.NoError(t, err)
	c.connectedWith(now.CertificateID)
	// The idle state is persisted first, then the unused files go.
	require.Eventually(t, func() bool {
		_, err := os.Stat(d.store().Path(newKey))
		return errors.Is(err, os.ErrNotExist)
	}, 30*time.Second, 20*time.Millisecond, "the rotation's key is removed")
}
