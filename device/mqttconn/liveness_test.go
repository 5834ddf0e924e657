package mqttconn

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

func TestRunBeatsWhileConnectedAndStopsWhenAHandlerBlocks(t *testing.T) {
	b := startCloud(t, core.Options{})
	kp := registerDevice(t, b, "dev-a")
	c := deviceClient(t, b, kp, "dev-a")
	live := &devicetest.Liveness{}
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
	n := live.Beats()
	require.Eventually(t, func() bool { return live.Beats() >= n+3 }, 10*time.Second, time.Millisecond)
	busy := live.Announced()
	require.NotEmpty(t, busy, "the connection attempt is announced as Busy")
	assert.Equal(t, 2*c.opts.ConnectTimeout+c.opts.KeepAlive, busy[0])

	// A handler that blocks the dispatcher: no message reaches the other
	// handlers, so the connection stops beating.
	b.Publish(protocol.CommandTopic("dev-a", "block"), []byte("x"))
	<-entered
	require.Eventually(t, func() bool {
		before := live.Beats()
		deadline := time.Now().Add(10 * live.Interval())
		for time.Now().Before(deadline) {
			if live.Beats() != before {
				return false
			}
			time.Sleep(live.Interval())
		}
		return true
	}, 10*time.Second, time.Millisecond, "beats go on while a handler blocks")

	close(release)
	n = live.Beats()
	require.Eventually(t, func() bool { return live.Beats() > n }, 10*time.Second, time.Millisecond, "beats resume")
}
