package preprovision

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
	"github.com/iot-fleet/iot-fleet/sim/iottest"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
)

const devicePolicy = "iot-fleet-dev-device"

// simIoT is the local IoT Core's control plane served over HTTP
// (sim/iottest), reached by the hook through a real aws-sdk-go-v2
// *iot.Client (client): the hook retires certificates there as it would in
// AWS IoT. Faults and the calls served are behind the endpoint (IoT).
type simIoT struct {
	*iottest.Server
	reg    *simregistry.Registry
	client *iot.Client
}

func newSimIoT(t testing.TB) *simIoT {
	t.Helper()
	s := iottest.Start(t, iottest.Options{Policies: []string{devicePolicy}})
	return &simIoT{Server: s, reg: s.Registry, client: s.Client()}
}

// deviceCert is a certificate of a device key, as the CA would issue it
// for the device's CSR.
type deviceCert struct {
	id, pem string
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

func issue(t *testing.T, key *ecdsa.PrivateKey) deviceCert {
	t.Helper()
	sn, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: "device"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
	}, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}}, &key.PublicKey, key)
	require.NoError(t, err)
	sum := sha256.Sum256(der)
	return deviceCert{id: hex.EncodeToString(sum[:]), pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// provision does in the simulated IoT what the template does once the hook
// allowed c: an ACTIVE certificate with the device policy, attached to the
// thing.
func (s *simIoT) provision(t *testing.T, thing string, c deviceCert) {
	t.Helper()
	require.NoError(t, s.reg.RegisterCertificate(c.id, c.pem, simregistry.CertActive, time.Now().Add(24*time.Hour)))
	require.NoError(t, s.reg.AttachPolicy(devicePolicy, c.id))
	_, err := s.reg.CreateThing(thing, nil)
	require.NoError(t, err)
	require.NoError(t, s.reg.AttachThingPrincipal(thing, c.id))
}

func (s *simIoT) cert(t *testing.T, id string) simregistry.Certificate {
	t.Helper()
	c, err := s.reg.Certificate(id)
	require.NoError(t, err)
	return c
}

func certRequest(serial string, c deviceCert) protocol.PreProvisioningHookRequest {
	r := request(serial, c.id)
	r.CertificatePEM = c.pem
	return r
}

// admitted provisions serial (allowed) with c through the hook and the
// simulated template.
func (f fixture) admitted(t *testing.T, serial string, c deviceCert) {
	t.Helper()
	require.True(t, f.handle(t, certRequest(serial, c)), "%v", f.lastLog(t))
	f.iot.provision(t, "dev-"+serial, c)
}

func (f fixture) record(t *testing.T, serial string) registry.Device {
	t.Helper()
	d, err := f.store.Get(context.Background(), serial)
	require.NoError(t, err)
	return d
}

// The device retries provisioning with the key it kept after its
// RegisterThing answer was lost: admitted, and the certificate it never
// received is revoked and detached in the same flow.
func TestSameKeyRetryRetiresPreviousCertificate(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		key := newKey(t)
		first := issue(t, key)
		f.admitted(t, allowedSerial, first)
		rec := f.record(t, allowedSerial)
		assert.Equal(t, first.id, rec.CertificateID)
		assert.Len(t, rec.PublicKeySHA256, 64)
		assert.Equal(t, AdmissionNew, f.lastLog(t)["admission"])

		second := issue(t, key)
		require.True(t, f.handle(t, certRequest(allowedSerial, second)))
		log := f.lastLog(t)
		assert.Equal(t, ReasonAdmitted, log["reason"])
		assert.Equal(t, AdmissionSameKey, log["admission"])
		assert.Equal(t, first.id, log["retiredCertificateId"])
		assert.Equal(t, MetricAdmitted, log["metric"])

		old := f.iot.cert(t, first.id)
		assert.Equal(t, simregistry.CertRevoked, old.Status)
		assert.Empty(t, old.Policies, "device policy detached")
		assert.Empty(t, old.Things, "thing principal detached")
		rec = f.record(t, allowedSerial)
		assert.Equal(t, registry.StateProvisioned, rec.State)
		assert.Equal(t, second.id, rec.CertificateID)
		require.Len(t, rec.CertificateHistory, 1)
		assert.Equal(t, first.id, rec.CertificateHistory[0].CertificateID)
		assert.Equal(t, registry.RetiredSameKey, rec.CertificateHistory[0].Reason)

		// IoT retries the same hook: the same answer, nothing retired.
		require.True(t, f.handle(t, certRequest(allowedSerial, second)))
		assert.Equal(t, AdmissionRepeat, f.lastLog(t)["admission"])
		assert.Len(t, f.record(t, allowedSerial).CertificateHistory, 1)
	})
}

