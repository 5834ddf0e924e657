package core

import (
	"errors"
	"io"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/sim/broker"
)

// connectRawALPN is rawConnect on the ALPN listener, offering protos.
func connectRawALPN(t *testing.T, c *Core, creds Credentials, clientID string, protos []string) ([]byte, string, error) {
	t.Helper()
	got, proto, _, err := rawConnect(t, c, c.ALPNEndpoint(), creds, clientID, protos)
	return got, proto, err
}

// AWS IoT Core serves MQTT on 443 only to clients that negotiate ALPN
// x-amzn-mqtt-ca (the AWS SDKs' and the Device Client's default); the
// local IoT Core's ALPN listener does the same, beside the 8883-style one.
func TestALPNListenerServesOnlyMQTTWithALPN(t *testing.T) {
	c := startCore(t, Options{ALPNAddr: "127.0.0.1:0"})
	require.NotEmpty(t, c.ALPNEndpoint())
	require.NotEqual(t, c.Endpoint(), c.ALPNEndpoint())
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	creds, _ := provisionOverMQTT(t, c, claim, allowedSerial)
	thing := "dev-" + allowedSerial

	got, proto, err := connectRawALPN(t, c, creds, thing, []string{broker.ALPNProtocol})
	require.NoError(t, err)
	require.Equal(t, broker.ALPNProtocol, proto)
	require.Equal(t, []byte{0x20, 0x02, 0x00, 0x00}, got, "CONNACK accepted with ALPN")

	// Without the ALPN protocol the listener serves no MQTT.
	got, _, err = connectRawALPN(t, c, creds, thing, nil)
	require.Empty(t, got, "no CONNACK without ALPN")
	require.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE), "closed, got %v", err)

	// The 8883-style listener does not need it.
	requireConnackAccepted(t, c, creds, thing)
	// The ALPN listener enforces the same policies.
	got, _, err = connectRawALPN(t, c, creds, "dev-10000000a1b2c3d5", []string{broker.ALPNProtocol})
	require.Empty(t, got, "another thing's client id is refused on the ALPN listener too")
	require.Error(t, err)

	// It survives a broker restart on the same address.
	addr := c.ALPNEndpoint()
	require.NoError(t, c.RestartBroker())
	require.Equal(t, addr, c.ALPNEndpoint())
	got, _, err = connectRawALPN(t, c, creds, thing, []string{broker.ALPNProtocol})
	require.NoError(t, err)
	require.Equal(t, []byte{0x20, 0x02, 0x00, 0x00}, got)
}
