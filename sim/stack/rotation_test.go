package stack_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate/certrotatetest"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/sim/core"
	simreg "github.com/iot-fleet/iot-fleet/sim/registry"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// mqttClient is a scripted MQTT 3.1.1 client over mutual TLS.
type mqttClient struct {
	t    *testing.T
	c    paho.Client
	msgs chan paho.Message
}

func dialMQTT(t *testing.T, s *stack.Stack, certPEM, keyPEM []byte, clientID string) *mqttClient {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(s.Core.RootCAPEM()))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	m := &mqttClient{t: t, msgs: make(chan paho.Message, 32)}
	m.c = paho.NewClient(paho.NewClientOptions().
		AddBroker("tls://" + s.Core.Endpoint()).SetClientID(clientID).SetProtocolVersion(4).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, ServerName: "127.0.0.1"}).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, msg paho.Message) { m.msgs <- msg }))
	tok := m.c.Connect()
	require.True(t, tok.WaitTimeout(15*time.Second), "connect %s", clientID)
	require.NoError(t, tok.Error(), "connect %s", clientID)
	t.Cleanup(func() { m.c.Disconnect(0) })
	return m
}

func (m *mqttClient) subscribe(filters ...string) {
	m.t.Helper()
	subs := map[string]byte{}
	for _, f := range filters {
		subs[f] = 1
	}
	tok := m.c.SubscribeMultiple(subs, nil)
	require.True(m.t, tok.WaitTimeout(10*time.Second))
	require.NoError(m.t, tok.Error())
	for f, rc := range tok.(*paho.SubscribeToken).Result() {
		require.Less(m.t, rc, byte(0x80), "subscription %s refused", f)
	}
}

func (m *mqttClient) publish(topic string, v any) {
	m.t.Helper()
	b, err := json.Marshal(v)
	require.NoError(m.t, err)
	tok := m.c.Publish(topic, 1, false, b)
	require.True(m.t, tok.WaitTimeout(10*time.Second))
	require.NoError(m.t, tok.Error())
}

// await returns the payload of the next message on one of topics.
func (m *mqttClient) await(topics ...string) (string, []byte) {
	m.t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case msg := <-m.msgs:
			for _, topic := range topics {
				if msg.Topic() == topic {
					return topic, msg.Payload()
				}
			}
		case <-timeout:
			m.t.Fatalf("no message on %v within 15s", topics)
			return "", nil
		}
	}
}

func csrPEM(t *testing.T, key *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, key)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func keyPEMOf(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// provisionByClaim runs fleet provisioning by claim over MQTT with the
// device key key (CreateCertificateFromCsr, RegisterThing) and returns
// the new certificate and whether RegisterThing accepted it.
func provisionByClaim(t *testing.T, s *stack.Stack, claim core.Credentials, key *ecdsa.PrivateKey) (core.Credentials, bool) {
	t.Helper()
	tmpl := s.Core.Names().TemplateName
	cl := dialMQTT(t, s, claim.CertPEM, claim.KeyPEM, protocol.ClaimClientID(serial))
	defer cl.c.Disconnect(0)
	cl.subscribe(protocol.CreateCertFromCSRTopic+"/+", protocol.RegisterThingTopic(tmpl)+"/+")
	cl.publish(protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csrPEM(t, key)})
	_, payload := cl.await(protocol.CreateCertFromCSRAcceptedTopic)
	var cert protocol.CreateCertResponse
	require.NoError(t, json.Unmarshal(payload, &cert))
	cl.publish(protocol.RegisterThingTopic(tmpl), protocol.RegisterThingRequest{
		CertificateOwnershipToken: cert.CertificateOwnershipToken,
		Parameters:                map[string]string{protocol.ParamSerialNumber: serial},
	})
	topic, _ := cl.await(protocol.RegisterThingAcceptedTopic(tmpl), protocol.RegisterThingRejectedTopic(tmpl))
	creds := core.Credentials{CertificateID: cert.CertificateID, CertPEM: []byte(cert.CertificatePEM), KeyPEM: keyPEMOf(t, key)}
	return creds, topic == protocol.RegisterThingAcceptedTopic(tmpl)
}

// confirmed reports whether the rotation Lambda completed rotationID.
func confirmed(records []stack.RotationRecord, rotationID string) bool {
	for _, r := range records {
		if r.Event.RotationID == rotationID && r.Result.Outcome == certrotate.OutcomeCompleted {
			return true
		}
	}
	return false
}

