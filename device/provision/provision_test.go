package provision

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/devkey"
	"github.com/iot-fleet/iot-fleet/device/internal/testbroker"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

const serial = "10000000abcdef01"

type fixture struct {
	t      *testing.T
	b      *testbroker.Broker
	dir    string
	logs   *testenv.LogBuffer
	mu     sync.Mutex
	sleeps []time.Duration
	alg    devkey.Algorithm
}

func newFixture(t *testing.T, bo testbroker.Options) *fixture {
	return &fixture{t: t, b: testbroker.Start(t, bo), dir: t.TempDir(), logs: &testenv.LogBuffer{}, alg: devkey.ECDSAP256}
}

// provisioner builds a fresh Provisioner on the fixture's state directory,
// as the agent does after a restart.
func (f *fixture) provisioner() *Provisioner {
	f.t.Helper()
	st, err := store.Open(f.dir)
	require.NoError(f.t, err)
	ca, err := os.ReadFile(f.b.CAFile)
	require.NoError(f.t, err)
	p, err := New(Options{
		Store: st, Address: f.b.Addr, ServerName: "127.0.0.1", RootCAPEM: ca,
		ClaimCertFile: f.b.Claim.CertFile, ClaimKeyFile: f.b.Claim.KeyFile,
		TemplateName: f.b.TemplateName(), Serial: serial, KeyAlgorithm: f.alg,
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
	s, ok := f.b.Thing(id.ThingName)
	require.True(f.t, ok)
	assert.Equal(f.t, serial, s)
	var active []testbroker.Cert
	for _, c := range f.b.Certs() {
		if c.Status == testbroker.StatusActive {
			active = append(active, c)
		}
	}
	require.Len(f.t, active, 1)
	assert.Equal(f.t, id.CertificateID, active[0].ID)
	assert.Equal(f.t, id.ThingName, active[0].Thing)
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
	f := newFixture(t, testbroker.Options{})
	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, 1, f.b.Requests(testbroker.APICreateCertFromCSR))
	assert.Equal(t, 1, f.b.Requests(testbroker.APIRegisterThing))
	// The claim connection used the provisioning client id.
	var ids []string
	for _, c := range f.b.Connects() {
		ids = append(ids, c.ClientID)
	}
	assert.Equal(t, []string{protocol.ClaimClientID(serial)}, ids)

	// Provisioned: a new run returns the identity without connecting.
	again := f.runToCompletion()
	assert.Equal(t, id.ThingName, again.ThingName)
	assert.Len(t, f.b.Connects(), 1)
}

func TestProvisionRSAKey(t *testing.T) {
	f := newFixture(t, testbroker.Options{})
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
	f := newFixture(t, testbroker.Options{})
	// The CSR is lost on the way; the device is killed while waiting.
	f.runUntilKilled(f.b.DropNext(testbroker.APICreateCertFromCSR, false))
	st := f.state()
	assert.Equal(t, StepKey, st.Step)
	key1 := f.keyPEM()

	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, key1, f.keyPEM(), "the persisted key is reused, not replaced")
	assert.Equal(t, 2, f.b.Requests(testbroker.APICreateCertFromCSR))
}

func TestKilledAfterCertificateResumesWithRegisterThing(t *testing.T) {
	f := newFixture(t, testbroker.Options{})
	f.runUntilKilled(f.b.DropNext(testbroker.APIRegisterThing, false))
	st := f.state()
	require.Equal(t, StepCertificate, st.Step)
	assert.NotEmpty(t, st.Token)
	assert.FileExists(t, filepath.Join(f.dir, CertFile))

	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, st.CertificateID, id.CertificateID, "no new certificate was needed")
	assert.Equal(t, 1, f.b.Requests(testbroker.APICreateCertFromCSR))
	// At least the lost request and the resumed one; on a loaded machine
	// the resumed one may time out once (the old session's takeover) and
	// be retried with the same token, which is the behaviour under test.
	assert.GreaterOrEqual(t, f.b.Requests(testbroker.APIRegisterThing), 2)
	assert.Len(t, f.b.Certs(), 1, "no certificate leaked")
}

