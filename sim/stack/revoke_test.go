package stack_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/revoke"
	simreg "github.com/iot-fleet/iot-fleet/sim/registry"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// connectionLost connects with creds and returns a channel closed when
// the broker drops the connection.
func connectionLost(t *testing.T, s *stack.Stack, creds []byte, key []byte, clientID string) (paho.Client, <-chan struct{}) {
	t.Helper()
	lost := make(chan struct{})
	c := paho.NewClient(paho.NewClientOptions().
		AddBroker("tls://" + s.Core.Endpoint()).SetClientID(clientID).SetProtocolVersion(4).
		SetTLSConfig(tlsConfigFor(t, s, creds, key)).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectionLostHandler(func(paho.Client, error) { close(lost) }))
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(15*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { c.Disconnect(0) })
	return c, lost
}

// The emergency revoke: a connected device provisioned by claim is cut
// off at once (its connection closed, its certificate refused), the
// registry records why and who, provisioning by claim is denied, and the
// next allowlist deploy leaves it revoked although its serial is still
// listed, until a readmit line with a new token admits it again.
func TestRevokeCutsOffAConnectedDevice(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	claim, err := s.Core.IssueClaimCertificate()
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	creds, ok := provisionByClaim(t, s, claim, key)
	require.True(t, ok, "provisioning")
	thing := s.Core.Names().ThingNamePrefix + serial
	_, lost := connectionLost(t, s, creds.CertPEM, creds.KeyPEM, thing)

	res, err := s.Revoke(ctx, revoke.Request{Serial: serial, Reason: "stolen", By: "alice"})
	require.NoError(t, err)
	assert.Equal(t, revoke.Response{Serial: serial, ThingName: thing, CertificateID: creds.CertificateID, State: "revoked",
		RevokedCertificates: []string{creds.CertificateID}}, res, "the certificate it revoked is reported")
	select {
	case <-lost:
	case <-ctx.Done():
		t.Fatal("the revoked device is still connected")
	}
	c, err := s.Core.Registry().Certificate(creds.CertificateID)
	require.NoError(t, err)
	assert.Equal(t, simreg.CertRevoked, c.Status)
	_, err = s.Core.Registry().Thing(thing)
	require.Error(t, err, "the thing is deleted")
	// Its certificate is refused.
	refused := paho.NewClient(paho.NewClientOptions().AddBroker("tls://" + s.Core.Endpoint()).SetClientID(thing).
		SetTLSConfig(tlsConfigFor(t, s, creds.CertPEM, creds.KeyPEM)).SetConnectRetry(false).SetAutoReconnect(false))
	tok := refused.Connect()
	require.True(t, tok.WaitTimeout(15*time.Second))
	require.Error(t, tok.Error(), "a revoked certificate connects")
	// The calls went over the wire to the control plane.
	assert.Contains(t, s.IoT.CallsOf("UpdateCertificate"), creds.CertificateID)

	d, err := s.Registry.Get(ctx, serial)
	require.NoError(t, err)
	assert.Equal(t, registry.StateRevoked, d.State)
	assert.Equal(t, "stolen", d.RevokeReason)
	assert.Equal(t, "alice", d.RevokedBy)
	assert.True(t, d.HeldOut())

	// Provisioning again by claim is denied, whatever the key.
	_, ok = provisionByClaim(t, s, claim, key)
	assert.False(t, ok, "a revoked serial provisions")

	// The serial is still listed: the next deploy holds it out.
	sync, err := s.DeployAllowlist(ctx, []byte(serial+"\n"))
	require.NoError(t, err)
	assert.Equal(t, []string{serial}, sync.Held)
	_, ok = provisionByClaim(t, s, claim, key)
	assert.False(t, ok, "an allowlist deploy re-admitted an emergency revocation")

	// A readmit line with a new token admits it again.
	sync, err = s.DeployAllowlist(ctx, []byte(serial+" readmit=INC-42\n"))
	require.NoError(t, err)
	assert.Equal(t, 1, sync.Readmitted)
	again, ok := provisionByClaim(t, s, claim, key)
	require.True(t, ok, "re-admitted")
	_, _ = connectionLost(t, s, again.CertPEM, again.KeyPEM, thing)
}

func tlsConfigFor(t *testing.T, s *stack.Stack, certPEM, keyPEM []byte) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(s.Core.RootCAPEM()))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, ServerName: "127.0.0.1"}
}
