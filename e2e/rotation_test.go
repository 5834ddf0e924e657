package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/rotation"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/sim/faults"
	simreg "github.com/iot-fleet/iot-fleet/sim/registry"
)

// startRotatingAgent starts an agent whose rotation waits are shortened:
// switchTimeout bounds the wait for a connection with a new certificate.
func startRotatingAgent(t *testing.T, f *harness.Fleet, name, serial string, switchTimeout time.Duration) *harness.Agent {
	t.Helper()
	a, err := f.NewAgent(name, harness.AgentOptions{Serial: serial, Configure: func(c *config.Config) {
		c.Rotation.CertTimeout = config.Duration(30 * time.Second)
		c.Rotation.SwitchTimeout = config.Duration(switchTimeout)
	}})
	require.NoError(t, err)
	keepRunning(t, name, a, 60)
	return a
}

// requestRotation asks thing to rotate, as the operator command does, and
// returns the rotation id.
func requestRotation(t *testing.T, ctx context.Context, f *harness.Fleet, thing string) string {
	t.Helper()
	rep, err := f.Stack.RequestRotation(ctx, certscan.Request{ThingName: thing})
	require.NoError(t, err)
	require.Contains(t, rep.Requested, thing, "report: %+v", rep)
	return rep.Requested[thing]
}

func identity(t *testing.T, a *harness.Agent) store.Identity {
	t.Helper()
	id, found, err := a.Identity()
	require.NoError(t, err)
	require.True(t, found)
	return id
}

func rotationState(t *testing.T, a *harness.Agent) rotation.State {
	t.Helper()
	st, err := store.Open(a.StateDir)
	require.NoError(t, err)
	var s rotation.State
	_, err = st.ReadJSON(rotation.StateFile, &s)
	require.NoError(t, err)
	return s
}

// waitDeviceFinished waits until the device has finished rotation id and
// removed the files it no longer uses (it does so once the cloud
// acknowledged its outcome).
func waitDeviceFinished(t *testing.T, ctx context.Context, a *harness.Agent, id string, unused ...string) rotation.State {
	t.Helper()
	var st rotation.State
	require.NoError(t, harness.Poll(ctx, "device finished rotation "+id, func() bool {
		st = rotationState(t, a)
		if st.Step != rotation.StepIdle || st.LastID != id {
			return false
		}
		for _, f := range unused {
			if _, err := os.Stat(filepath.Join(a.StateDir, f)); !errors.Is(err, os.ErrNotExist) {
				return false
			}
		}
		return true
	}), "state %+v", st)
	return st
}

// connectedWith waits until thing is connected with certificate certID.
func connectedWith(t *testing.T, ctx context.Context, f *harness.Fleet, thing, certID string) {
	t.Helper()
	require.NoError(t, harness.Poll(ctx, thing+" connected with "+certID, func() bool {
		for _, c := range f.Stack.Core.Clients() {
			if c.ClientID == thing && c.CertificateID == certID {
				return true
			}
		}
		return false
	}))
}