// A device provisioned by claim rotates its certificate through the
// rotation rule and Lambda; the registry then records the new key, so
// that provisioning again by claim with it (a device that lost its
// identity files but kept its key) is a same-key retry, while any other
// key is still denied as a clone.
func TestRotatedKeyIsTheDevicesKeyForProvisioning(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	claim, err := s.Core.IssueClaimCertificate()
	require.NoError(t, err)
	firstKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	first, ok := provisionByClaim(t, s, claim, firstKey)
	require.True(t, ok, "first provisioning")
	thing := s.Core.Names().ThingNamePrefix + serial
	d, err := s.Registry.Get(ctx, serial)
	require.NoError(t, err)
	require.Equal(t, certrotatetest.KeyHash(t, string(first.CertPEM)), d.PublicKeySHA256)

	// Rotation: request, CSR for a new key, certificate, confirmation over
	// a connection made with the new certificate.
	dev := dialMQTT(t, s, first.CertPEM, first.KeyPEM, thing)
	dev.subscribe(protocol.CommandTopic(thing, protocol.KindRotateRequest), protocol.CommandTopic(thing, protocol.KindRotateCert))
	rep, err := s.RequestRotation(ctx, certscan.Request{ThingName: thing})
	require.NoError(t, err)
	rotationID := rep.Requested[thing]
	require.NotEmpty(t, rotationID, "%+v", rep)
	_, payload := dev.await(protocol.CommandTopic(thing, protocol.KindRotateRequest))
	var req protocol.RotateRequest
	require.NoError(t, json.Unmarshal(payload, &req))
	require.Equal(t, rotationID, req.RotationID)
	rotatedKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	dev.publish(protocol.DataTopic(thing, protocol.KindRotateCSR), protocol.RotateCSR{RotationID: rotationID, CSR: csrPEM(t, rotatedKey)})
	_, payload = dev.await(protocol.CommandTopic(thing, protocol.KindRotateCert))
	var rc protocol.RotateCert
	require.NoError(t, json.Unmarshal(payload, &rc))
	require.Empty(t, rc.ErrorCode, rc.ErrorMessage)
	dev.c.Disconnect(0)
	rotated := dialMQTT(t, s, []byte(rc.CertificatePEM), keyPEMOf(t, rotatedKey), thing)
	rotated.publish(protocol.DataTopic(thing, protocol.KindRotateConfirm), protocol.RotateConfirm{
		RotationID: rotationID, CertificateID: rc.CertificateID, Status: protocol.RotateConfirmed,
	})
	rotatedHash := certrotatetest.KeyHash(t, rc.CertificatePEM)
	require.NotEqual(t, d.PublicKeySHA256, rotatedHash)
	// The rotation Lambda runs asynchronously: wait until its invocation
	// for the confirmation has returned.
	for !confirmed(s.Rotation.Records(), rotationID) {
		select {
		case <-ctx.Done():
			t.Fatalf("rotation %s not confirmed; lambda: %+v", rotationID, s.Rotation.Records())
		case <-time.After(20 * time.Millisecond):
		}
	}
	d, err = s.Registry.Get(ctx, serial)
	require.NoError(t, err)
	require.Equal(t, registry.RotationCompleted, d.LastRotationStatus)
	require.Equal(t, rc.CertificateID, d.CertificateID)
	require.Equal(t, rotatedHash, d.PublicKeySHA256, "the registry records the rotated key")
	rotated.c.Disconnect(0)

	// Another key, and the key the rotation replaced, are clones.
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	_, ok = provisionByClaim(t, s, claim, otherKey)
	require.False(t, ok, "another key is denied")
	_, ok = provisionByClaim(t, s, claim, firstKey)
	require.False(t, ok, "the replaced key is denied")

	// The rotated key is the device's: a same-key retry, admitted; the
	// rotated certificate is retired and the new one connects.
	again, ok := provisionByClaim(t, s, claim, rotatedKey)
	require.True(t, ok, "the rotated key is admitted")
	d, err = s.Registry.Get(ctx, serial)
	require.NoError(t, err)
	require.Equal(t, again.CertificateID, d.CertificateID)
	require.Equal(t, rotatedHash, d.PublicKeySHA256)
	last := d.CertificateHistory[len(d.CertificateHistory)-1]
	require.Equal(t, rc.CertificateID, last.CertificateID)
	require.Equal(t, registry.RetiredSameKey, last.Reason)
	c, err := s.Core.Registry().Certificate(rc.CertificateID)
	require.NoError(t, err)
	require.Equal(t, simreg.CertRevoked, c.Status)
	dialMQTT(t, s, again.CertPEM, again.KeyPEM, thing).publish(protocol.DataTopic(thing, protocol.KindStatus), map[string]string{"ok": "yes"})
}
