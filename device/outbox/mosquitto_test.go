package outbox_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/outbox"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

func mosqConn(t *testing.T, m *testenv.Mosquitto, cn string) *mqttconn.Client {
	t.Helper()
	certFile, keyFile := m.IssueClient(t, cn)
	ca, err := os.ReadFile(m.CAFile)
	require.NoError(t, err)
	c, err := mqttconn.New(mqttconn.Options{
		Address: m.Addr, ClientID: cn,
		TLSConfig: func() (*tls.Config, error) {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, err
			}
			return mqttconn.NewTLSConfig(ca, cert, "127.0.0.1", false)
		},
		Backoff: backoff.Policy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		Logger:  quiet,
	})
	require.NoError(t, err)
	return c
}

func TestOutboxAgainstMosquittoRestart(t *testing.T) {
	// Persistence keeps the cloud observer's session across the restart, so
	// messages the device delivers before the observer is back are queued
	// for it instead of being lost.
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{Persistence: true})
	ctx := deadline(t)
	got := make(chan string, 100)
	cloud := mosqConn(t, m, testenv.MosquittoAdmin)
	require.NoError(t, cloud.Subscribe(ctx, "dt/fleet/#", 1, func(_ string, p []byte) { got <- string(p) }))
	goRun(t, func(ctx context.Context) { _ = cloud.Run(ctx) })
	require.NoError(t, cloud.WaitConnected(ctx))

	dev := mosqConn(t, m, "dev-a")
	ob, err := outbox.Open(t.TempDir(), outbox.Options{Logger: quiet})
	require.NoError(t, err)
	goRun(t, func(ctx context.Context) { _ = dev.Run(ctx) })
	goRun(t, func(ctx context.Context) { _ = ob.Run(ctx, dev) })

	collect := func(n int) []string {
		var out []string
		for len(out) < n {
			select {
			case p := <-got:
				out = append(out, p)
			case <-time.After(20 * time.Second):
				t.Fatalf("got %v, want %d messages", out, n)
			}
		}
		return out
	}
	require.NoError(t, ob.Publish(ctx, "dt/fleet/dev-a/status", []byte("first")))
	assert.Equal(t, []string{"first"}, collect(1))

	m.Stop(t)
	var want []string
	for i := 0; i < 10; i++ {
		p := fmt.Sprintf("queued-%d", i)
		want = append(want, p)
		require.NoError(t, ob.Publish(ctx, "dt/fleet/dev-a/status", []byte(p)))
	}
	m.Start(t)
	// The broker may redeliver "first" to the observer after its restart
	// (QoS 1 between broker and observer); the device's queued messages
	// must all arrive, in order.
	var queued []string
	for len(queued) < len(want) {
		for _, p := range collect(1) {
			if p != "first" {
				queued = append(queued, p)
			}
		}
	}
	assert.Equal(t, want, queued)
	require.NoError(t, ob.WaitEmpty(ctx))
}