// requireRotated checks the end state of a completed rotation from old:
// the device uses the new pair (key 0600, old files removed), the registry
// records the new certificate and its expiry, the old certificate is gone
// from AWS IoT and the new one is the thing's only principal, and the
// device is connected with it.
func requireRotated(t *testing.T, ctx context.Context, f *harness.Fleet, a *harness.Agent, old store.Identity, d registry.Device) store.Identity {
	t.Helper()
	require.Equal(t, registry.RotationCompleted, d.LastRotationStatus, "%+v", d)
	require.Empty(t, d.RotationID)
	require.NotEqual(t, old.CertificateID, d.CertificateID)
	require.Equal(t, old.CertificateID, d.RetiredCertificateID)

	waitDeviceFinished(t, ctx, a, d.LastRotationID, old.KeyFile, old.CertFile)
	now := identity(t, a)
	require.Equal(t, d.CertificateID, now.CertificateID)
	require.NotEqual(t, old.KeyFile, now.KeyFile, "a new key, made on the device")
	fi, err := os.Stat(filepath.Join(a.StateDir, now.KeyFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	for _, f := range []string{old.KeyFile, old.CertFile} {
		_, err := os.Stat(filepath.Join(a.StateDir, f))
		require.True(t, errors.Is(err, os.ErrNotExist), "old %s removed: %v", f, err)
	}

	iotReg := f.Stack.Core.Registry()
	_, err = iotReg.Certificate(old.CertificateID)
	require.ErrorIs(t, err, simreg.ErrNotFound, "the old certificate is deleted")
	cert, err := iotReg.Certificate(d.CertificateID)
	require.NoError(t, err)
	require.Equal(t, simreg.CertActive, cert.Status)
	require.True(t, cert.NotAfter.Equal(d.CertNotAfter), "registry notAfter %v, certificate %v", d.CertNotAfter, cert.NotAfter)
	th, err := iotReg.Thing(a.ThingName())
	require.NoError(t, err)
	require.Equal(t, []string{d.CertificateID}, th.Principals)

	connectedWith(t, ctx, f, a.ThingName(), d.CertificateID)
	st := rotationState(t, a)
	require.Equal(t, rotation.StepIdle, st.Step)
	require.Equal(t, d.LastRotationID, st.LastID)
	require.Equal(t, protocol.RotateConfirmed, st.LastStatus)
	return now
}

// issuedCerts lists the certificates the rotation Lambda created.
type issuedCerts struct {
	mu  sync.Mutex
	ids []string
}

func (c *issuedCerts) IDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids)
}

// deactivateIssued makes each certificate the rotation Lambda issues
// INACTIVE (AWS IoT then refuses its connections) until the test ends or
// OnIssue is reset, and records their ids. A rotation may create more
// than one certificate: a device re-sends its CSR after a reconnect, and
// concurrent invocations each create one; the Lambda retires every one
// but the one the registry records.
func deactivateIssued(t *testing.T, f *harness.Fleet) *issuedCerts {
	c := &issuedCerts{}
	f.Stack.Rotation.OnIssue(func(certID string) {
		if err := f.Stack.Core.SetCertificateStatus(certID, simreg.CertInactive); err != nil {
			t.Errorf("deactivate %s: %v", certID, err)
		}
		c.mu.Lock()
		c.ids = append(c.ids, certID)
		c.mu.Unlock()
	})
	t.Cleanup(func() { f.Stack.Rotation.OnIssue(nil) })
	return c
}

// requireOnlyRecordedCertificate waits until, of the certificates the
// rotation Lambda created, only keep (if not empty) still exists: no
// extra certificate is left behind.
func requireOnlyRecordedCertificate(t *testing.T, ctx context.Context, f *harness.Fleet, issued []string, keep string) {
	t.Helper()
	require.NoError(t, harness.Poll(ctx, "only the recorded rotation certificate left", func() bool {
		for _, id := range issued {
			_, err := f.Stack.Core.Registry().Certificate(id)
			if (id == keep) != (err == nil) {
				return false
			}
		}
		return true
	}), "issued %v, recorded %q", issued, keep)
}

func TestRotateOneDevice(t *testing.T) {
	f := startFleet(t, serialA, serialB)
	a := startRotatingAgent(t, f, "a", serialA, 20*time.Second)
	b := startRotatingAgent(t, f, "b", serialB, 20*time.Second)
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	require.NoError(t, b.WaitConnected(ctx), b.LogTail(30))
	old, oldB := identity(t, a), identity(t, b)
	rec, err := f.Stack.Registry.Get(ctx, serialA)
	require.NoError(t, err)
	require.False(t, rec.CertNotAfter.IsZero(), "the hook recorded the provisioned certificate's expiry")

	id := requestRotation(t, ctx, f, a.ThingName())
	d, err := f.Stack.WaitRotation(ctx, serialA, id)
	require.NoError(t, err)
	requireRotated(t, ctx, f, a, old, d)

	// The other device was not touched.
	require.Equal(t, oldB, identity(t, b))
	connectedWith(t, ctx, f, b.ThingName(), oldB.CertificateID)

	// The rotation Lambda saw one CSR and one confirmation, sent with the
	// new certificate.
	var outcomes []string
	for _, r := range f.Stack.Rotation.Records() {
		require.Empty(t, r.Err)
		outcomes = append(outcomes, r.Event.Kind+":"+r.Result.Outcome)
		if r.Event.Kind == certrotate.KindConfirm {
			require.Equal(t, d.CertificateID, r.Event.Principal)
		}
	}
	require.Equal(t, []string{"csr:issued", "confirm:completed"}, outcomes)

	// The device keeps working with the new certificate across a restart.
	require.NoError(t, a.Stop(10*time.Second))
	require.NoError(t, a.Start())
	connectedWith(t, ctx, f, a.ThingName(), d.CertificateID)
}

