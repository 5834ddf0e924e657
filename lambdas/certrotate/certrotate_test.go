package certrotate_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate/certrotatetest"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
	"github.com/iot-fleet/iot-fleet/lambdas/preprovision"
	"github.com/iot-fleet/iot-fleet/sim/iottest"
)

const (
	policy = "iot-fleet-dev-device"
	group  = "iot-fleet-dev"
	serial = "10000000a1b2c3d4"
	thing  = "dev-" + serial
)

type fixture struct {
	t       *testing.T
	ctx     context.Context
	iot     *lambdatest.SimIoT
	reg     registry.Store
	h       *certrotate.Handler
	oldID   string
	oldKey  string // the old certificate's public key hash
	oldPriv *ecdsa.PrivateKey
	logs    *testenv.LogBuffer
	// statusAtUpdate is the old certificate's status after each
	// UpdateCertificate of it.
	statusAtUpdate []iottypes.CertificateStatus
}

// newFixture provisions serial as fleet provisioning would (active
// certificate attached to the thing and the device policy, registry record
// with its expiry and key hash) and starts rotation r1.
func newFixture(t *testing.T, reg registry.Store) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	f := &fixture{t: t, ctx: ctx, iot: lambdatest.NewSimIoT(t, policy, group), reg: reg, logs: &testenv.LogBuffer{}}
	oldPriv, oldPEM := selfSigned(t, time.Now().Add(20*24*time.Hour))
	f.oldPriv = oldPriv
	f.oldID = f.iot.AddDevice(t, thing, group, policy, oldPEM)
	f.oldKey = certrotatetest.KeyHash(t, oldPEM)
	require.NoError(t, reg.PutAllowed(ctx, serial))
	_, err := reg.RecordProvisioned(ctx, serial, thing, registry.Certificate{ID: f.oldID, NotAfter: time.Now().Add(20 * 24 * time.Hour), PublicKeySHA256: f.oldKey})
	require.NoError(t, err)
	f.iot.Srv.IoT.AfterEach(func(op, key string) {
		if op == "UpdateCertificate" && key == f.oldID {
			c, _ := f.iot.Cert(f.oldID)
			f.statusAtUpdate = append(f.statusAtUpdate, c.Status)
		}
	})
	_, err = reg.RequestRotation(ctx, serial, "r1", time.Hour)
	require.NoError(t, err)
	f.h, err = certrotate.New(certrotate.Config{
		IoT: f.iot.Client, Data: f.iot.Data, Registry: reg, DevicePolicy: policy, ThingNamePrefix: "dev-",
		RetryDelay: time.Millisecond,
		Logger:     slog.New(slog.NewJSONHandler(f.logs, nil)),
	})
	require.NoError(t, err)
	return f
}

func selfSigned(t *testing.T, notAfter time.Time) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: thing},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func newCSR(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: thing}}, key)
	require.NoError(t, err)
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func csrEvent(rotationID, csr, principal string) certrotate.Event {
	return certrotate.Event{ThingName: thing, Kind: certrotate.KindCSR, ClientID: thing, Principal: principal, RotationID: rotationID, CSR: csr}
}

func confirmEvent(rotationID, certID, status, principal string) certrotate.Event {
	return certrotate.Event{ThingName: thing, Kind: certrotate.KindConfirm, ClientID: thing, Principal: principal,
		RotationID: rotationID, CertificateID: certID, Status: status}
}

func (f *fixture) handle(ev certrotate.Event) certrotate.Result {
	f.t.Helper()
	res, err := f.h.Handle(f.ctx, ev)
	require.NoError(f.t, err)
	return res
}

func (f *fixture) device() registry.Device {
	f.t.Helper()
	d, err := f.reg.Get(f.ctx, serial)
	require.NoError(f.t, err)
	return d
}

// certMessages decodes the RotateCert messages sent to the device.
func (f *fixture) certMessages() []protocol.RotateCert {
	f.t.Helper()
	var out []protocol.RotateCert
	for _, m := range f.iot.Messages() {
		require.Equal(f.t, protocol.CommandTopic(thing, protocol.KindRotateCert), m.Topic)
		require.EqualValues(f.t, 1, m.QoS)
		var rc protocol.RotateCert
		require.NoError(f.t, json.Unmarshal(m.Payload, &rc))
		out = append(out, rc)
	}
	return out
}

