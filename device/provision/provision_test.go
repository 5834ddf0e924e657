package provision

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/devkey"
	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/core"
	"github.com/iot-fleet/iot-fleet/sim/faults"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

const serial = "10000000abcdef01"

type fixture struct {
	t     *testing.T
	b     *core.Core
	claim core.Credentials
	// claim certificate and key files
	claimCert, claimKey string
	dir                 string
	logs                *testenv.LogBuffer
	mu                  sync.Mutex
	sleeps              []time.Duration
	alg                 devkey.Algorithm
	// counts of the provisioning requests the cloud received
	csrs, registers func() int
}

// cloudOptions configure the fixture's local IoT Core.
type cloudOptions struct {
	// Allow, when set, decides before the stack's real pre-provisioning
	// hook: false denies the serial, true asks the real hook.
	Allow func(serial string) bool
}

// newFixture starts the local IoT Core (sim/core: MQTT over mutual TLS,
// the fleet provisioning template, the stack's real pre-provisioning hook
// with serial on the allowlist) and a claim certificate.
func newFixture(t *testing.T, o cloudOptions) *fixture {
	t.Helper()
	c, err := core.Start(context.Background(), core.Options{AllowedSerials: []string{serial}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	if o.Allow != nil {
		devicetest.DenyUnless(c, o.Allow)
	}
	claimDir := t.TempDir()
	claim := devicetest.WriteClaimFiles(t, c, claimDir)
	f := &fixture{t: t, b: c, claim: claim, dir: t.TempDir(), logs: &testenv.LogBuffer{}, alg: devkey.ECDSAP256}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("device logs:\n%s", f.logs.String())
		}
	})
	var stop func()
	f.csrs, stop, err = c.Count(protocol.CreateCertFromCSRTopic)
	require.NoError(t, err)
	t.Cleanup(stop)
	f.registers, stop, err = c.Count(protocol.RegisterThingTopic(c.Names().TemplateName))
	require.NoError(t, err)
	t.Cleanup(stop)
	f.claimCert, f.claimKey = filepath.Join(claimDir, devicetest.ClaimCertFile), filepath.Join(claimDir, devicetest.ClaimKeyFile)
	return f
}

// dropNext makes the cloud lose the next request on topic (answer false:
// the request never arrives) or the answer to it (answer true: the cloud
// acts on the request, the device never hears of it). The channel closes
// once the message was dropped.
func (f *fixture) dropNext(topic string, answer bool) <-chan struct{} {
	f.t.Helper()
	r := faults.Rule{Topic: topic, Direction: faults.Inbound, Drop: true, Count: 1}
	if answer {
		r.Topic, r.Direction = protocol.Accepted(topic), faults.Outbound
	}
	id, err := f.b.Faults().Add(r)
	require.NoError(f.t, err)
	return f.b.Faults().Gone(id)
}

func (f *fixture) registerTopic() string {
	return protocol.RegisterThingTopic(f.b.Names().TemplateName)
}

// deviceCerts returns the certificates of the registry but the claim.
func (f *fixture) deviceCerts() []registry.Certificate {
	return slices.DeleteFunc(f.b.Registry().Certificates(), func(c registry.Certificate) bool { return c.ID == f.claim.CertificateID })
}

// provisioner builds a fresh Provisioner on the fixture's state directory,
// as the agent does after a restart.
func (f *fixture) provisioner() *Provisioner {
	f.t.Helper()
	st, err := store.Open(f.dir)
	require.NoError(f.t, err)
	p, err := New(Options{
		Store: st, Address: f.b.Endpoint(), ServerName: "127.0.0.1", RootCAPEM: f.b.RootCAPEM(),
		ClaimCertFile: f.claimCert, ClaimKeyFile: f.claimKey,
		TemplateName: f.b.Names().TemplateName, Serial: serial, KeyAlgorithm: f.alg,
		ResponseTimeout: 5 * time.Second, ConnectTimeout: 5 * time.Second,
		Retry:  backoff.Policy{Initial: time.Millisecond, Max: 10 * time.Millisecond},
		Denied: backoff.Policy{Initial: 42 * time.Minute, Max: 42 * time.Minute},
		Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Sleep: func(ctx context.Context, d time.Duration) error {
			f.mu.Lock()
			f.sleeps = append(f.sleeps, d)
			f.mu.Unlock()
			return backoff.Sleep(ctx, min(d, 5*time.Millisecond))
		},
	})
	require.NoError(f.t, err)
	return p
}

func (f *fixture) state() State {
	f.t.Helper()
	var st State
	data, err := os.ReadFile(filepath.Join(f.dir, store.ProvisionFile))
	require.NoError(f.t, err)
	require.NoError(f.t, jsonUnmarshal(data, &st))
	return st
}