func TestRotateGroup(t *testing.T) {
	serials := []string{serialA, serialB, serialC}
	f := startFleet(t, serials...)
	ctx := waitCtx(t, 2*time.Minute)
	agents := map[string]*harness.Agent{}
	olds := map[string]store.Identity{}
	for i, sn := range serials {
		agents[sn] = startRotatingAgent(t, f, fmt.Sprintf("d%d", i), sn, 20*time.Second)
	}
	for sn, a := range agents {
		require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
		olds[sn] = identity(t, a)
	}

	rep, err := f.Stack.RequestRotation(ctx, certscan.Request{ThingGroup: f.Stack.Core.Names().ThingGroup})
	require.NoError(t, err)
	require.Len(t, rep.Requested, 3, "report: %+v", rep)
	for sn, a := range agents {
		id := rep.Requested[a.ThingName()]
		require.NotEmpty(t, id)
		d, err := f.Stack.WaitRotation(ctx, sn, id)
		require.NoError(t, err)
		requireRotated(t, ctx, f, a, olds[sn], d)
	}
}

func TestRotationWithRefusedCertificateFallsBack(t *testing.T) {
	f := startFleet(t, serialA)
	a := startRotatingAgent(t, f, "a", serialA, 3*time.Second)
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	old := identity(t, a)

	// The new certificate does not work: AWS IoT refuses its connections.
	refused := deactivateIssued(t, f)
	id := requestRotation(t, ctx, f, a.ThingName())
	d, err := f.Stack.WaitRotation(ctx, serialA, id)
	require.NoError(t, err)
	f.Stack.Rotation.OnIssue(nil)
	newID := d.RetiredCertificateID

	require.Equal(t, registry.RotationFailed, d.LastRotationStatus, "%+v", d)
	require.Equal(t, old.CertificateID, d.CertificateID, "the registry keeps the old certificate")
	require.Contains(t, refused.IDs(), newID, "the refused certificate is retired")
	requireOnlyRecordedCertificate(t, ctx, f, refused.IDs(), "")
	// Refused as AWS IoT Core refuses: closed after CONNECT, no CONNACK.
	require.Contains(t, a.Log(), mqttconn.ReasonClosedConnect, "the device tried the new certificate and was refused")
	require.Contains(t, a.Log(), "rotation failed, back on the old certificate")

	// The old certificate stays active and in use; the refused one is gone.
	cert, err := f.Stack.Core.Registry().Certificate(old.CertificateID)
	require.NoError(t, err)
	require.Equal(t, simreg.CertActive, cert.Status)
	_, err = f.Stack.Core.Registry().Certificate(newID)
	require.ErrorIs(t, err, simreg.ErrNotFound)
	require.Equal(t, old, identity(t, a))
	connectedWith(t, ctx, f, a.ThingName(), old.CertificateID)
	st := waitDeviceFinished(t, ctx, a, id)
	require.Equal(t, protocol.RotateFailed, st.LastStatus)

	// The next rotation, with a working certificate, succeeds.
	id2 := requestRotation(t, ctx, f, a.ThingName())
	require.NotEqual(t, id, id2)
	d, err = f.Stack.WaitRotation(ctx, serialA, id2)
	require.NoError(t, err)
	requireRotated(t, ctx, f, a, old, d)
}

