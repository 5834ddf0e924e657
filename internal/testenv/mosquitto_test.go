package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mosqClient(t *testing.T, m *Mosquitto, cn, clientID string) (mqtt.Client, error) {
	t.Helper()
	certFile, keyFile := m.IssueClient(t, cn)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	require.NoError(t, err)
	ca, err := os.ReadFile(m.CAFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca))
	opts := mqtt.NewClientOptions().AddBroker("tls://" + m.Addr).SetClientID(clientID).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, os.ErrDeadlineExceeded
	}
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func TestStartMosquittoMutualTLSAndACL(t *testing.T) {
	m := StartMosquitto(t, MosquittoOptions{})
	admin, err := mosqClient(t, m, MosquittoAdmin, "admin")
	require.NoError(t, err)
	got := make(chan string, 10)
	tok := admin.Subscribe("dt/fleet/#", 1, func(_ mqtt.Client, msg mqtt.Message) { got <- msg.Topic() + " " + string(msg.Payload()) })
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())

	dev, err := mosqClient(t, m, "dev-a", "dev-a")
	require.NoError(t, err)
	// Denied by the ACL (another thing's topic): mosquitto acknowledges and
	// drops it, so the allowed message published after it arrives first.
	for _, p := range []struct{ topic, payload string }{{"dt/fleet/dev-b/status", "spoofed"}, {"dt/fleet/dev-a/status", "mine"}} {
		tok := dev.Publish(p.topic, 1, false, p.payload)
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error())
	}
	select {
	case msg := <-got:
		assert.Equal(t, "dt/fleet/dev-a/status mine", msg)
	case <-time.After(10 * time.Second):
		t.Fatal("allowed publish not delivered")
	}

	// A client without a certificate from the CA cannot connect.
	ca, err := os.ReadFile(m.CAFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tls://" + m.Addr).SetClientID("anon").
		SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	tok = c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.Error(t, tok.Error())

	m.Restart(t)
	_, err = mosqClient(t, m, "dev-a", "dev-a2")
	require.NoError(t, err, "broker serves again after Restart on the same port")
	assert.True(t, strings.Contains(m.Log(), "mosquitto version"), m.Log())
}
