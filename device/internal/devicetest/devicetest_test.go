package devicetest

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLivenessRecordsBeatsAndBusy(t *testing.T) {
	var l Liveness
	assert.Equal(t, 0, l.Beats())
	assert.Empty(t, l.Announced())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				l.Beat()
			}
		}()
	}
	wg.Wait()
	l.Busy(time.Second)
	l.Busy(42 * time.Second)
	assert.Equal(t, 200, l.Beats())
	got := l.Announced()
	assert.Equal(t, []time.Duration{time.Second, 42 * time.Second}, got)
	got[0] = 0
	assert.Equal(t, time.Second, l.Announced()[0], "Announced returns a copy")
	assert.Equal(t, 20*time.Millisecond, l.Interval())
}

func TestNotifySocketKeepsDatagramsInOrder(t *testing.T) {
	n := ListenNotify(t)
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: n.Path, Net: "unixgram"})
	require.NoError(t, err)
	defer conn.Close()
	for _, s := range []string{"READY=1", "WATCHDOG=1", "STATUS=busy", "WATCHDOG=1"} {
		_, err := conn.Write([]byte(s))
		require.NoError(t, err)
	}
	isPing := func(s string) bool { return s == "WATCHDOG=1" }
	assert.Equal(t, 1, n.WaitFor(t, 0, "WATCHDOG=1", nil, isPing))
	assert.Equal(t, 3, n.WaitFor(t, 2, "WATCHDOG=1 after #2", nil, isPing))
	exited := make(chan error)
	assert.Equal(t, 2, n.WaitFor(t, 0, "STATUS=", exited, func(s string) bool { return s == "STATUS=busy" }))
	assert.Equal(t, []string{"READY=1", "WATCHDOG=1", "STATUS=busy", "WATCHDOG=1"}, n.List())
}