func TestRegisteredButAnswerLostResumes(t *testing.T) {
	f := newFixture(t, testbroker.Options{})
	// The cloud registers the thing but the answer never reaches the device.
	f.runUntilKilled(f.b.DropNext(testbroker.APIRegisterThing, true))
	require.Equal(t, StepCertificate, f.state().Step)
	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Len(t, f.b.Certs(), 1)
}

func TestExpiredTokenFallsBackToNewCSRWithSameKey(t *testing.T) {
	f := newFixture(t, testbroker.Options{})
	f.runUntilKilled(f.b.DropNext(testbroker.APIRegisterThing, false))
	first := f.state()
	key1 := f.keyPEM()
	f.b.ExpireTokens() // the cloud no longer accepts the token

	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.NotEqual(t, first.CertificateID, id.CertificateID)
	assert.Equal(t, key1, f.keyPEM())
	assert.Equal(t, 2, f.b.Requests(testbroker.APICreateCertFromCSR))
	assert.GreaterOrEqual(t, f.b.Requests(testbroker.APIRegisterThing), 3)
	assert.Contains(t, f.logs.String(), "InvalidRequest")
}

func TestOldPersistedTokenIsNotUsed(t *testing.T) {
	f := newFixture(t, testbroker.Options{})
	f.runUntilKilled(f.b.DropNext(testbroker.APIRegisterThing, false))
	st := f.state()
	st.TokenIssuedAt = time.Now().Add(-time.Hour)
	s, err := store.Open(f.dir)
	require.NoError(t, err)
	require.NoError(t, s.WriteJSON(store.ProvisionFile, st))

	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, 2, f.b.Requests(testbroker.APICreateCertFromCSR))
	assert.Equal(t, 2, f.b.Requests(testbroker.APIRegisterThing), "the stale token was not sent")
}

func TestThrottlingRetriesWithShortBackoff(t *testing.T) {
	f := newFixture(t, testbroker.Options{})
	f.b.RejectNext(testbroker.APICreateCertFromCSR, protocol.ErrorResponse{StatusCode: 429, ErrorCode: protocol.ErrCodeThrottling, ErrorMessage: "Rate exceeded"}, 2)
	f.b.RejectNext(testbroker.APIRegisterThing, protocol.ErrorResponse{StatusCode: 500, ErrorCode: protocol.ErrCodeInternalError, ErrorMessage: "oops"}, 1)
	id := f.runToCompletion()
	f.checkProvisioned(id)
	assert.Equal(t, 3, f.b.Requests(testbroker.APICreateCertFromCSR))
	assert.Equal(t, 2, f.b.Requests(testbroker.APIRegisterThing))
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
	f := newFixture(t, testbroker.Options{Allow: func(string) bool {
		v := <-allowed
		allowed <- true // allowed from the second attempt on
		return v
	}})
	id := f.runToCompletion()
	f.checkProvisioned(id)
	require.Len(t, f.sleeps, 1)
	assertLong(t, f.sleeps[0])
	assert.Contains(t, f.logs.String(), "AccessDenied")
	assert.Contains(t, f.logs.String(), "Pre provisioning hook denied")
}

func TestMalformedRequestBacksOffLong(t *testing.T) {
	f := newFixture(t, testbroker.Options{})
	f.b.RejectNext(testbroker.APICreateCertFromCSR, protocol.ErrorResponse{StatusCode: 400, ErrorCode: protocol.ErrCodeInvalidPayload, ErrorMessage: "bad csr"}, 1)
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
	f := newFixture(t, testbroker.Options{Allow: func(string) bool { return false }})
	ctx, cancel := ctxTimeout(t, 30*time.Second)
	p := f.provisioner()
	p.o.Sleep = f.cancelAfter(3, cancel)
	_, err := p.Run(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, f.sleeps, 3)
	for _, d := range f.sleeps {
		assertLong(t, d)
	}
	assert.GreaterOrEqual(t, f.b.Requests(testbroker.APIRegisterThing), 3)
	_, statErr := os.Stat(filepath.Join(f.dir, store.IdentityFile))
	assert.ErrorIs(t, statErr, os.ErrNotExist)
}

func TestExistingIdentityIsNeverTouched(t *testing.T) {
	f := newFixture(t, testbroker.Options{})
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
	assert.Equal(t, 1, f.b.Requests(testbroker.APICreateCertFromCSR))
}

func TestSerialMismatchIsRefused(t *testing.T) {
	f := newFixture(t, testbroker.Options{})
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