func (f *fixture) keyPEM() []byte {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, KeyFile))
	require.NoError(f.t, err)
	return b
}

// cancelAfter returns a Sleep that records each wait in f.sleeps without
// waiting, and calls cancel at the nth recorded wait.
func (f *fixture) cancelAfter(n int, cancel context.CancelFunc) func(context.Context, time.Duration) error {
	return func(ctx context.Context, d time.Duration) error {
		f.mu.Lock()
		f.sleeps = append(f.sleeps, d)
		k := len(f.sleeps)
		f.mu.Unlock()
		if k == n {
			cancel()
		}
		return ctx.Err()
	}
}

func ctxTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx, cancel
}

// runUntilKilled runs a provisioner and cancels it (the "kill") when killAt
// fires, returning once Run has returned.
func (f *fixture) runUntilKilled(killAt <-chan struct{}) {
	f.t.Helper()
	ctx, cancel := ctxTimeout(f.t, 30*time.Second)
	errc := make(chan error, 1)
	go func() { _, err := f.provisioner().Run(ctx); errc <- err }()
	select {
	case <-killAt:
	case err := <-errc:
		f.t.Fatalf("provisioning ended before the kill point: %v", err)
	}
	cancel()
	require.ErrorIs(f.t, <-errc, context.Canceled)
}

func (f *fixture) runToCompletion() store.Identity {
	f.t.Helper()
	ctx, _ := ctxTimeout(f.t, 30*time.Second)
	id, err := f.provisioner().Run(ctx)
	require.NoError(f.t, err)
	return id
}

// checkProvisioned verifies the device's identity end to end: the thing is
// registered, its certificate ACTIVE, the files belong together, the key is
// 0600 and no provisioning state is left.
func (f *fixture) checkProvisioned(id store.Identity) {
	f.t.Helper()
	assert.Equal(f.t, "dev-"+serial, id.ThingName)
	th, err := f.b.Registry().Thing(id.ThingName)
	require.NoError(f.t, err)
	assert.Equal(f.t, serial, th.Attributes["serial"])
	var active []registry.Certificate
	for _, c := range f.deviceCerts() {
		if c.Status == registry.CertActive {
			active = append(active, c)
		}
	}
	require.Len(f.t, active, 1)
	assert.Equal(f.t, id.CertificateID, active[0].ID)
	assert.Equal(f.t, []string{id.ThingName}, active[0].Things)
	st, err := store.Open(f.dir)
	require.NoError(f.t, err)
	got, found, err := st.Identity()
	require.NoError(f.t, err)
	require.True(f.t, found)
	assert.Equal(f.t, id.ThingName, got.ThingName)
	_, err = st.TLSCertificate(got)
	require.NoError(f.t, err)
	fi, err := os.Stat(st.Path(got.KeyFile))
	require.NoError(f.t, err)
	assert.Equal(f.t, os.FileMode(0o600), fi.Mode().Perm())
	_, err = os.Stat(filepath.Join(f.dir, store.ProvisionFile))
	assert.ErrorIs(f.t, err, os.ErrNotExist)
	// The key never appears in the logs, nor does the ownership token.
	keyPEM := f.keyPEM()
	block, _ := pem.Decode(keyPEM)
	require.NotNil(f.t, block)
	logs := f.logs.String()
	assert.NotContains(f.t, logs, "PRIVATE KEY")
	for _, line := range strings.Split(string(keyPEM), "\n") {
		if len(line) > 20 {
			assert.NotContains(f.t, logs, line)
		}
	}
}

func TestProvisionHappyPath(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	requests, stop, err := f.b.Watch("$aws/#")
	require.NoError(t, err)
	t.Cleanup(stop)
	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, 1, f.csrs())
	assert.Equal(t, 1, f.registers())
	// The claim connection used the provisioning client id.
	for range 2 {
		select {
		case m := <-requests:
			assert.Equal(t, protocol.ClaimClientID(serial), m.ClientID, m.Topic)
		case <-time.After(10 * time.Second):
			t.Fatal("provisioning requests not seen")
		}
	}

	// Provisioned: a new run returns the identity without connecting (the
	// broker is down: a connection attempt would never end).
	f.b.StopBroker()
	again := f.runToCompletion()
	assert.Equal(t, id.ThingName, again.ThingName)
}

func TestProvisionRSAKey(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	f.alg = devkey.RSA2048
	id := f.runToCompletion()
	f.checkProvisioned(id)
	block, _ := pem.Decode(f.keyPEM())
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)
	require.IsType(t, &rsa.PrivateKey{}, k)
	assert.Equal(t, 2048, k.(*rsa.PrivateKey).N.BitLen())
}