func TestRotationCompletes(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		key, csr := newCSR(t)

		res := f.handle(csrEvent("r1", csr, f.oldID))
		require.Equal(t, certrotate.OutcomeIssued, res.Outcome)
		newID := res.CertificateID
		msgs := f.certMessages()
		require.Len(t, msgs, 1)
		require.Equal(t, "r1", msgs[0].RotationID)
		require.Equal(t, newID, msgs[0].CertificateID)
		require.Empty(t, msgs[0].ErrorCode)
		block, _ := pem.Decode([]byte(msgs[0].CertificatePEM))
		leaf, err := x509.ParseCertificate(block.Bytes)
		require.NoError(t, err)
		require.True(t, key.PublicKey.Equal(leaf.PublicKey), "the certificate is for the device's new key")

		c, ok := f.iot.Cert(newID)
		require.True(t, ok)
		require.Equal(t, iottypes.CertificateStatusActive, c.Status)
		require.True(t, f.iot.PolicyAttached(policy, newID))
		require.ElementsMatch(t, []string{f.oldID, newID}, f.iot.Principals(thing))
		d := f.device()
		require.Equal(t, registry.RotationIssued, d.RotationState)
		require.Equal(t, newID, d.RotationCertID)
		require.True(t, leaf.NotAfter.Equal(d.RotationCertNotAfter))
		require.Equal(t, f.oldID, d.CertificateID)

		// A duplicate CSR gets the same certificate again, no new one.
		res = f.handle(csrEvent("r1", csr, f.oldID))
		require.Equal(t, certrotate.OutcomeResent, res.Outcome)
		require.Equal(t, 1, f.iot.CallCount("CreateCertificateFromCsr"))
		require.Len(t, f.certMessages(), 2)
		require.Equal(t, newID, f.certMessages()[1].CertificateID)

		// A confirmation that did not come over the new certificate
		// changes nothing; nor does one for another rotation.
		res = f.handle(confirmEvent("r1", newID, protocol.RotateConfirmed, f.oldID))
		require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
		res = f.handle(confirmEvent("r2", newID, protocol.RotateConfirmed, newID))
		require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
		_, ok = f.iot.Cert(f.oldID)
		require.True(t, ok, "old certificate kept until confirmed")

		res = f.handle(confirmEvent("r1", newID, protocol.RotateConfirmed, newID))
		require.Equal(t, certrotate.OutcomeCompleted, res.Outcome)
		_, ok = f.iot.Cert(f.oldID)
		require.False(t, ok, "old certificate deleted")
		require.False(t, f.iot.PolicyAttached(policy, f.oldID))
		require.Equal(t, []string{newID}, f.iot.Principals(thing))
		c, _ = f.iot.Cert(newID)
		require.Equal(t, iottypes.CertificateStatusActive, c.Status)
		d = f.device()
		require.Equal(t, newID, d.CertificateID)
		require.True(t, leaf.NotAfter.Equal(d.CertNotAfter))
		require.Equal(t, registry.RotationCompleted, d.LastRotationStatus)
		require.Empty(t, d.RotationID)
		// The registry knows the device's new key, and only it.
		newKey := certrotatetest.KeyHash(t, msgs[0].CertificatePEM)
		require.Equal(t, newKey, d.PublicKeySHA256)
		require.NotEqual(t, f.oldKey, d.PublicKeySHA256)
		require.Equal(t, newKey, res.PublicKeySHA256)

		// The old certificate was deactivated before it was deleted.
		calls := f.iot.Calls()
		deactivated := slices.Index(calls, "UpdateCertificate "+f.oldID)
		require.GreaterOrEqual(t, deactivated, 0, "%v", calls)
		require.Less(t, deactivated, slices.Index(calls, "DeleteCertificate "+f.oldID), "%v", calls)
		require.Equal(t, []iottypes.CertificateStatus{iottypes.CertificateStatusInactive}, f.statusAtUpdate)

		// Replays: the confirmation re-checks, the CSR creates nothing.
		res = f.handle(confirmEvent("r1", newID, protocol.RotateConfirmed, newID))
		require.Equal(t, certrotate.OutcomeReplay, res.Outcome)
		res = f.handle(csrEvent("r1", csr, newID))
		require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
		_, csr2 := newCSR(t)
		res = f.handle(csrEvent("r1", csr2, newID))
		require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
		require.Equal(t, 1, f.iot.CallCount("CreateCertificateFromCsr"))
		require.Len(t, f.iot.Certs(), 1)
	})
}