// pahoAsDevice connects to the local IoT Core as the device, with its
// current key and certificate from its state directory.
func pahoAsDevice(t *testing.T, f *harness.Fleet, a *harness.Agent) paho.Client {
	t.Helper()
	id := identity(t, a)
	pair, err := tls.LoadX509KeyPair(filepath.Join(a.StateDir, id.CertFile), filepath.Join(a.StateDir, id.KeyFile))
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(f.Stack.Core.RootCAPEM()))
	opts := paho.NewClientOptions().AddBroker("ssl://" + f.Stack.Core.Endpoint()).SetClientID(a.ThingName()).
		SetTLSConfig(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
	c := paho.NewClient(opts)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second), "connect timed out")
	require.NoError(t, tok.Error())
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func TestReplayedCSRCreatesNoSecondCertificate(t *testing.T) {
	f := startFleet(t, serialA)
	a := startRotatingAgent(t, f, "a", serialA, 20*time.Second)
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	old := identity(t, a)
	id := requestRotation(t, ctx, f, a.ThingName())
	d, err := f.Stack.WaitRotation(ctx, serialA, id)
	require.NoError(t, err)
	requireRotated(t, ctx, f, a, old, d)

	var csr certrotate.Event
	for _, r := range f.Stack.Rotation.Records() {
		if r.Event.Kind == certrotate.KindCSR {
			csr = r.Event
		}
	}
	require.Equal(t, id, csr.RotationID)
	certs := len(f.Stack.Core.Registry().Certificates())
	before := len(f.Stack.Rotation.Records())

	// The captured CSR message is published again from the device's own
	// connection (the agent is stopped so the client id is free).
	require.NoError(t, a.Stop(10*time.Second))
	c := pahoAsDevice(t, f, a)
	payload, err := json.Marshal(protocol.RotateCSR{RotationID: csr.RotationID, CSR: csr.CSR, Timestamp: time.Now().Unix()})
	require.NoError(t, err)
	tok := c.Publish(protocol.DataTopic(a.ThingName(), protocol.KindRotateCSR), 1, false, payload)
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())

	require.NoError(t, harness.Poll(ctx, "the replay handled", func() bool { return len(f.Stack.Rotation.Records()) > before }))
	last := f.Stack.Rotation.Records()[before]
	require.Equal(t, certrotate.KindCSR, last.Event.Kind)
	require.Equal(t, d.CertificateID, last.Event.Principal)
	require.Equal(t, certrotate.OutcomeIgnored, last.Result.Outcome)
	require.Contains(t, last.Result.Reason, "replayed")
	require.Len(t, f.Stack.Core.Registry().Certificates(), certs, "no second certificate")
	th, err := f.Stack.Core.Registry().Thing(a.ThingName())
	require.NoError(t, err)
	require.Equal(t, []string{d.CertificateID}, th.Principals)
	after, err := f.Stack.Registry.Get(ctx, serialA)
	require.NoError(t, err)
	require.Equal(t, d.CertificateID, after.CertificateID)
	require.Empty(t, after.RotationID)
}

// A rotation request that reaches the agent before its on-connect hooks
// ran (the status publish first, then the rotation feature's) gets one
// CSR: the rotation does not send it again for the connection it was
// acknowledged on, so the cloud creates one certificate, not a second one
// it must retire.
func TestRotationRequestedRightAfterConnectSendsOneCSR(t *testing.T) {
	f := startFleet(t, serialA)
	// The broker holds the agent's first status message: until its PUBACK
	// the agent's on-connect hooks wait (and so does every message the
	// agent publishes after it on that connection, the CSR included).
	_, err := f.Stack.Core.Faults().Add(faults.Rule{Topic: protocol.DataTopic(f.ThingName(serialA), protocol.KindStatus),
		Direction: faults.Inbound, Delay: 3 * time.Second, Count: 1})
	require.NoError(t, err)
	// The certificate comes late too, so the hooks are done by then.
	_, err = f.Stack.Core.Faults().Add(faults.Rule{Topic: protocol.CommandTopic(f.ThingName(serialA), protocol.KindRotateCert),
		Direction: faults.Outbound, Delay: 3 * time.Second, Count: 1})
	require.NoError(t, err)
	issued := &issuedCerts{}
	f.Stack.Rotation.OnIssue(func(certID string) {
		issued.mu.Lock()
		issued.ids = append(issued.ids, certID)
		issued.mu.Unlock()
	})
	t.Cleanup(func() { f.Stack.Rotation.OnIssue(nil) })
	a := startRotatingAgent(t, f, "a", serialA, 20*time.Second)
	ctx := waitCtx(t, 90*time.Second)
	// The agent logs "ready" once its subscriptions are acknowledged; its
	// status message is still held.
	require.NoError(t, a.WaitLog(ctx, "fleet-agent ready"))
	old := identity(t, a)

	id := requestRotation(t, ctx, f, a.ThingName())
	d, err := f.Stack.WaitRotation(ctx, serialA, id)
	require.NoError(t, err)
	requireRotated(t, ctx, f, a, old, d)
	var outcomes []string
	for _, r := range f.Stack.Rotation.Records() {
		outcomes = append(outcomes, r.Event.Kind+":"+r.Result.Outcome)
	}
	require.Equal(t, []string{"csr:issued", "confirm:completed"}, outcomes, "one CSR, one confirmation")
	require.Equal(t, []string{d.CertificateID}, issued.IDs(), "one certificate created")
}