func TestKilledAfterKeyResumesWithSameKey(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	// The CSR is lost on the way; the device is killed while waiting.
	f.runUntilKilled(f.dropNext(protocol.CreateCertFromCSRTopic, false))
	st := f.state()
	assert.Equal(t, StepKey, st.Step)
	key1 := f.keyPEM()

	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, key1, f.keyPEM(), "the persisted key is reused, not replaced")
	assert.Equal(t, 1, f.csrs(), "the lost CSR never arrived; the resumed one did")
}

func TestKilledAfterCertificateResumesWithRegisterThing(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	f.runUntilKilled(f.dropNext(f.registerTopic(), false))
	st := f.state()
	require.Equal(t, StepCertificate, st.Step)
	assert.NotEmpty(t, st.Token)
	assert.FileExists(t, filepath.Join(f.dir, CertFile))

	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, st.CertificateID, id.CertificateID, "no new certificate was needed")
	assert.Equal(t, 1, f.csrs())
	// The lost request never arrived; the resumed one did (on a loaded
	// machine it may time out once and be retried with the same token,
	// which is the behaviour under test).
	assert.GreaterOrEqual(t, f.registers(), 1)
	assert.Len(t, f.deviceCerts(), 1, "no certificate leaked")
}

// tokenRefusal is AWS IoT's answer to an ownership token that expired
// (the local IoT Core gives it after its token lifetime, too long to wait
// for here): InvalidCertificateOwnershipToken, which sends the device back
// to a new CSR with the same key.
var tokenRefusal = faults.Rejection{StatusCode: 400, ErrorCode: protocol.ErrCodeInvalidToken, ErrorMessage: "certificateOwnershipToken expired", Count: 1}

func TestRegisteredButAnswerLostResumes(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	// The cloud registers the thing but the answer never reaches the device.
	f.runUntilKilled(f.dropNext(f.registerTopic(), true))
	first := f.state()
	require.Equal(t, StepCertificate, first.Step)
	key1 := f.keyPEM()
	// The token was consumed by the lost registration: the local IoT Core
	// itself refuses it (InvalidCertificateOwnershipToken), as AWS does.
	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, key1, f.keyPEM(), "the persisted key is reused")
	assert.Equal(t, 2, f.csrs())
	// The stack's pre-provisioning hook retired the certificate of the
	// lost registration (same key, same serial): one usable certificate.
	old, err := f.b.Registry().Certificate(first.CertificateID)
	if err == nil {
		assert.NotEqual(t, registry.CertActive, old.Status, "the first certificate is retired")
	}
}

func TestExpiredTokenFallsBackToNewCSRWithSameKey(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	f.runUntilKilled(f.dropNext(f.registerTopic(), false))
	first := f.state()
	key1 := f.keyPEM()
	// The cloud no longer accepts the token.
	refusal := tokenRefusal
	refusal.Topic = f.registerTopic()
	require.NoError(t, f.b.Faults().RejectRequests(refusal))

	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.NotEqual(t, first.CertificateID, id.CertificateID)
	assert.Equal(t, key1, f.keyPEM())
	assert.Equal(t, 2, f.csrs())
	assert.GreaterOrEqual(t, f.registers(), 2, "the refused token, then the new one")
	assert.Contains(t, f.logs.String(), protocol.ErrCodeInvalidToken)
}

func TestOldPersistedTokenIsNotUsed(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	f.runUntilKilled(f.dropNext(f.registerTopic(), false))
	st := f.state()
	st.TokenIssuedAt = time.Now().Add(-time.Hour)
	s, err := store.Open(f.dir)
	require.NoError(t, err)
	require.NoError(t, s.WriteJSON(store.ProvisionFile, st))

	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, 2, f.csrs())
	assert.Equal(t, 1, f.registers(), "the stale token was not sent (the first request was lost)")
}

func TestThrottlingRetriesWithShortBackoff(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	require.NoError(t, f.b.Faults().RejectRequests(faults.Rejection{Topic: protocol.CreateCertFromCSRTopic, StatusCode: 429, ErrorCode: protocol.ErrCodeThrottling, ErrorMessage: "Rate exceeded", Count: 2}))
	require.NoError(t, f.b.Faults().RejectRequests(faults.Rejection{Topic: f.registerTopic(), StatusCode: 500, ErrorCode: protocol.ErrCodeInternalError, ErrorMessage: "oops", Count: 1}))
	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, 3, f.csrs())
	assert.Equal(t, 2, f.registers())
	require.Len(t, f.sleeps, 3)
	for _, d := range f.sleeps {
		assert.LessOrEqual(t, d, 10*time.Millisecond)
	}
	assert.Contains(t, f.logs.String(), "Throttling")
	assert.Contains(t, f.logs.String(), "Rate exceeded")
}

