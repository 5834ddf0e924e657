package provisioning

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
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/provtemplate"
	"github.com/iot-fleet/iot-fleet/sim/ca"
	"github.com/iot-fleet/iot-fleet/sim/faults"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

const tmplName = "iot-fleet-dev"

type fixture struct {
	svc    *Service
	reg    *registry.Registry
	faults *faults.Set
	now    time.Time
	mu     sync.Mutex
}

func (f *fixture) clock() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }
func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

func newFixture(t *testing.T, hook Hook) *fixture {
	t.Helper()
	f := &fixture{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), faults: faults.New()}
	authority, err := ca.New(ca.Options{})
	require.NoError(t, err)
	f.reg = registry.New(f.clock)
	doc, err := policy.Device(policy.Params{Partition: "aws", Region: "local-1", AccountID: "000000000000", TemplateName: tmplName})
	require.NoError(t, err)
	require.NoError(t, f.reg.CreatePolicy("iot-fleet-dev-device", doc))
	require.NoError(t, f.reg.CreateThingGroup("iot-fleet-dev"))
	body, err := provtemplate.Body(provtemplate.Params{ThingNamePrefix: "dev-", ThingGroup: "iot-fleet-dev", DevicePolicy: "iot-fleet-dev-device"})
	require.NoError(t, err)
	f.svc, err = New(Options{
		CA: authority, Registry: f.reg, TemplateName: tmplName, TemplateARN: "arn:aws:iot:local-1:000000000000:provisioningtemplate/" + tmplName,
		TemplateBody: body, Hook: hook, Faults: f.faults, Now: f.clock,
	})
	require.NoError(t, err)
	return f
}

type answer struct {
	topic   string
	payload []byte
}

func (f *fixture) call(t *testing.T, topic string, payload any) answer {
	t.Helper()
	var b []byte
	switch p := payload.(type) {
	case []byte:
		b = p
	default:
		var err error
		b, err = json.Marshal(p)
		require.NoError(t, err)
	}
	var got []answer
	f.svc.Handle(context.Background(), "provision-x", "claimcert", topic, b, func(tp string, pl []byte) { got = append(got, answer{tp, pl}) })
	require.Len(t, got, 1, "exactly one answer")
	return got[0]
}

func csr(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, key)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func (f *fixture) createCert(t *testing.T) protocol.CreateCertResponse {
	t.Helper()
	a := f.call(t, protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csr(t)})
	require.Equal(t, protocol.CreateCertFromCSRAcceptedTopic, a.topic, string(a.payload))
	var resp protocol.CreateCertResponse
	require.NoError(t, json.Unmarshal(a.payload, &resp))
	return resp
}

func rejected(t *testing.T, a answer, topic string) protocol.ErrorResponse {
	t.Helper()
	require.Equal(t, protocol.Rejected(topic), a.topic, string(a.payload))
	var e protocol.ErrorResponse
	require.NoError(t, json.Unmarshal(a.payload, &e))
	return e
}

func allowSerials(serials ...string) (Hook, *[]protocol.PreProvisioningHookRequest) {
	var mu sync.Mutex
	var calls []protocol.PreProvisioningHookRequest
	ok := map[string]bool{}
	for _, s := range serials {
		ok[s] = true
	}
	return func(_ context.Context, req protocol.PreProvisioningHookRequest) (protocol.PreProvisioningHookResponse, error) {
		mu.Lock()
		calls = append(calls, req)
		mu.Unlock()
		return protocol.PreProvisioningHookResponse{AllowProvisioning: ok[req.Parameters[protocol.ParamSerialNumber]]}, nil
	}, &calls
}

