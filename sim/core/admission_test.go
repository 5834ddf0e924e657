package core

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	devreg "github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// provisioned provisions allowedSerial over MQTT with key and connects it
// as its thing.
func provisioned(t *testing.T, c *Core, claim Credentials, key *ecdsa.PrivateKey) (Credentials, *testClient) {
	t.Helper()
	creds, answer := provisionWithKey(t, c, claim, allowedSerial, key)
	require.Equal(t, protocol.RegisterThingAcceptedTopic(c.Names().TemplateName), answer.Topic, string(answer.Payload))
	dev := mustConnect(t, c, creds, "dev-"+allowedSerial)
	dev.mustSubscribe(protocol.JobsNotifyNextTopic("dev-" + allowedSerial))
	return creds, dev
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

func assertRetired(t *testing.T, c *Core, id string) {
	t.Helper()
	cert, err := c.Registry().Certificate(id)
	require.NoError(t, err)
	assert.Equal(t, registry.CertRevoked, cert.Status)
	assert.Empty(t, cert.Policies)
	assert.Empty(t, cert.Things)
}

// A second device with the claim certificate and a provisioned serial is
// denied; the first keeps its connection and its ACTIVE certificate.
func TestClonedSerialIsDenied(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	creds, dev := provisioned(t, c, claim, newKey(t))

	_, answer := provisionOverMQTT(t, c, claim, allowedSerial)
	require.Equal(t, protocol.Rejected(protocol.RegisterThingTopic(c.Names().TemplateName)), answer.Topic)
	assert.Contains(t, string(answer.Payload), protocol.ErrCodeAccessDenied)

	cert, err := c.Registry().Certificate(creds.CertificateID)
	require.NoError(t, err)
	assert.Equal(t, registry.CertActive, cert.Status)
	th, err := c.Registry().Thing("dev-" + allowedSerial)
	require.NoError(t, err)
	assert.Equal(t, []string{creds.CertificateID}, th.Principals)
	dev.mustPublish(protocol.DataTopic("dev-"+allowedSerial, protocol.KindStatus), `{"still":"here"}`)
}

// The device retries with its key after a lost RegisterThing answer: the
// certificate it never received is retired through the local IoT control
// plane.
func TestSameKeyRetryRetiresTheFirstCertificate(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	key := newKey(t)
	first, answer := provisionWithKey(t, c, claim, allowedSerial, key)
	require.Equal(t, protocol.RegisterThingAcceptedTopic(c.Names().TemplateName), answer.Topic)

	second, dev := provisioned(t, c, claim, key)
	assertRetired(t, c, first.CertificateID)
	rec, err := c.DeviceRegistry().Get(context.Background(), allowedSerial)
	require.NoError(t, err)
	assert.Equal(t, second.CertificateID, rec.CertificateID)
	require.Len(t, rec.CertificateHistory, 1)
	assert.Equal(t, devreg.RetiredSameKey, rec.CertificateHistory[0].Reason)
	th, err := c.Registry().Thing("dev-" + allowedSerial)
	require.NoError(t, err)
	assert.Equal(t, []string{second.CertificateID}, th.Principals)
	dev.mustPublish(protocol.DataTopic("dev-"+allowedSerial, protocol.KindStatus), `{"ok":true}`)
}

// A re-admitted serial provisions once with a new key; the old identity
// is revoked and its connection closed.
func TestReadmittedSerialReplacesItsIdentity(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	old, oldDev := provisioned(t, c, claim, newKey(t))
	_, changed, err := c.DeviceRegistry().Readmit(context.Background(), allowedSerial, "INC-1", "test")
	require.NoError(t, err)
	require.True(t, changed)

	creds, _ := provisioned(t, c, claim, newKey(t))
	oldDev.waitLost() // the broker closed the old identity's connection
	assertRetired(t, c, old.CertificateID)
	requireClosedAfterConnect(t, c, old, "dev-"+allowedSerial, "the old identity is refused")

	// Once: another key is a clone again.
	_, answer := provisionOverMQTT(t, c, claim, allowedSerial)
	require.Equal(t, protocol.Rejected(protocol.RegisterThingTopic(c.Names().TemplateName)), answer.Topic)
	cert, err := c.Registry().Certificate(creds.CertificateID)
	require.NoError(t, err)
	assert.Equal(t, registry.CertActive, cert.Status)
}
