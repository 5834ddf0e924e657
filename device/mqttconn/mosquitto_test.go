package mqttconn

import (
	"context"
	"crypto/tls"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

func mosquittoClient(t *testing.T, m *testenv.Mosquitto, cn string) *Client {
	t.Helper()
	certFile, keyFile := m.IssueClient(t, cn)
	ca, err := os.ReadFile(m.CAFile)
	require.NoError(t, err)
	c, err := New(Options{
		Address: m.Addr, ClientID: cn,
		TLSConfig: func() (*tls.Config, error) {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, err
			}
			return NewTLSConfig(ca, cert, "127.0.0.1", false)
		},
		Backoff: backoff.Policy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		Logger:  testLogger(t),
	})
	require.NoError(t, err)
	return c
}

func TestMosquittoSubscribePublishACLAndRestart(t *testing.T) {
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{})
	ctx := waitCtx(t)

	cloud := mosquittoClient(t, m, testenv.MosquittoAdmin)
	seen := newCollector()
	require.NoError(t, cloud.Subscribe(ctx, "dt/fleet/#", 1, seen.handle))
	run(t, cloud)

	dev := mosquittoClient(t, m, "dev-a")
	cmds := newCollector()
	require.NoError(t, dev.Subscribe(ctx, "cmd/fleet/dev-a/#", 1, cmds.handle))
	hooks := make(chan struct{}, 10)
	dev.OnConnect(func(context.Context) { hooks <- struct{}{} })
	run(t, dev)
	require.NoError(t, cloud.WaitConnected(ctx))
	require.NoError(t, dev.WaitConnected(ctx))
	<-hooks

	require.NoError(t, cloud.Publish(ctx, "cmd/fleet/dev-a/ping", 1, []byte("1")))
	assert.Equal(t, "cmd/fleet/dev-a/ping 1", cmds.next(t))

	// ACL: dev-a's publish on dev-b's topic is acknowledged by mosquitto
	// but never delivered; the allowed one published after it is the first
	// (and only) one the cloud sees.
	require.NoError(t, dev.Publish(ctx, "dt/fleet/dev-b/status", 1, []byte("spoofed")))
	require.NoError(t, dev.Publish(ctx, "dt/fleet/dev-a/status", 1, []byte("mine")))
	assert.Equal(t, "dt/fleet/dev-a/status mine", seen.next(t))
	// dev-a never receives another thing's commands: mosquitto grants the
	// subscription but the read ACL filters every message. The cloud's
	// second publish is delivered, so the first one would have been
	// dispatched before it.
	other := newCollector()
	require.NoError(t, dev.Subscribe(ctx, "cmd/fleet/dev-b/#", 1, other.handle))
	require.NoError(t, cloud.Publish(ctx, "cmd/fleet/dev-b/ping", 1, []byte("not yours")))
	require.NoError(t, cloud.Publish(ctx, "cmd/fleet/dev-a/ping", 1, []byte("yours")))
	assert.Equal(t, "cmd/fleet/dev-a/ping yours", cmds.next(t))
	other.mu.Lock()
	assert.Empty(t, other.msgs)
	other.mu.Unlock()

	// Restart without persistence: the broker forgot every subscription;
	// both clients re-subscribe on reconnect.
	m.Restart(t)
	<-hooks
	require.NoError(t, cloud.WaitConnected(ctx))
	require.NoError(t, dev.WaitConnected(ctx))
	require.Eventually(t, func() bool {
		return cloud.Publish(ctx, "cmd/fleet/dev-a/ping", 1, []byte("2")) == nil
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, "cmd/fleet/dev-a/ping 2", cmds.next(t))
	require.Eventually(t, func() bool {
		return dev.Publish(ctx, "dt/fleet/dev-a/status", 1, []byte("after")) == nil
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, "dt/fleet/dev-a/status after", seen.next(t))
	assert.GreaterOrEqual(t, dev.Connections(), int64(2))
}