func TestProvisionByCSRCreatesThingGroupPolicyAndActivates(t *testing.T) {
	hook, calls := allowSerials("10000000a1b2c3d4")
	f := newFixture(t, hook)
	cert := f.createCert(t)
	c, err := f.reg.Certificate(cert.CertificateID)
	require.NoError(t, err)
	assert.Equal(t, registry.CertPendingActivation, c.Status, "not usable before RegisterThing")

	reg := protocol.RegisterThingRequest{CertificateOwnershipToken: cert.CertificateOwnershipToken, Parameters: map[string]string{protocol.ParamSerialNumber: "10000000a1b2c3d4"}}
	a := f.call(t, protocol.RegisterThingTopic(tmplName), reg)
	require.Equal(t, protocol.RegisterThingAcceptedTopic(tmplName), a.topic, string(a.payload))
	var resp protocol.RegisterThingResponse
	require.NoError(t, json.Unmarshal(a.payload, &resp))
	assert.Equal(t, "dev-10000000a1b2c3d4", resp.ThingName)
	assert.Equal(t, map[string]string{"thingGroup": "iot-fleet-dev"}, resp.DeviceConfiguration)

	c, err = f.reg.Certificate(cert.CertificateID)
	require.NoError(t, err)
	assert.Equal(t, registry.CertActive, c.Status)
	assert.Equal(t, []string{"iot-fleet-dev-device"}, c.Policies)
	assert.Equal(t, []string{"dev-10000000a1b2c3d4"}, c.Things)
	th, err := f.reg.Thing("dev-10000000a1b2c3d4")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"serial": "10000000a1b2c3d4"}, th.Attributes)
	assert.Equal(t, []string{"iot-fleet-dev"}, th.Groups)

	require.Len(t, *calls, 1)
	call := (*calls)[0]
	assert.Equal(t, "claimcert", call.ClaimCertificateID)
	assert.Equal(t, cert.CertificateID, call.CertificateID)
	assert.Equal(t, cert.CertificatePEM, call.CertificatePEM)
	assert.Equal(t, "provision-x", call.ClientID)
	assert.Equal(t, "10000000a1b2c3d4", call.Parameters[protocol.ParamSerialNumber])
	assert.Contains(t, call.TemplateARN, tmplName)

	// The token is single use.
	e := rejected(t, f.call(t, protocol.RegisterThingTopic(tmplName), reg), protocol.RegisterThingTopic(tmplName))
	assert.Equal(t, protocol.ErrCodeInvalidToken, e.ErrorCode)
	assert.Equal(t, 400, e.StatusCode)
}

func TestHookDenialThrottlingAndErrors(t *testing.T) {
	var hookErr error
	allow, _ := allowSerials("10000000a1b2c3d4")
	f := newFixture(t, func(ctx context.Context, r protocol.PreProvisioningHookRequest) (protocol.PreProvisioningHookResponse, error) {
		if hookErr != nil {
			return protocol.PreProvisioningHookResponse{}, hookErr
		}
		return allow(ctx, r)
	})
	topic := protocol.RegisterThingTopic(tmplName)
	cert := f.createCert(t)
	req := func(serial string) protocol.RegisterThingRequest {
		return protocol.RegisterThingRequest{CertificateOwnershipToken: cert.CertificateOwnershipToken, Parameters: map[string]string{protocol.ParamSerialNumber: serial}}
	}

	e := rejected(t, f.call(t, topic, req("ffffffffffffffff")), topic)
	assert.Equal(t, protocol.ErrorResponse{StatusCode: 403, ErrorCode: protocol.ErrCodeAccessDenied, ErrorMessage: e.ErrorMessage}, e)
	_, err := f.reg.Thing("dev-ffffffffffffffff")
	require.ErrorIs(t, err, registry.ErrNotFound, "denied serial creates nothing")
	c, err := f.reg.Certificate(cert.CertificateID)
	require.NoError(t, err)
	assert.Equal(t, registry.CertPendingActivation, c.Status)

	f.faults.ThrottleProvisioning(2)
	e = rejected(t, f.call(t, topic, req("10000000a1b2c3d4")), topic)
	assert.Equal(t, protocol.ErrCodeThrottling, e.ErrorCode)
	assert.Equal(t, 429, e.StatusCode)
	e = rejected(t, f.call(t, protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csr(t)}), protocol.CreateCertFromCSRTopic)
	assert.Equal(t, protocol.ErrCodeThrottling, e.ErrorCode)

	hookErr = errors.New("dynamodb unavailable")
	e = rejected(t, f.call(t, topic, req("10000000a1b2c3d4")), topic)
	assert.Equal(t, 500, e.StatusCode)
	hookErr = nil

	e = rejected(t, f.call(t, topic, []byte("{not json")), topic)
	assert.Equal(t, protocol.ErrCodeInvalidPayload, e.ErrorCode)
	e = rejected(t, f.call(t, topic, protocol.RegisterThingRequest{Parameters: map[string]string{}}), topic)
	assert.Equal(t, protocol.ErrCodeInvalidPayload, e.ErrorCode)
	e = rejected(t, f.call(t, topic, protocol.RegisterThingRequest{CertificateOwnershipToken: cert.CertificateOwnershipToken}), topic)
	assert.Equal(t, ErrCodeInvalidParameters, e.ErrorCode)
	assert.Contains(t, e.ErrorMessage, protocol.ParamSerialNumber)

	// After denial, throttling and errors the same token still works.
	a := f.call(t, topic, req("10000000a1b2c3d4"))
	assert.Equal(t, protocol.Accepted(topic), a.topic, string(a.payload))
}