// Anyone with the claim certificate and a printed serial asks to provision
// an already provisioned serial with a key of their own: denied, with an
// alarm-friendly reason, and the device's certificate stays ACTIVE.
func TestClonedSerialDenied(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		device := issue(t, newKey(t))
		f.admitted(t, allowedSerial, device)
		before := f.record(t, allowedSerial)

		clone := issue(t, newKey(t))
		require.False(t, f.handle(t, certRequest(allowedSerial, clone)))
		log := f.lastLog(t)
		assert.Equal(t, ReasonAlreadyProvisioned, log["reason"])
		assert.Equal(t, "serial already provisioned", log["reason"])
		assert.Equal(t, MetricClone, log["metric"])
		assert.Equal(t, "WARN", log["level"])
		assert.Equal(t, device.id, log["recordedCertificateId"])
		assert.Equal(t, clone.id, log["certificateId"])

		assert.Equal(t, simregistry.CertActive, f.iot.cert(t, device.id).Status)
		assert.Equal(t, []string{devicePolicy}, f.iot.cert(t, device.id).Policies)
		after := f.record(t, allowedSerial)
		assert.Equal(t, before.CertificateID, after.CertificateID)
		assert.Equal(t, before.UpdatedAt, after.UpdatedAt)
		assert.Empty(t, after.CertificateHistory)

		// A certificate whose PEM does not parse proves no key either.
		bad := certRequest(allowedSerial, clone)
		bad.CertificatePEM = "garbage"
		require.False(t, f.handle(t, bad))
		assert.Equal(t, ReasonAlreadyProvisioned, f.lastLog(t)["reason"])
	})
}

// An operator re-admission lets a re-flashed device (new key) provision
// once; its old certificate is revoked; the next new key is a clone again.
func TestReadmittedAdmittedOnce(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		ctx := context.Background()
		old := issue(t, newKey(t))
		f.admitted(t, allowedSerial, old)
		_, _, err := f.store.Readmit(ctx, allowedSerial, "INC-1", "ops")
		require.NoError(t, err)

		reflashed := issue(t, newKey(t))
		require.True(t, f.handle(t, certRequest(allowedSerial, reflashed)))
		log := f.lastLog(t)
		assert.Equal(t, AdmissionReadmitted, log["admission"])
		assert.Equal(t, old.id, log["retiredCertificateId"])
		assert.Equal(t, simregistry.CertRevoked, f.iot.cert(t, old.id).Status)
		rec := f.record(t, allowedSerial)
		assert.Equal(t, registry.StateProvisioned, rec.State)
		assert.Equal(t, reflashed.id, rec.CertificateID)
		assert.Equal(t, "INC-1", rec.ReadmitToken)
		require.Len(t, rec.CertificateHistory, 1)
		assert.Equal(t, registry.RetiredReadmitted, rec.CertificateHistory[0].Reason)
		f.iot.provision(t, "dev-"+allowedSerial, reflashed)

		another := issue(t, newKey(t))
		require.False(t, f.handle(t, certRequest(allowedSerial, another)))
		assert.Equal(t, ReasonAlreadyProvisioned, f.lastLog(t)["reason"])
		assert.Equal(t, simregistry.CertActive, f.iot.cert(t, reflashed.id).Status)
	})
}

func TestRevokingDenied(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		_, err := f.store.MarkRevoking(context.Background(), allowedSerial, "")
		require.NoError(t, err)
		require.False(t, f.handle(t, certRequest(allowedSerial, issue(t, newKey(t)))))
		log := f.lastLog(t)
		assert.Equal(t, ReasonRevoking, log["reason"])
		assert.Equal(t, MetricRevoking, log["metric"])
		assert.Equal(t, registry.StateRevoking, f.record(t, allowedSerial).State)
	})
}

// The hook never retires the claim certificate (nor anything the registry
// did not record for the serial): a record naming it denies the request
// and leaves the claim certificate ACTIVE.
func TestNeverRetiresTheClaimCertificate(t *testing.T) {
	f := newFixture(t, registry.NewMemory())
	ctx := context.Background()
	claim := issue(t, newKey(t))
	require.NoError(t, f.iot.reg.RegisterCertificate(claim.id, claim.pem, simregistry.CertActive, time.Now().Add(time.Hour)))
	_, err := f.store.MarkProvisioned(ctx, allowedSerial, claim.id, "dev-"+allowedSerial)
	require.NoError(t, err)
	_, _, err = f.store.Readmit(ctx, allowedSerial, "T1", "")
	require.NoError(t, err)

	req := certRequest(allowedSerial, issue(t, newKey(t)))
	req.ClaimCertificateID = claim.id
	require.False(t, f.handle(t, req))
	log := f.lastLog(t)
	assert.Equal(t, ReasonRetireFailed, log["reason"])
	assert.Equal(t, "ERROR", log["level"])
	assert.Contains(t, log["error"], "claim certificate")
	assert.Equal(t, simregistry.CertActive, f.iot.cert(t, claim.id).Status)
	assert.Equal(t, registry.StateReadmitted, f.record(t, allowedSerial).State, "nothing recorded; the device may retry")
}

