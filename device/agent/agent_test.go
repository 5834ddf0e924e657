package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/device/internal/testbroker"
	"github.com/iot-fleet/iot-fleet/device/provision"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

const serial = "10000000cafe0001"

type notifications struct {
	mu     sync.Mutex
	states []string
}

func (n *notifications) notify(s string) error {
	n.mu.Lock()
	n.states = append(n.states, s)
	n.mu.Unlock()
	return nil
}

func (n *notifications) list() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.states...)
}

// testConfig points the agent at the test broker, with the serial in a
// device-tree-like file.
func testConfig(t *testing.T, b *testbroker.Broker) config.Config {
	t.Helper()
	dir := t.TempDir()
	serialFile := filepath.Join(dir, "serial-number")
	require.NoError(t, os.WriteFile(serialFile, []byte(serial+"\x00"), 0o444))
	host, port, err := net.SplitHostPort(b.Addr)
	require.NoError(t, err)
	cfgJSON := `{
		"endpoint": "` + host + `", "port": ` + port + `,
		"rootCAFile": "` + b.CAFile + `", "stateDir": "` + filepath.Join(dir, "state") + `",
		"logLevel": "debug",
		"provisioning": {
			"claimCertFile": "` + b.Claim.CertFile + `", "claimKeyFile": "` + b.Claim.KeyFile + `",
			"templateName": "` + b.TemplateName() + `", "serialFiles": ["` + filepath.Join(dir, "missing") + `", "` + serialFile + `"],
			"responseTimeout": "5s", "retryMin": "5ms", "retryMax": "50ms", "deniedBackoff": "1s"
		},
		"mqtt": {"reconnectMin": "10ms", "reconnectMax": "100ms", "connectTimeout": "5s"}
	}`
	cfg, err := config.Parse([]byte(cfgJSON))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	return cfg
}

// echoFeature answers cmd/fleet/<thing>/echo on dt/fleet/<thing>/echo
// through the outbox, like the jobs engine reports through its Publisher.
type echoFeature struct {
	stopped chan struct{}
}

func (e *echoFeature) Name() string { return "echo" }

func (e *echoFeature) Start(ctx context.Context, rt *Runtime) error {
	thing := rt.Identity.ThingName
	return rt.Conn.Subscribe(ctx, protocol.CommandTopic(thing, "echo"), 1, func(_ string, payload []byte) {
		_ = rt.Outbox.Publish(ctx, protocol.DataTopic(thing, "echo"), payload)
	})
}

func (e *echoFeature) Stop() { close(e.stopped) }

func startAgent(t *testing.T, cfg config.Config, logs *devicetest.LogBuffer, n *notifications, features ...FeatureFactory) (*Agent, func()) {
	t.Helper()
	a, err := New(Options{
		Config: cfg, Version: "test-1", Features: features, Notify: n.notify,
		Logger:           slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		WatchdogInterval: func() (time.Duration, error) { return time.Hour, nil },
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Fatal("agent did not stop")
		}
	}
	t.Cleanup(stop)
	select {
	case <-a.Ready():
	case err := <-errc:
		t.Fatalf("agent stopped before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
	return a, stop
}

func next(t *testing.T, ch <-chan testbroker.Received) testbroker.Received {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(20 * time.Second):
		t.Fatal("no message")
		return testbroker.Received{}
	}
}

func TestFirstBootProvisionsConnectsAndServes(t *testing.T) {
	b := testbroker.Start(t, testbroker.Options{})
	cfg := testConfig(t, b)
	status := b.Watch(t, "dt/fleet/+/status")
	echoes := b.Watch(t, "dt/fleet/+/echo")
	logs, n := &devicetest.LogBuffer{}, &notifications{}
	feat := &echoFeature{stopped: make(chan struct{})}
	a, stop := startAgent(t, cfg, logs, n, func(*Runtime) (Feature, error) { return feat, nil })

	thing := "dev-" + serial
	rt := a.Runtime()
	require.NotNil(t, rt)
	assert.Equal(t, thing, rt.Identity.ThingName)

	// Claim connection first, then the device identity with the thing name.
	var ids []string
	for _, c := range b.Connects() {
		if c.Accepted {
			ids = append(ids, c.ClientID)
		}
	}
	require.GreaterOrEqual(t, len(ids), 2)
	assert.Equal(t, protocol.ClaimClientID(serial), ids[0])
	assert.Equal(t, thing, ids[len(ids)-1])

	st := next(t, status)
	var s Status
	require.NoError(t, json.Unmarshal(st.Payload, &s))
	assert.Equal(t, thing, s.ThingName)
	assert.Equal(t, "test-1", s.Version)

	require.NoError(t, b.Publish(protocol.CommandTopic(thing, "echo"), []byte("hello")))
	assert.Equal(t, "hello", string(next(t, echoes).Payload))

	// Broker restart: the feature's subscription is re-established and the
	// status is published again.
	b.Restart(t)
	next(t, status)
	require.NoError(t, b.Publish(protocol.CommandTopic(thing, "echo"), []byte("again")))
	assert.Equal(t, "again", string(next(t, echoes).Payload))

	stop()
	<-feat.stopped
	states := n.list()
	require.NotEmpty(t, states)
	assert.Contains(t, states, "WATCHDOG=1")
	ready, stopping := -1, -1
	for i, s := range states {
		if strings.HasPrefix(s, "READY=1") {
			ready = i
		}
		if s == "STOPPING=1" {
			stopping = i
		}
	}
	require.GreaterOrEqual(t, ready, 0, "%v", states)
	assert.Greater(t, stopping, ready, "%v", states)

	// No key material in the logs.
	keyPEM, err := os.ReadFile(filepath.Join(cfg.StateDir, provision.KeyFile))
	require.NoError(t, err)
	out := logs.String()
	assert.NotContains(t, out, "PRIVATE KEY")
	for _, line := range strings.Split(string(keyPEM), "\n") {
		if len(line) > 20 {
			assert.NotContains(t, out, line)
		}
	}
}

func TestRestartUsesStoredIdentity(t *testing.T) {
	b := testbroker.Start(t, testbroker.Options{})
	cfg := testConfig(t, b)
	n := &notifications{}
	_, stop := startAgent(t, cfg, &devicetest.LogBuffer{}, n)
	stop()
	before := len(b.Connects())
	_, stop2 := startAgent(t, cfg, &devicetest.LogBuffer{}, n)
	defer stop2()
	conns := b.Connects()[before:]
	require.NotEmpty(t, conns)
	for _, c := range conns {
		assert.Equal(t, "dev-"+serial, c.ClientID, "no claim connection after provisioning")
	}
	assert.Equal(t, 1, b.Requests(testbroker.APICreateCertFromCSR))
	s, err := store.Open(cfg.StateDir)
	require.NoError(t, err)
	_, found, err := s.Identity()
	require.NoError(t, err)
	assert.True(t, found)
}

func TestSystemdNotifyOverRealSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	require.NoError(t, err)
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	require.NoError(t, SystemdNotifier("READY=1"))
	buf := make([]byte, 256)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	k, _, err := conn.ReadFromUnix(buf)
	require.NoError(t, err)
	assert.Equal(t, "READY=1", string(buf[:k]))

	t.Setenv("NOTIFY_SOCKET", "")
	require.NoError(t, SystemdNotifier("READY=1"), "outside systemd notifying is a no-op")
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	_, err := New(Options{Config: config.Default()})
	var fe *config.FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "endpoint", fe.Field)
}