func TestCSRRejections(t *testing.T) {
	f := newFixture(t, nil)
	topic := protocol.CreateCertFromCSRTopic
	e := rejected(t, f.call(t, topic, []byte("nope")), topic)
	assert.Equal(t, protocol.ErrCodeInvalidPayload, e.ErrorCode)
	e = rejected(t, f.call(t, topic, protocol.CreateCertFromCSRRequest{}), topic)
	assert.Equal(t, protocol.ErrCodeInvalidPayload, e.ErrorCode)
	e = rejected(t, f.call(t, topic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}), topic)
	assert.Equal(t, ErrCodeInvalidCSR, e.ErrorCode)
	f.faults.RefuseCSRs(1)
	e = rejected(t, f.call(t, topic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csr(t)}), topic)
	assert.Equal(t, ErrCodeInvalidCSR, e.ErrorCode)
	f.createCert(t)
	assert.Len(t, f.reg.Certificates(), 1, "rejected requests register no certificate")
}

func TestCreateKeysAndCertificate(t *testing.T) {
	f := newFixture(t, nil)
	a := f.call(t, protocol.CreateKeysAndCertTopic, []byte{})
	require.Equal(t, protocol.CreateKeysAndCertAcceptedTopic, a.topic)
	var resp protocol.CreateCertResponse
	require.NoError(t, json.Unmarshal(a.payload, &resp))
	assert.NotEmpty(t, resp.PrivateKey)
	assert.NotEmpty(t, resp.CertificateOwnershipToken)
	c, err := f.reg.Certificate(resp.CertificateID)
	require.NoError(t, err)
	assert.Equal(t, registry.CertPendingActivation, c.Status)
}