func TestRotationFailsKeepsOldCertificate(t *testing.T) {
	f := newFixture(t, registry.NewMemory())
	_, csr := newCSR(t)
	newID := f.handle(csrEvent("r1", csr, f.oldID)).CertificateID

	// A failure report sent with the new certificate is not trusted.
	res := f.handle(confirmEvent("r1", newID, protocol.RotateFailed, newID))
	require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
	_, ok := f.iot.Cert(newID)
	require.True(t, ok)

	ev := confirmEvent("r1", newID, protocol.RotateFailed, f.oldID)
	ev.Reason = "connect refused"
	res = f.handle(ev)
	require.Equal(t, certrotate.OutcomeFailed, res.Outcome)
	require.Equal(t, newID, res.CertificateID)
	_, ok = f.iot.Cert(newID)
	require.False(t, ok, "the refused certificate is deleted")
	old, ok := f.iot.Cert(f.oldID)
	require.True(t, ok)
	require.Equal(t, iottypes.CertificateStatusActive, old.Status)
	require.Equal(t, []string{f.oldID}, f.iot.Principals(thing))
	require.True(t, f.iot.PolicyAttached(policy, f.oldID))
	d := f.device()
	require.Equal(t, f.oldID, d.CertificateID)
	require.Equal(t, registry.RotationFailed, d.LastRotationStatus)

	// Replays change nothing; a late "connected" for it is ignored.
	require.Equal(t, certrotate.OutcomeReplay, f.handle(ev).Outcome)
	require.Equal(t, certrotate.OutcomeIgnored, f.handle(confirmEvent("r1", newID, protocol.RotateConfirmed, newID)).Outcome)
	_, ok = f.iot.Cert(f.oldID)
	require.True(t, ok)
}

// The device never got a certificate (timeout) and reports failure: no
// certificate to retire, the rotation ends.
func TestFailureBeforeIssue(t *testing.T) {
	f := newFixture(t, registry.NewMemory())
	res := f.handle(confirmEvent("r1", "", protocol.RotateFailed, f.oldID))
	require.Equal(t, certrotate.OutcomeFailed, res.Outcome)
	require.Empty(t, res.CertificateID)
	require.Len(t, f.iot.Certs(), 1)
	require.Empty(t, f.device().RotationID)
}

// The thing comes from the topic; a device cannot act on another's
// rotation, and a client id that is not the topic's thing is not trusted.
func TestThingNameFromTopicOnly(t *testing.T) {
	f := newFixture(t, registry.NewMemory())
	victimSerial := "10000000deadbeef"
	victim := "dev-" + victimSerial
	_, victimPEM := selfSigned(t, time.Now().Add(time.Hour))
	victimCert := f.iot.AddDevice(t, victim, group, policy, victimPEM)
	require.NoError(t, f.reg.PutAllowed(f.ctx, victimSerial))
	_, err := f.reg.RecordProvisioned(f.ctx, victimSerial, victim, registry.Certificate{ID: victimCert})
	require.NoError(t, err)
	_, err = f.reg.RequestRotation(f.ctx, victimSerial, "rv", 0)
	require.NoError(t, err)

	_, csr := newCSR(t)
	// Our device publishes on its own topic with the victim's rotation id.
	res := f.handle(csrEvent("rv", csr, f.oldID))
	require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
	// A client id that does not match the topic.
	ev := csrEvent("rv", csr, f.oldID)
	ev.ThingName = victim
	res = f.handle(ev)
	require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
	require.Contains(t, res.Reason, "client id")
	// A failure for the victim's rotation from our device's topic.
	res = f.handle(confirmEvent("rv", victimCert, protocol.RotateFailed, f.oldID))
	require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
	require.Equal(t, 0, f.iot.CallCount("CreateCertificateFromCsr"))
	require.Len(t, f.iot.Certs(), 2)
	d, err := f.reg.Get(f.ctx, victimSerial)
	require.NoError(t, err)
	require.Equal(t, "rv", d.RotationID)

	for _, ev := range []certrotate.Event{
		{Kind: certrotate.KindCSR, RotationID: "r1", CSR: csr},
		{ThingName: "other-" + serial, Kind: certrotate.KindCSR, RotationID: "r1", CSR: csr},
		{ThingName: thing, Kind: "bogus", RotationID: "r1"},
		{ThingName: thing, Kind: certrotate.KindCSR, CSR: csr},
		{ThingName: "dev-0000000000000000", Kind: certrotate.KindCSR, RotationID: "r1", CSR: csr},
	} {
		require.Equal(t, certrotate.OutcomeIgnored, f.handle(ev).Outcome, "%+v", ev)
	}
	require.Equal(t, 0, f.iot.CallCount("CreateCertificateFromCsr"))
}

