package agent

import (
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/provision"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

const waitFor = 30 * time.Second

func identityOf(t *testing.T, cfg config.Config) store.Identity {
	t.Helper()
	st, err := store.Open(cfg.StateDir)
	require.NoError(t, err)
	id, found, err := st.Identity()
	require.NoError(t, err)
	require.True(t, found)
	_, err = st.TLSCertificate(id)
	require.NoError(t, err, "identity.json names a usable key pair")
	return id
}

func exists(t *testing.T, cfg config.Config, rel string) bool {
	st, err := store.Open(cfg.StateDir)
	require.NoError(t, err)
	_, err = os.Stat(st.Path(rel))
	return err == nil
}

// refusedConnects counts the refused CONNECTs made with certificate certID.
func refusedConnects(b *cloud, certID string) int {
	n := 0
	for _, c := range b.log.list() {
		if c.CertificateID == certID && !c.Accepted {
			n++
		}
	}
	return n
}

// recoveredTo reports whether the agent finished a recovery from old to id
// and is connected with id.
func recoveredTo(t *testing.T, cfg config.Config, b *cloud, old, id store.Identity) bool {
	return id.CertificateID != old.CertificateID && !exists(t, cfg, store.ProvisionFile) &&
		b.principalOf(id.ThingName) == id.CertificateID
}

// runAgent runs an agent until the returned stop is called, without
// waiting for it to be ready.
func runAgent(t *testing.T, cfg config.Config, logs *testenv.LogBuffer, features ...FeatureFactory) (*Agent, func()) {
	t.Helper()
	opts := testOptions(cfg, logs, features)
	opts.Notify = (&notifications{}).notify
	opts.WatchdogInterval = func() (time.Duration, error) { return 0, nil }
	a, errc, cancel := launch(t, opts)
	return a, stopper(t, cancel, errc)
}

// The operator revoked the device (its serial left the allowlist) and
// re-admitted it: the broker refuses the old certificate, the agent
// provisions a new key and certificate by claim by itself, and its
// features keep working on the new connection.
func TestRefusedCertificateIsReplacedByClaim(t *testing.T) {
	b := startCloud(t, cloudOptions{})
	cfg := testConfig(t, b)
	echoes := b.watch("dt/fleet/+/echo")
	logs := &testenv.LogBuffer{}
	feat := &echoFeature{stopped: make(chan struct{})}
	startAgent(t, cfg, logs, &notifications{}, func(*Runtime) (Feature, error) { return feat, nil })
	thing := "dev-" + serial
	old := identityOf(t, cfg)
	csrs := b.csrs()

	b.refuse(old, registry.CertRevoked) // the broker closes the connection

	var id store.Identity
	require.Eventually(t, func() bool {
		id = identityOf(t, cfg)
		return recoveredTo(t, cfg, b, old, id) && strings.Contains(logs.String(), "identity recovered with a new certificate")
	}, waitFor, 10*time.Millisecond, logs.String())

	assert.Equal(t, thing, id.ThingName)
	assert.NotEqual(t, old.KeyFile, id.KeyFile, "a new key made on the device")
	assert.False(t, exists(t, cfg, old.KeyFile), "the old key is removed once the new certificate connected")
	assert.False(t, exists(t, cfg, old.CertFile))
	assert.False(t, exists(t, cfg, store.ProvisionFile))
	assert.Equal(t, csrs+1, b.csrs())
	// The threshold (3 refusals) plus the recovery's own check.
	assert.GreaterOrEqual(t, refusedConnects(b, old.CertificateID), cfg.Provisioning.RecoverAfterRefusals+1)

	b.Publish(protocol.CommandTopic(thing, "echo"), []byte("after recovery"))
	assert.Equal(t, "after recovery", string(next(t, echoes).Payload))
	assert.NotContains(t, logs.String(), "PRIVATE KEY")
}

// A broker that is down is not a refusal: the agent keeps its identity,
// never asks for a new certificate and reconnects with it.
func TestBrokerOutageDoesNotReprovision(t *testing.T) {
	b := startCloud(t, cloudOptions{})
	cfg := testConfig(t, b)
	logs := &testenv.LogBuffer{}
	startAgent(t, cfg, logs, &notifications{})
	thing := "dev-" + serial
	old := identityOf(t, cfg)
	csrs := b.csrs()

	b.StopBroker()
	require.Eventually(t, func() bool {
		return strings.Count(logs.String(), "mqtt connect failed") >= 4*cfg.Provisioning.RecoverAfterRefusals
	}, waitFor, 10*time.Millisecond)
	require.NoError(t, b.StartBroker())
	require.Eventually(t, func() bool { return b.principalOf(thing) == old.CertificateID }, waitFor, 10*time.Millisecond, logs.String())

	assert.Equal(t, old, identityOf(t, cfg))
	assert.Equal(t, csrs, b.csrs())
	assert.False(t, exists(t, cfg, store.ProvisionFile))
	assert.NotContains(t, logs.String(), "the broker refused the device certificate")
}

// A revoked device whose serial is not re-admitted is denied: it backs off
// (exponentially, persisted), the schedule survives a restart, and it
// recovers once admitted again.
func TestDeniedRecoveryBacksOffAcrossRestarts(t *testing.T) {
	var allowed atomic.Bool
	allowed.Store(true)
	b := startCloud(t, cloudOptions{Allow: func(string) bool { return allowed.Load() }})
	cfg := testConfig(t, b)
	cfg.Provisioning.DeniedBackoff = config.Duration(time.Hour)
	cfg.Provisioning.DeniedBackoffMin = config.Duration(300 * time.Millisecond)
	logs := &testenv.LogBuffer{}
	_, stop := startAgent(t, cfg, logs, &notifications{})
	old := identityOf(t, cfg)

	allowed.Store(false)
	b.refuse(old, registry.CertRevoked) // the broker closes the connection
	require.Eventually(t, func() bool {
		return strings.Count(logs.String(), "provisioning refused; backing off") >= 2
	}, waitFor, 10*time.Millisecond, logs.String())
	stop()

	st, err := store.Open(cfg.StateDir)
	require.NoError(t, err)
	var r provision.Retry
	found, err := st.ReadJSON(provision.RetryFile, &r)
	require.NoError(t, err)
	require.True(t, found)
	assert.GreaterOrEqual(t, r.Denials, 2)
	assert.Contains(t, r.LastError, "AccessDenied")
	assert.Equal(t, old, identityOf(t, cfg), "the old identity is kept while denied")
	registers := b.registers()
	// Each attempt made one RegisterThing: no hot loop.
	assert.LessOrEqual(t, registers, 1+r.Denials)

	// Restart (a crash-looping unit): the agent resumes the recovery and
	// first waits for the rest of the persisted backoff.
	allowed.Store(true)
	logs2 := &testenv.LogBuffer{}
	runAgent(t, cfg, logs2)
	require.Eventually(t, func() bool {
		return recoveredTo(t, cfg, b, old, identityOf(t, cfg)) && !exists(t, cfg, provision.RetryFile)
	}, waitFor, 10*time.Millisecond, logs2.String())
	out := logs2.String()
	wait := strings.Index(out, "waiting for the next provisioning attempt (persisted backoff)")
	require.GreaterOrEqual(t, wait, 0, out)
	assert.Less(t, wait, strings.Index(out, "refuses the current certificate"), "no attempt before the backoff ended")
}

// Killed while the cloud registered the new certificate but before the
// answer arrived: the old identity is still on disk and named by
// identity.json, and the restarted agent completes the recovery.
func TestKilledMidRecoveryKeepsAUsableIdentity(t *testing.T) {
	b := startCloud(t, cloudOptions{})
	cfg := testConfig(t, b)
	logs := &testenv.LogBuffer{}
	_, stop := startAgent(t, cfg, logs, &notifications{})
	old := identityOf(t, cfg)

	registered := b.dropNextAnswer(protocol.RegisterThingTopic(b.Names().TemplateName))
	b.refuse(old, registry.CertRevoked) // the broker closes the connection
	select {
	case <-registered:
	case <-time.After(waitFor):
		t.Fatal("no RegisterThing")
	}
	stop() // the "power cut" while waiting for the lost answer

	assert.Equal(t, old, identityOf(t, cfg))
	assert.True(t, exists(t, cfg, old.KeyFile))
	assert.True(t, exists(t, cfg, store.ProvisionFile))

	// The lost registration consumed the ownership token: the local IoT
	// Core refuses it (InvalidCertificateOwnershipToken, as AWS does), and
	// the agent asks again for the same key.
	logs2 := &testenv.LogBuffer{}
	runAgent(t, cfg, logs2)
	require.Eventually(t, func() bool {
		return recoveredTo(t, cfg, b, old, identityOf(t, cfg))
	}, waitFor, 10*time.Millisecond, logs2.String())
	assert.False(t, exists(t, cfg, old.KeyFile))
	assert.False(t, exists(t, cfg, store.ProvisionFile))
}

// While a certificate rotation tries its new certificate, refusals are the
// rotation's business (it falls back by itself): no recovery starts.
func TestRefusalsDuringARotationSwitchAreNotCounted(t *testing.T) {
	st, err := store.Open(t.TempDir())
	require.NoError(t, err)
	d := newRefusalDetector(2, st, slog.New(slog.DiscardHandler))
	refused := &refusedErr{}
	require.NoError(t, st.WriteJSON(rotationStateFile, map[string]any{"step": "switched"}))
	for i := 0; i < 5; i++ {
		d.attempt(refused)
	}
	assert.Empty(t, d.trigger)
	require.NoError(t, st.WriteJSON(rotationStateFile, map[string]any{"step": "switched", "newConnected": true}))
	d.attempt(refused)
	d.attempt(assert.AnError) // a network failure neither counts nor resets
	assert.Empty(t, d.trigger)
	d.attempt(refused)
	assert.Len(t, d.trigger, 1)
	d.reset()
	d.attempt(refused)
	d.attempt(nil) // a connection resets the count
	d.attempt(refused)
	assert.Empty(t, d.trigger)
}

type refusedErr = mqttconn.RefusedError

// A recovery that cannot run (here the serial became unreadable) does not
// stop the agent: it waits, tries again, and recovers once it can.
func TestRecoveryImpossibleWaitsAndRetries(t *testing.T) {
	b := startCloud(t, cloudOptions{})
	cfg := testConfig(t, b)
	logs := &testenv.LogBuffer{}
	startAgent(t, cfg, logs, &notifications{})
	old := identityOf(t, cfg)
	serialFile := cfg.Provisioning.SerialFiles[1]
	require.NoError(t, os.Rename(serialFile, serialFile+".away"))

	b.refuse(old, registry.CertRevoked) // the broker closes the connection
	require.Eventually(t, func() bool {
		return strings.Count(logs.String(), "recovery failed; reconnecting with the current identity later") >= 2
	}, waitFor, 10*time.Millisecond, logs.String())
	assert.Equal(t, old, identityOf(t, cfg))

	require.NoError(t, os.Rename(serialFile+".away", serialFile))
	require.Eventually(t, func() bool {
		return recoveredTo(t, cfg, b, old, identityOf(t, cfg))
	}, waitFor, 10*time.Millisecond, logs.String())
}
