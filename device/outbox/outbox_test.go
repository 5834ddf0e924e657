package outbox_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/outbox"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startCloud runs the local IoT Core (sim/core: MQTT over mutual TLS with
// the stack's policies) until the test ends.
func startCloud(t testing.TB) *core.Core {
	t.Helper()
	c, err := core.Start(context.Background(), core.Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// watch observes, in order, what clients publish on filter.
func watch(t testing.TB, c *core.Core, filter string) <-chan core.Message {
	t.Helper()
	ch, stop, err := c.Watch(filter)
	require.NoError(t, err)
	t.Cleanup(stop)
	return ch
}

func connFor(t *testing.T, c *core.Core, thing string) *mqttconn.Client {
	t.Helper()
	return connForB(t, c, thing)
}

// connForB registers thing (its certificate with the device policy) and
// returns a client for it, not yet running.
func connForB(t testing.TB, c *core.Core, thing string) *mqttconn.Client {
	t.Helper()
	got, creds, err := c.RegisterDevice(strings.TrimPrefix(thing, c.Names().ThingNamePrefix))
	require.NoError(t, err)
	require.Equal(t, thing, got)
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	require.NoError(t, err)
	conn, err := mqttconn.New(mqttconn.Options{
		Address: c.Endpoint(), ClientID: thing,
		TLSConfig: func() (*tls.Config, error) {
			return mqttconn.NewTLSConfig(c.RootCAPEM(), cert, "127.0.0.1", false)
		},
		Backoff: backoff.Policy{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond},
		Logger:  quiet,
	})
	require.NoError(t, err)
	return conn
}

func goRun(t *testing.T, fn func(ctx context.Context)) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); fn(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func deadline(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func receive(t *testing.T, ch <-chan core.Message, n int) []string {
	t.Helper()
	var out []string
	for len(out) < n {
		select {
		case m := <-ch:
			out = append(out, string(m.Payload))
		case <-time.After(20 * time.Second):
			t.Fatalf("received %d of %d messages: %v", len(out), n, out)
		}
	}
	return out
}

func TestOfflineMessagesSurviveRestartAndArriveInOrder(t *testing.T) {
	dir := t.TempDir()
	ob, err := outbox.Open(dir, outbox.Options{Logger: quiet})
	require.NoError(t, err)
	ctx := deadline(t)
	var want []string
	for i := 0; i < 20; i++ {
		p := fmt.Sprintf("m%02d", i)
		want = append(want, p)
		require.NoError(t, ob.Publish(ctx, protocol.DataTopic("dev-a", "status"), []byte(p)))
	}
	assert.Equal(t, 20, ob.Len())
	// Every accepted message is already a file on disk.
	files, err := filepath.Glob(filepath.Join(dir, "*.msg"))
	require.NoError(t, err)
	assert.Len(t, files, 20)

	// "Restart": a new Outbox on the same directory, a leftover temp file of
	// an interrupted write is ignored and cleaned.
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".00000000000000000021.msg.tmp-1"), []byte("{"), 0o600))
	ob2, err := outbox.Open(dir, outbox.Options{Logger: quiet})
	require.NoError(t, err)
	assert.Equal(t, 20, ob2.Len())
	id, err := ob2.Enqueue(ctx, outbox.Message{Topic: protocol.DataTopic("dev-a", "status"), Payload: []byte("m20")})
	require.NoError(t, err)
	assert.NotEmpty(t, id)
	want = append(want, "m20")

	b := startCloud(t)
	seen := watch(t, b, "dt/fleet/#")
	c := connFor(t, b, "dev-a")
	goRun(t, func(ctx context.Context) { _ = c.Run(ctx) })
	goRun(t, func(ctx context.Context) { _ = ob2.Run(ctx, c) })
	assert.Equal(t, want, receive(t, seen, len(want)))
	require.NoError(t, ob2.WaitEmpty(ctx))
	files, err = filepath.Glob(filepath.Join(dir, "*"))
	require.NoError(t, err)
	assert.Equal(t, []string{filepath.Join(dir, "dead")}, files, "delivered messages are deleted")
}