func TestRefusesBadCSR(t *testing.T) {
	f := newFixture(t, registry.NewMemory())
	res := f.handle(csrEvent("r1", "not a csr", f.oldID))
	require.Equal(t, certrotate.OutcomeRefused, res.Outcome)
	msgs := f.certMessages()
	require.Len(t, msgs, 1)
	require.Equal(t, certrotate.ErrCodeInvalidCSR, msgs[0].ErrorCode)
	require.Empty(t, msgs[0].CertificatePEM)
	require.Equal(t, 0, f.iot.CallCount("CreateCertificateFromCsr"))

	// After a certificate was issued, a CSR for another key is refused.
	_, csr := newCSR(t)
	f.handle(csrEvent("r1", csr, f.oldID))
	_, other := newCSR(t)
	res = f.handle(csrEvent("r1", other, f.oldID))
	require.Equal(t, certrotate.OutcomeRefused, res.Outcome)
	require.Equal(t, certrotate.ErrCodeKeyMismatch, f.certMessages()[2].ErrorCode)
	require.Equal(t, 1, f.iot.CallCount("CreateCertificateFromCsr"))
}

// Throttling and partial failures: the handler returns an error (the
// Lambda's asynchronous retry runs it again) and a re-run finishes the
// work without creating a second certificate.
func TestPartialFailuresAreResumed(t *testing.T) {
	f := newFixture(t, registry.NewMemory())
	_, csr := newCSR(t)

	f.iot.FailNext("CreateCertificateFromCsr", "", iottest.Throttled())
	_, err := f.h.Handle(f.ctx, csrEvent("r1", csr, f.oldID))
	require.Error(t, err)
	require.Len(t, f.iot.Certs(), 1)

	f.iot.FailNext("AttachThingPrincipal", thing, iottest.Throttled())
	_, err = f.h.Handle(f.ctx, csrEvent("r1", csr, f.oldID))
	require.Error(t, err)
	require.Empty(t, f.certMessages(), "no certificate sent before it is attached")
	f.iot.FailNext("Publish", "", &iottypes.ServiceUnavailableException{Message: aws.String("Service unavailable")})
	_, err = f.h.Handle(f.ctx, csrEvent("r1", csr, f.oldID))
	require.Error(t, err)
	res := f.handle(csrEvent("r1", csr, f.oldID))
	require.Equal(t, certrotate.OutcomeResent, res.Outcome)
	newID := res.CertificateID
	require.Equal(t, 2, f.iot.CallCount("CreateCertificateFromCsr"), "one throttled, one created")
	require.Len(t, f.iot.Certs(), 2)
	require.ElementsMatch(t, []string{f.oldID, newID}, f.iot.Principals(thing))

	// Completion: detaching is throttled after the registry switched; the
	// replayed confirmation finishes retiring the old certificate. A
	// delete that still sees attachments is retried in place.
	f.iot.FailNext("DetachPolicy", iottest.CertARN(f.oldID), iottest.Throttled())
	_, err = f.h.Handle(f.ctx, confirmEvent("r1", newID, protocol.RotateConfirmed, newID))
	require.Error(t, err)
	require.Equal(t, newID, f.device().CertificateID)
	_, ok := f.iot.Cert(f.oldID)
	require.True(t, ok)
	f.iot.FailNext("DeleteCertificate", f.oldID, &iottypes.DeleteConflictException{Message: aws.String("still attached")})
	res = f.handle(confirmEvent("r1", newID, protocol.RotateConfirmed, newID))
	require.Equal(t, certrotate.OutcomeReplay, res.Outcome)
	_, ok = f.iot.Cert(f.oldID)
	require.False(t, ok)
	require.Equal(t, []string{newID}, f.iot.Principals(thing))
}