// A recorded certificate that IoT no longer knows counts as retired.
func TestRetireDeletedCertificate(t *testing.T) {
	f := newFixture(t, registry.NewMemory())
	_, _, err := f.store.Readmit(context.Background(), provisionedSerial, "T1", "")
	require.NoError(t, err)
	c := issue(t, newKey(t))
	require.True(t, f.handle(t, certRequest(provisionedSerial, c)))
	assert.Equal(t, certID(1), f.lastLog(t)["retiredCertificateId"])
	assert.Equal(t, c.id, f.record(t, provisionedSerial).CertificateID)
}

func TestAdmissionLogsNeverContainThePEM(t *testing.T) {
	f := newFixture(t, registry.NewMemory())
	key := newKey(t)
	first := issue(t, key)
	f.admitted(t, allowedSerial, first)
	require.True(t, f.handle(t, certRequest(allowedSerial, issue(t, key))))
	require.False(t, f.handle(t, certRequest(allowedSerial, issue(t, newKey(t)))))
	body := strings.Split(first.pem, "\n")[1]
	out := f.logs.String()
	assert.NotContains(t, out, "BEGIN CERTIFICATE")
	assert.NotContains(t, out, body[:40])
}

// If the previous certificate cannot be retired, the request is denied
// and nothing is recorded; the device's retry then goes through.
func TestRetirementFailureDenies(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		key := newKey(t)
		first := issue(t, key)
		f.admitted(t, allowedSerial, first)
		before := f.record(t, allowedSerial)

		f.iot.IoT.FailNext("UpdateCertificate", first.id, &iottypes.ThrottlingException{Message: aws.String("Rate exceeded")})
		retry := issue(t, key)
		require.False(t, f.handle(t, certRequest(allowedSerial, retry)))
		log := f.lastLog(t)
		assert.Equal(t, ReasonRetireFailed, log["reason"])
		assert.Equal(t, MetricHookFailure, log["metric"])
		assert.Contains(t, log["error"], "Throttling")
		assert.Equal(t, simregistry.CertActive, f.iot.cert(t, first.id).Status)
		after := f.record(t, allowedSerial)
		assert.Equal(t, before.CertificateID, after.CertificateID)
		assert.Empty(t, after.CertificateHistory)

		require.True(t, f.handle(t, certRequest(allowedSerial, retry)))
		assert.Equal(t, simregistry.CertRevoked, f.iot.cert(t, first.id).Status)
		assert.Equal(t, retry.id, f.record(t, allowedSerial).CertificateID)
		assert.Equal(t, []string{first.id, first.id}, f.iot.IoT.CallsOf("UpdateCertificate"))
	})
}

// A serial re-admitted while a rotation had issued a certificate (ACTIVE,
// attached to the thing): the provisioning retires both the recorded
// certificate and the rotation's, so no identity the registry forgets
// stays usable.
func TestReadmissionRetiresARotationsCertificateToo(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		ctx := context.Background()
		old := issue(t, newKey(t))
		f.admitted(t, allowedSerial, old)
		_, err := f.store.RequestRotation(ctx, allowedSerial, "rot-1", time.Hour)
		require.NoError(t, err)
		rotated := issue(t, newKey(t))
		_, err = f.store.IssueRotation(ctx, allowedSerial, "rot-1", registry.Certificate{ID: rotated.id, NotAfter: time.Now().Add(24 * time.Hour)})
		require.NoError(t, err)
		require.NoError(t, f.iot.reg.RegisterCertificate(rotated.id, rotated.pem, simregistry.CertActive, time.Now().Add(24*time.Hour)))
		require.NoError(t, f.iot.reg.AttachPolicy(devicePolicy, rotated.id))
		require.NoError(t, f.iot.reg.AttachThingPrincipal("dev-"+allowedSerial, rotated.id))
		_, _, err = f.store.Readmit(ctx, allowedSerial, "INC-2", "ops")
		require.NoError(t, err)

		reflashed := issue(t, newKey(t))
		require.True(t, f.handle(t, certRequest(allowedSerial, reflashed)), "%v", f.lastLog(t))
		for _, id := range []string{old.id, rotated.id} {
			c := f.iot.cert(t, id)
			assert.Equal(t, simregistry.CertRevoked, c.Status, id)
			assert.Empty(t, c.Things, "%s detached from the thing", id)
			assert.Empty(t, c.Policies, "%s detached from the device policy", id)
		}
		assert.Equal(t, reflashed.id, f.record(t, allowedSerial).CertificateID)
	})
}