func TestDeliveryContinuesAcrossBrokerRestart(t *testing.T) {
	b := startCloud(t)
	seen := watch(t, b, "dt/fleet/#")
	c := connFor(t, b, "dev-a")
	ob, err := outbox.Open(t.TempDir(), outbox.Options{Logger: quiet})
	require.NoError(t, err)
	goRun(t, func(ctx context.Context) { _ = c.Run(ctx) })
	goRun(t, func(ctx context.Context) { _ = ob.Run(ctx, c) })
	ctx := deadline(t)
	topic := protocol.DataTopic("dev-a", "status")
	require.NoError(t, ob.Publish(ctx, topic, []byte("before")))
	assert.Equal(t, []string{"before"}, receive(t, seen, 1))

	b.StopBroker()
	for i := 0; i < 5; i++ {
		require.NoError(t, ob.Publish(ctx, topic, []byte(fmt.Sprintf("offline-%d", i))))
	}
	require.NoError(t, b.StartBroker())
	got := receive(t, seen, 5)
	assert.Equal(t, []string{"offline-0", "offline-1", "offline-2", "offline-3", "offline-4"}, got)
	require.NoError(t, ob.WaitEmpty(ctx))
}

func TestPoisonMessageGoesToDeadLettersAndQueueMovesOn(t *testing.T) {
	b := startCloud(t)
	seen := watch(t, b, "dt/fleet/#")
	c := connFor(t, b, "dev-a")
	ob, err := outbox.Open(t.TempDir(), outbox.Options{Logger: quiet, MaxAttempts: 2, Retry: backoff.Policy{Initial: time.Millisecond, Max: 5 * time.Millisecond}})
	require.NoError(t, err)
	ctx := deadline(t)
	// dev-a may not publish on dev-b's topic: the broker drops the
	// connection every time, as AWS IoT Core does.
	require.NoError(t, ob.Publish(ctx, protocol.DataTopic("dev-b", "status"), []byte("forbidden")))
	require.NoError(t, ob.Publish(ctx, protocol.DataTopic("dev-a", "status"), []byte("allowed")))
	goRun(t, func(ctx context.Context) { _ = c.Run(ctx) })
	goRun(t, func(ctx context.Context) { _ = ob.Run(ctx, c) })
	assert.Equal(t, []string{"allowed"}, receive(t, seen, 1))
	require.NoError(t, ob.WaitEmpty(ctx))
	dead, err := ob.Dead()
	require.NoError(t, err)
	assert.Equal(t, []string{"00000000000000000001.msg"}, dead)
}

func TestCorruptFileAndLimits(t *testing.T) {
	dir := t.TempDir()
	ob, err := outbox.Open(dir, outbox.Options{Logger: quiet, MaxMessages: 2})
	require.NoError(t, err)
	ctx := deadline(t)
	require.NoError(t, ob.Publish(ctx, "dt/fleet/dev-a/x", []byte("1")))
	require.NoError(t, ob.Publish(ctx, "dt/fleet/dev-a/x", []byte("2")))
	require.ErrorIs(t, ob.Publish(ctx, "dt/fleet/dev-a/x", []byte("3")), outbox.ErrFull)
	require.ErrorContains(t, ob.Publish(ctx, "", nil), "empty topic")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "00000000000000000001.msg"), []byte("garbage"), 0o600))
	b := startCloud(t)
	seen := watch(t, b, "dt/fleet/#")
	c := connFor(t, b, "dev-a")
	goRun(t, func(ctx context.Context) { _ = c.Run(ctx) })
	goRun(t, func(ctx context.Context) { _ = ob.Run(ctx, c) })
	assert.Equal(t, []string{"2"}, receive(t, seen, 1))
	require.NoError(t, ob.WaitEmpty(ctx))
	dead, err := ob.Dead()
	require.NoError(t, err)
	assert.Equal(t, []string{"00000000000000000001.msg"}, dead)
}
