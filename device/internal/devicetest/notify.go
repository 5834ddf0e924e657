package devicetest

import (
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// NotifySocket is a real systemd $NOTIFY_SOCKET (a unixgram socket in the
// test's temporary directory) that keeps every datagram, in order. It is
// closed when the test ends.
type NotifySocket struct {
	// Path is the socket's path, the value for NOTIFY_SOCKET.
	Path string

	mu     sync.Mutex
	states []string
	more   chan struct{}
}

// ListenNotify opens a NotifySocket.
func ListenNotify(t *testing.T) *NotifySocket {
	t.Helper()
	n := &NotifySocket{Path: filepath.Join(t.TempDir(), "notify.sock"), more: make(chan struct{}, 1)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.Path, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.states = append(n.states, string(buf[:k]))
			n.mu.Unlock()
			select {
			case n.more <- struct{}{}:
			default:
			}
		}
	}()
	return n
}

// List returns every notification received so far, in order.
func (n *NotifySocket) List() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.states)
}

// WaitFor waits until a notification at index from or later satisfies ok
// and returns its index. The test fails after 30s, or as soon as exited
// delivers (the notifying process ended; a nil channel never does).
func (n *NotifySocket) WaitFor(t *testing.T, from int, what string, exited <-chan error, ok func(string) bool) int {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		for i, s := range n.List() {
			if i >= from && ok(s) {
				return i
			}
		}
		select {
		case <-n.more:
		case err := <-exited:
			t.Fatalf("the process exited (%v) before notification %s after #%d; notifications: %q", err, what, from, n.List())
		case <-deadline:
			t.Fatalf("no notification %s after #%d; notifications: %q", what, from, n.List())
		}
	}
}