func TestKill9MidRotationThenRestart(t *testing.T) {
	t.Run("certificate issued, answer lost", func(t *testing.T) {
		// Killed while waiting for the certificate: the restarted agent
		// re-sends the same CSR and gets the same certificate.
		f := startFleet(t, serialA)
		a := startRotatingAgent(t, f, "a", serialA, 20*time.Second)
		ctx := waitCtx(t, 90*time.Second)
		require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
		old := identity(t, a)
		drop, err := f.Stack.Core.Faults().Add(faults.Rule{Topic: protocol.CommandTopic(a.ThingName(), protocol.KindRotateCert),
			Direction: faults.Outbound, Drop: true})
		require.NoError(t, err)
		id := requestRotation(t, ctx, f, a.ThingName())
		// Wait for the rotation Lambda to have finished with the CSR: it
		// records the certificate in the registry before it sends it, so
		// the registry's "issued" alone does not mean the answer was sent
		// (and dropped). An answer sent after the drop rule is removed
		// would wait in the device's persistent session and reach the
		// restarted agent: nothing would be lost.
		require.NoError(t, harness.Poll(ctx, "certificate issued and its answer dropped", func() bool {
			for _, r := range f.Stack.Rotation.Records() {
				if r.Event.Kind == certrotate.KindCSR && r.Event.RotationID == id && r.Result.Outcome == certrotate.OutcomeIssued {
					return true
				}
			}
			return false
		}))
		d, err := f.Stack.Registry.Get(ctx, serialA)
		require.NoError(t, err)
		require.Equal(t, registry.RotationIssued, d.RotationState)
		require.Equal(t, rotation.StepCSR, rotationState(t, a).Step)

		require.NoError(t, a.Kill())
		require.True(t, f.Stack.Core.Faults().Remove(drop))
		require.NoError(t, a.Start())
		d, err = f.Stack.WaitRotation(ctx, serialA, id)
		require.NoError(t, err)
		requireRotated(t, ctx, f, a, old, d)
		var outcomes []string
		for _, r := range f.Stack.Rotation.Records() {
			outcomes = append(outcomes, r.Event.Kind+":"+r.Result.Outcome)
		}
		require.Contains(t, outcomes, "csr:resent", "the second CSR got the certificate already issued")
	})

	t.Run("switched to the new certificate, not yet connected", func(t *testing.T) {
		// Killed after the new pair was stored and identity.json switched,
		// before any connection with it: after the restart the device
		// tries the new certificate again and completes.
		f := startFleet(t, serialA)
		a := startRotatingAgent(t, f, "a", serialA, 20*time.Second)
		ctx := waitCtx(t, 90*time.Second)
		require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
		old := identity(t, a)
		deactivateIssued(t, f)
		id := requestRotation(t, ctx, f, a.ThingName())
		require.NoError(t, harness.Poll(ctx, "switched", func() bool { return rotationState(t, a).Step == rotation.StepSwitched }))
		st := rotationState(t, a)
		require.False(t, st.NewConnected)
		require.Equal(t, st.New, identity(t, a), "identity.json names the new pair")

		require.NoError(t, a.Kill())
		f.Stack.Rotation.OnIssue(nil)
		rec, err := f.Stack.Registry.Get(ctx, serialA)
		require.NoError(t, err)
		require.Equal(t, st.New.CertificateID, rec.RotationCertID)
		require.NoError(t, f.Stack.Core.SetCertificateStatus(rec.RotationCertID, simreg.CertActive))
		require.NoError(t, a.Start())
		d, err := f.Stack.WaitRotation(ctx, serialA, id)
		require.NoError(t, err)
		requireRotated(t, ctx, f, a, old, d)
	})
}
