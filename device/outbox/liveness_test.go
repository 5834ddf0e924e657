package outbox_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/device/outbox"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Offline for long is normal: Run keeps beating while it waits for the
// connection, and while idle; a publish is announced as Busy for AckWait.
func TestRunBeatsOfflineIdleAndAnnouncesPublishes(t *testing.T) {
	b := startCloud(t)
	const thing = "dev-live"
	conn := connFor(t, b, thing)
	live := &devicetest.Liveness{}
	ob, err := outbox.Open(t.TempDir(), outbox.Options{Logger: quiet, Liveness: live, AckWait: 42 * time.Second})
	require.NoError(t, err)
	topic := protocol.DataTopic(thing, "status")
	_, err = ob.Enqueue(context.Background(), outbox.Message{Topic: topic, Payload: []byte("1")})
	require.NoError(t, err)
	goRun(t, func(ctx context.Context) { _ = ob.Run(ctx, conn) })

	// Not connected (conn is not running): beats go on, nothing is sent.
	n := live.Beats()
	require.Eventually(t, func() bool { return live.Beats() >= n+5 }, 10*time.Second, time.Millisecond)
	assert.Equal(t, 1, ob.Len())

	got := watch(t, b, topic)
	goRun(t, func(ctx context.Context) { _ = conn.Run(ctx) })
	receive(t, got, 1)
	require.NoError(t, ob.WaitEmpty(deadline(t)))
	assert.Contains(t, live.Announced(), 42*time.Second, "the publish is announced with AckWait")

	// Idle: beats go on.
	n = live.Beats()
	require.Eventually(t, func() bool { return live.Beats() >= n+5 }, 10*time.Second, time.Millisecond)
}

func TestCountReadsWithoutOpening(t *testing.T) {
	dir := t.TempDir()
	pending, dead, err := outbox.Count(dir + "/missing")
	require.NoError(t, err)
	assert.Equal(t, [2]int{0, 0}, [2]int{pending, dead})

	ob, err := outbox.Open(dir, outbox.Options{Logger: quiet})
	require.NoError(t, err)
	for range 3 {
		_, err = ob.Enqueue(context.Background(), outbox.Message{Topic: "dt/fleet/x/status", Payload: []byte("1")})
		require.NoError(t, err)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "dead", "00000000000000000009.msg"), []byte("{}"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".tmp-00000000000000000010.msg"), []byte("{"), 0o600))
	pending, dead, err = outbox.Count(dir)
	require.NoError(t, err)
	assert.Equal(t, 3, pending)
	assert.Equal(t, 1, dead)
	assert.FileExists(t, filepath.Join(dir, ".tmp-00000000000000000010.msg"), "Count changes nothing")
}