func TestExpiredTokensAndCleanup(t *testing.T) {
	f := newFixture(t, nil)
	unclaimed := f.createCert(t)
	claimed := f.createCert(t)
	topic := protocol.RegisterThingTopic(tmplName)
	a := f.call(t, topic, protocol.RegisterThingRequest{CertificateOwnershipToken: claimed.CertificateOwnershipToken, Parameters: map[string]string{protocol.ParamSerialNumber: "aaaaaaaaaaaaaaaa"}})
	require.Equal(t, protocol.Accepted(topic), a.topic, string(a.payload))

	f.advance(59 * time.Minute)
	assert.Empty(t, f.svc.CleanupExpired())
	f.advance(2 * time.Minute)
	e := rejected(t, f.call(t, topic, protocol.RegisterThingRequest{CertificateOwnershipToken: unclaimed.CertificateOwnershipToken, Parameters: map[string]string{protocol.ParamSerialNumber: "bbbbbbbbbbbbbbbb"}}), topic)
	assert.Equal(t, protocol.ErrCodeInvalidToken, e.ErrorCode)
	assert.Contains(t, e.ErrorMessage, "expired")
	assert.Equal(t, []string{unclaimed.CertificateID}, f.svc.CleanupExpired())
	_, err := f.reg.Certificate(unclaimed.CertificateID)
	require.ErrorIs(t, err, registry.ErrNotFound)
	_, err = f.reg.Certificate(claimed.CertificateID)
	require.NoError(t, err)
}

func TestHookParameterOverridesAndExistingThing(t *testing.T) {
	f := newFixture(t, func(_ context.Context, r protocol.PreProvisioningHookRequest) (protocol.PreProvisioningHookResponse, error) {
		return protocol.PreProvisioningHookResponse{AllowProvisioning: true, ParameterOverrides: map[string]string{protocol.ParamSerialNumber: "cccccccccccccccc"}}, nil
	})
	topic := protocol.RegisterThingTopic(tmplName)
	for range 2 {
		cert := f.createCert(t)
		a := f.call(t, topic, protocol.RegisterThingRequest{CertificateOwnershipToken: cert.CertificateOwnershipToken, Parameters: map[string]string{protocol.ParamSerialNumber: "dddddddddddddddd"}})
		require.Equal(t, protocol.Accepted(topic), a.topic, string(a.payload))
		var resp protocol.RegisterThingResponse
		require.NoError(t, json.Unmarshal(a.payload, &resp))
		assert.Equal(t, "dev-cccccccccccccccc", resp.ThingName)
	}
	th, err := f.reg.Thing("dev-cccccccccccccccc")
	require.NoError(t, err)
	assert.Len(t, th.Principals, 2, "re-provisioning attaches the new certificate to the existing thing")
}

func TestTemplateIntrinsics(t *testing.T) {
	params := map[string]string{"A": "x", "L": "p,q,r"}
	v, err := Eval(map[string]any{"Fn::Join": []any{"-", []any{"pre", map[string]any{"Ref": "A"}}}}, params)
	require.NoError(t, err)
	assert.Equal(t, "pre-x", v)
	v, err = Eval(map[string]any{"Fn::Select": []any{"1", map[string]any{"Fn::Split": []any{",", map[string]any{"Ref": "L"}}}}}, params)
	require.NoError(t, err)
	assert.Equal(t, "q", v)
	v, err = Eval(map[string]any{"k": []any{map[string]any{"Ref": "A"}, "lit"}}, params)
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"k": []any{"x", "lit"}}, v)

	_, err = Eval(map[string]any{"Ref": "Missing"}, params)
	assert.ErrorContains(t, err, `unknown parameter "Missing"`)
	_, err = Eval(map[string]any{"Fn::Sub": "x"}, params)
	assert.ErrorContains(t, err, "Fn::Sub not supported")
	_, err = Eval(map[string]any{"Fn::Join": []any{"-"}}, params)
	assert.ErrorContains(t, err, "Fn::Join")
	_, err = Eval(map[string]any{"Fn::Select": []any{"5", []any{"a"}}}, params)
	assert.ErrorContains(t, err, "out of range")

	_, err = ParseTemplate(`{"Resources":{"t":{"Type":"AWS::IoT::Thing"}}}`)
	assert.ErrorContains(t, err, "exactly one")
	_, err = ParseTemplate(`{"Resources":{"x":{"Type":"AWS::S3::Bucket"}}}`)
	assert.ErrorContains(t, err, "Resources.x")
	_, err = ParseTemplate(`{`)
	assert.Error(t, err)
}
