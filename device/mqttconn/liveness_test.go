package mqttconn

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/internal/testbroker"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// beats records what Run reports to its supervisor.
type beats struct {
	mu    sync.Mutex
	beats int
	busy  []time.Duration
}

func (b *beats) Beat()                   { b.mu.Lock(); b.beats++; b.mu.Unlock() }
func (b *beats) Busy(d time.Duration)    { b.mu.Lock(); b.busy = append(b.busy, d); b.mu.Unlock() }
func (b *beats) Interval() time.Duration { return 20 * time.Millisecond }
func (b *beats) count() int              { b.mu.Lock(); defer b.mu.Unlock(); return b.beats }

func TestRunBeatsWhileConnectedAndStopsWhenAHandlerBlocks(t *testing.T) {
	b := testbroker.Start(t, testbroker.Options{})
	kp := b.RegisterDevice(t, "dev-a")
	c := deviceClient(t, b, kp, "dev-a")
	live := &beats{}
	c.opts.Liveness = live
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	require.NoError(t, c.Subscribe(waitCtx(t), protocol.CommandTopic("dev-a", "block"), 1, func(string, []byte) {
		entered <- struct{}{}
		<-release
	}))
	run(t, c)
	require.NoError(t, c.WaitConnected(waitCtx(t)))

	// Connected and idle: beats keep coming.
	n := live.count()
	require.Eventually(t, func() bool { return live.count() >= n+3 }, 10*time.Second, time.Millisecond)
	live.mu.Lock()
	require.NotEmpty(t, live.busy, "the connection attempt is announced as Busy")
	assert.Equal(t, 2*c.opts.ConnectTimeout+c.opts.KeepAlive, live.busy[0])
	live.mu.Unlock()

	// A handler that blocks the dispatcher: no message reaches the other
	// handlers, so the connection stops beating.
	require.NoError(t, b.Publish(protocol.CommandTopic("dev-a", "block"), []byte("x")))
	<-entered
	require.Eventually(t, func() bool {
		before := live.count()
		deadline := time.Now().Add(10 * live.Interval())
		for time.Now().Before(deadline) {
			if live.count() != before {
				return false
			}
			time.Sleep(live.Interval())
		}
		return true
	}, 10*time.Second, time.Millisecond, "beats go on while a handler blocks")

	close(release)
	n = live.count()
	require.Eventually(t, func() bool { return live.count() > n }, 10*time.Second, time.Millisecond, "beats resume")
}