func TestDeniedBacksOffLongAndNeverHotLoops(t *testing.T) {
	allowed := make(chan bool, 1)
	allowed <- false
	f := newFixture(t, cloudOptions{Allow: func(string) bool {
		v := <-allowed
		allowed <- true // allowed from the second attempt on
		return v
	}})
	id := f.runToCompletion()
	f.checkProvisioned(id)
	require.Len(t, f.sleeps, 1)
	assertLong(t, f.sleeps[0])
	assert.Contains(t, f.logs.String(), "AccessDenied")
	assert.Contains(t, f.logs.String(), "hook denied the request")
}

func TestMalformedRequestBacksOffLong(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	f.b.Faults().RefuseCSRs(1) // InvalidCSR (400)
	id := f.runToCompletion()
	f.checkProvisioned(id)
	require.Len(t, f.sleeps, 1)
	assertLong(t, f.sleeps[0])
}

// assertLong checks a jittered denial wait of the fixture's 42-minute
// policy.
func assertLong(t *testing.T, d time.Duration) {
	t.Helper()
	assert.GreaterOrEqual(t, d, 21*time.Minute)
	assert.LessOrEqual(t, d, 42*time.Minute)
}

func TestDenialLoopIsBounded(t *testing.T) {
	// A device that stays denied keeps waiting deniedBackoff between
	// attempts: every wait it asks for is the long one.
	f := newFixture(t, cloudOptions{Allow: func(string) bool { return false }})
	ctx, cancel := ctxTimeout(t, 30*time.Second)
	p := f.provisioner()
	p.o.Sleep = f.cancelAfter(3, cancel)
	_, err := p.Run(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, f.sleeps, 3)
	for _, d := range f.sleeps {
		assertLong(t, d)
	}
	assert.GreaterOrEqual(t, f.registers(), 3)
	_, statErr := os.Stat(filepath.Join(f.dir, store.IdentityFile))
	assert.ErrorIs(t, statErr, os.ErrNotExist)
}

func TestExistingIdentityIsNeverTouched(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	id := f.runToCompletion()
	before, err := os.ReadFile(filepath.Join(f.dir, store.IdentityFile))
	require.NoError(t, err)
	key := f.keyPEM()
	// Even with a stray provisioning state lying around.
	s, err := store.Open(f.dir)
	require.NoError(t, err)
	require.NoError(t, s.WriteJSON(store.ProvisionFile, State{Step: StepKey, Serial: serial, KeyFile: KeyFile}))
	again := f.runToCompletion()
	assert.Equal(t, id.ThingName, again.ThingName)
	after, err := os.ReadFile(filepath.Join(f.dir, store.IdentityFile))
	require.NoError(t, err)
	assert.Equal(t, before, after)
	assert.Equal(t, key, f.keyPEM())
	assert.Equal(t, 1, f.csrs())
}

func TestSerialMismatchIsRefused(t *testing.T) {
	f := newFixture(t, cloudOptions{})
	s, err := store.Open(f.dir)
	require.NoError(t, err)
	require.NoError(t, s.WriteJSON(store.ProvisionFile, State{Step: StepKey, Serial: "ffffffffffffffff", KeyFile: KeyFile}))
	ctx, cancel := ctxTimeout(t, 30*time.Second)
	p := f.provisioner()
	p.o.Sleep = func(context.Context, time.Duration) error { cancel(); return context.Canceled }
	_, err = p.Run(ctx)
	require.Error(t, err)
	assert.Contains(t, f.logs.String(), "was started for serial")
}

func TestNewValidates(t *testing.T) {
	s, err := store.Open(t.TempDir())
	require.NoError(t, err)
	good := Options{Store: s, Address: "h:1", TemplateName: "t", Serial: serial, ClaimCertFile: "c", ClaimKeyFile: "k", KeyAlgorithm: devkey.ECDSAP256}
	_, err = New(good)
	require.NoError(t, err)
	for name, mut := range map[string]func(*Options){
		"Store":         func(o *Options) { o.Store = nil },
		"Address":       func(o *Options) { o.Address = "" },
		"TemplateName":  func(o *Options) { o.TemplateName = "" },
		"Serial":        func(o *Options) { o.Serial = "" },
		"claim":         func(o *Options) { o.ClaimKeyFile = "" },
		"key algorithm": func(o *Options) { o.KeyAlgorithm = "x" },
	} {
		o := good
		mut(&o)
		_, err := New(o)
		assert.ErrorContains(t, err, name)
	}
}