// Two invocations with the same CSR at once (a duplicate delivery) leave
// exactly one new certificate.
func TestConcurrentDuplicateCSR(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		_, csr := newCSR(t)
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := f.h.Handle(f.ctx, csrEvent("r1", csr, f.oldID))
				require.NoError(t, err)
			}()
		}
		wg.Wait()
		d := f.device()
		require.Equal(t, registry.RotationIssued, d.RotationState)
		certs := f.iot.Certs()
		require.Len(t, certs, 2, "old + exactly one new")
		require.ElementsMatch(t, []string{f.oldID, d.RotationCertID}, f.iot.Principals(thing))
		for _, m := range f.certMessages() {
			require.Equal(t, d.RotationCertID, m.CertificateID)
		}
	})
}

func TestNewValidates(t *testing.T) {
	_, err := certrotate.New(certrotate.Config{})
	require.ErrorContains(t, err, "DevicePolicy, IoT, Registry")
}

func TestRuleSQLTakesThingFromTopic(t *testing.T) {
	require.Contains(t, certrotate.RuleSQL, "topic(3) AS thingName")
	require.Contains(t, certrotate.RuleSQL, "principal() AS principal")
	require.NotContains(t, certrotate.RuleSQL, "SELECT *")
	require.Contains(t, certrotate.RuleSQL, "FROM 'dt/fleet/+/rotate/+'")
}

// After a completed rotation the device's current key is the one the
// registry knows: the real pre-provisioning hook admits the rotated device
// retrying fleet provisioning with it (a same-key retry: the rotated
// certificate is retired and replaced), and denies the old key and any
// other key as a clone.
func TestRotatedDeviceRetriesProvisioningWithItsCurrentKey(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		key, csr := newCSR(t)
		newID := f.handle(csrEvent("r1", csr, f.oldID)).CertificateID
		require.Equal(t, certrotate.OutcomeCompleted, f.handle(confirmEvent("r1", newID, protocol.RotateConfirmed, newID)).Outcome)

		hook, err := preprovision.New(preprovision.Config{
			Registry: f.reg, IoT: f.iot.Client, DevicePolicy: policy, ThingNamePrefix: "dev-",
			SerialPattern: regexp.MustCompile(`^[0-9a-f]{16}$`),
			Logger:        slog.New(slog.NewJSONHandler(f.logs, nil)),
		})
		require.NoError(t, err)
		// provision asks the hook about a new certificate, issued by AWS
		// IoT for a CSR made with key, as RegisterThing would.
		provision := func(key *ecdsa.PrivateKey) (string, bool) {
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: thing}}, key)
			require.NoError(t, err)
			out, err := f.iot.CreateCertificateFromCsr(f.ctx, &iot.CreateCertificateFromCsrInput{
				CertificateSigningRequest: aws.String(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))),
			})
			require.NoError(t, err)
			resp, err := hook.Handle(f.ctx, protocol.PreProvisioningHookRequest{
				ClaimCertificateID: "c1a1c1a1c1a1c1a1c1a1c1a1c1a1c1a1c1a1c1a1c1a1c1a1c1a1c1a1c1a1c1a1",
				CertificateID:      aws.ToString(out.CertificateId), CertificatePEM: aws.ToString(out.CertificatePem),
				ClientID: protocol.ClaimClientID(serial), Parameters: map[string]string{protocol.ParamSerialNumber: serial},
			})
			require.NoError(t, err)
			return aws.ToString(out.CertificateId), resp.AllowProvisioning
		}

		other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		_, allowed := provision(other)
		require.False(t, allowed, "another key is a clone")
		_, allowed = provision(f.oldPriv)
		require.False(t, allowed, "the key the rotation replaced is a clone")
		require.Equal(t, newID, f.device().CertificateID)

		retryID, allowed := provision(key)
		require.True(t, allowed, "the rotated key is a same-key retry")
		d := f.device()
		require.Equal(t, retryID, d.CertificateID)
		require.Equal(t, certrotatetest.KeyHash(t, f.certMessages()[0].CertificatePEM), d.PublicKeySHA256, "still the rotated key")
		require.NotEmpty(t, d.CertificateHistory)
		last := d.CertificateHistory[len(d.CertificateHistory)-1]
		require.Equal(t, newID, last.CertificateID)
		require.Equal(t, registry.RetiredSameKey, last.Reason)
		c, ok := f.iot.Cert(newID)
		require.True(t, ok)
		require.Equal(t, iottypes.CertificateStatusRevoked, c.Status, "the rotated certificate is retired")
	})
}

