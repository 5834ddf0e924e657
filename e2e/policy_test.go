package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// deviceClient connects to the local IoT Core with the certificate and key
// the agent a provisioned (read from its state dir), as clientID.
func deviceClient(t *testing.T, f *harness.Fleet, a *harness.Agent, clientID string) (paho.Client, chan error, error) {
	t.Helper()
	id, found, err := a.Identity()
	require.NoError(t, err)
	require.True(t, found)
	cert, err := tls.LoadX509KeyPair(filepath.Join(a.StateDir, id.CertFile), filepath.Join(a.StateDir, id.KeyFile))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(f.Dir, "shared", "root-ca.pem"))
	require.NoError(t, err)
	require.True(t, pool.AppendCertsFromPEM(ca))
	lost := make(chan error, 1)
	opts := paho.NewClientOptions().AddBroker("tls://" + f.Stack.Core.Endpoint()).SetClientID(clientID).
		SetTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	c := paho.NewClient(opts)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	if tok.Error() != nil {
		return nil, nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, lost, nil
}

// The stack's device policy, enforced by the local IoT Core, confines a
// device to its own thing name and topics. A's real credentials are used to
// try B's.
func TestDeviceCannotActAsOrReachAnotherDevice(t *testing.T) {
	f := startFleet(t, serialA, serialB)
	a := startAgent(t, f, "a", serialA)
	b := startAgent(t, f, "b", serialB)
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	require.NoError(t, b.WaitConnected(ctx), b.LogTail(30))
	// Free A's client id: the test now holds A's credentials.
	require.NoError(t, a.Stop(10*time.Second))

	// A's certificate cannot connect as B.
	_, _, err := deviceClient(t, f, a, b.ThingName())
	require.Error(t, err, "connecting as another thing must be refused")

	// As itself, A may use its own topics...
	c, lost, err := deviceClient(t, f, a, a.ThingName())
	require.NoError(t, err)
	tok := c.Subscribe(protocol.CommandTopic(a.ThingName(), "#"), 1, nil)
	require.True(t, tok.WaitTimeout(5*time.Second))
	require.NoError(t, tok.Error())

	// ...but subscribing to B's commands is refused and closes the
	// connection, as AWS IoT does.
	tok = c.Subscribe(protocol.CommandTopic(b.ThingName(), "#"), 1, nil)
	tok.WaitTimeout(5 * time.Second)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		st, ok := tok.(*paho.SubscribeToken)
		require.True(t, ok)
		require.Equal(t, byte(0x80), st.Result()[protocol.CommandTopic(b.ThingName(), "#")], "subscription to another device's commands must fail")
	}

	// Publishing as B (its data topic, its Jobs API) closes the connection
	// and nothing reaches the cloud in B's name.
	for _, topic := range []string{protocol.DataTopic(b.ThingName(), protocol.KindStatus), protocol.JobsStartNextTopic(b.ThingName())} {
		c, lost, err := deviceClient(t, f, a, a.ThingName())
		require.NoError(t, err)
		c.Publish(topic, 1, false, []byte(`{}`)).WaitTimeout(5 * time.Second)
		select {
		case <-lost:
		case <-time.After(5 * time.Second):
			t.Fatalf("publishing on %s with A's certificate did not close the connection", topic)
		}
	}
	require.True(t, f.Connected(b.ThingName()), "B is unaffected")
}