// recordFailing is the device registry with its next RecordProvisioned
// calls failing (a throttled or unavailable table).
type recordFailing struct {
	registry.Store
	mu    sync.Mutex
	fails int
}

func (r *recordFailing) RecordProvisioned(ctx context.Context, serial, thingName string, cert registry.Certificate) (registry.Device, error) {
	r.mu.Lock()
	fail := r.fails > 0
	if fail {
		r.fails--
	}
	r.mu.Unlock()
	if fail {
		return registry.Device{}, errors.New("ProvisionedThroughputExceededException: rate exceeded")
	}
	return r.Store.RecordProvisioned(ctx, serial, thingName, cert)
}

// The rotation completed but recording the new key failed: the handler
// returns an error (the Lambda retries the event) and the replayed
// confirmation records the key.
func TestKeyRecordedOnReplayAfterAFailedWrite(t *testing.T) {
	reg := &recordFailing{Store: registry.NewMemory()}
	f := newFixture(t, reg)
	_, csr := newCSR(t)
	res := f.handle(csrEvent("r1", csr, f.oldID))
	newID := res.CertificateID
	newKey := certrotatetest.KeyHash(t, f.certMessages()[0].CertificatePEM)

	reg.mu.Lock()
	reg.fails = 1
	reg.mu.Unlock()
	_, err := f.h.Handle(f.ctx, confirmEvent("r1", newID, protocol.RotateConfirmed, newID))
	require.ErrorContains(t, err, "record the new certificate's key")
	d := f.device()
	require.Equal(t, newID, d.CertificateID, "the rotation itself completed")
	require.Empty(t, d.PublicKeySHA256)

	res = f.handle(confirmEvent("r1", newID, protocol.RotateConfirmed, newID))
	require.Equal(t, certrotate.OutcomeReplay, res.Outcome)
	require.Equal(t, newKey, res.PublicKeySHA256)
	require.Equal(t, newKey, f.device().PublicKeySHA256)
	// Another replay changes nothing and asks AWS IoT nothing about keys.
	before := f.iot.CallCount("DescribeCertificate " + newID)
	res = f.handle(confirmEvent("r1", newID, protocol.RotateConfirmed, newID))
	require.Equal(t, certrotate.OutcomeReplay, res.Outcome)
	require.Equal(t, newKey, f.device().PublicKeySHA256)
	require.Equal(t, before, f.iot.CallCount("DescribeCertificate "+newID))
}

// revokedWhileCompleting is the device registry where the allowlist sync
// starts revoking the device right after CompleteRotation wrote.
type revokedWhileCompleting struct{ registry.Store }

func (r revokedWhileCompleting) CompleteRotation(ctx context.Context, serial, rotationID, certID string) (registry.Device, error) {
	d, err := r.Store.CompleteRotation(ctx, serial, rotationID, certID)
	if err != nil {
		return d, err
	}
	if _, err := r.Store.MarkRevoking(ctx, serial, d.CertificateID); err != nil {
		return registry.Device{}, err
	}
	return d, nil
}

// The record changed between completing the rotation and recording the
// key: the conditional write leaves the record alone and the rotation
// still completes (the old certificate retired).
func TestKeyNotRecordedOnAChangedRecord(t *testing.T) {
	f := newFixture(t, revokedWhileCompleting{registry.NewMemory()})
	_, csr := newCSR(t)
	newID := f.handle(csrEvent("r1", csr, f.oldID)).CertificateID
	res := f.handle(confirmEvent("r1", newID, protocol.RotateConfirmed, newID))
	require.Equal(t, certrotate.OutcomeCompleted, res.Outcome)
	require.Empty(t, res.PublicKeySHA256)
	d := f.device()
	require.Equal(t, registry.StateRevoking, d.State)
	require.Empty(t, d.PublicKeySHA256)
	_, ok := f.iot.Cert(f.oldID)
	require.False(t, ok, "old certificate retired")
	require.Contains(t, f.logs.String(), "rotated key not recorded")
}
