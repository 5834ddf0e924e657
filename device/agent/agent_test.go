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
	"github.com/iot-fleet/iot-fleet/device/provision"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/core"
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
func testConfig(t *testing.T, b *cloud) config.Config {
	t.Helper()
	dir := t.TempDir()
	serialFile := filepath.Join(dir, "serial-number")
	require.NoError(t, os.WriteFile(serialFile, []byte(serial+"\x00"), 0o444))
	host, port, err := net.SplitHostPort(b.Endpoint())
	require.NoError(t, err)
	cfgJSON := `{
		"endpoint": "` + host + `", "port": ` + port + `,
		"rootCAFile": "` + filepath.Join(b.dir, "root-ca.pem") + `", "stateDir": "` + filepath.Join(dir, "state") + `",
		"logLevel": "debug",
		"provisioning": {
			"claimCertFile": "` + filepath.Join(b.dir, "claim.pem") + `", "claimKeyFile": "` + filepath.Join(b.dir, "claim.key") + `",
			"templateName": "` + b.Names().TemplateName + `", "serialFiles": ["` + filepath.Join(dir, "missing") + `", "` + serialFile + `"],
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

// testOptions are the options the tests run an agent with: cfg, version
// test-1, features, and a debug log into logs.
func testOptions(cfg config.Config, logs *testenv.LogBuffer, features []FeatureFactory) Options {
	return Options{
		Config: cfg, Version: "test-1", Features: features,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// launch runs an agent with opts until cancel is called or the test ends;
// Run's result arrives on errc.
func launch(t *testing.T, opts Options) (a *Agent, errc <-chan error, cancel context.CancelFunc) {
	t.Helper()
	a, err := New(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	return a, runErr, cancel
}

// stopper returns a stop that cancels the agent and requires Run to
// return nil; it runs (once) when the test ends at the latest.
func stopper(t *testing.T, cancel context.CancelFunc, errc <-chan error) func() {
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
	return stop
}

// waitReady waits until a is ready; Run returning first fails the test.
func waitReady(t *testing.T, a *Agent, errc <-chan error) {
	t.Helper()
	select {
	case <-a.Ready():
	case err := <-errc:
		t.Fatalf("agent stopped before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
}

// startAgent runs an agent that notifies n, until the returned stop is
// called, and waits until it is ready.
func startAgent(t *testing.T, cfg config.Config, logs *testenv.LogBuffer, n *notifications, features ...FeatureFactory) (*Agent, func()) {
	t.Helper()
	opts := testOptions(cfg, logs, features)
	opts.Notify = n.notify
	opts.WatchdogInterval = func() (time.Duration, error) { return time.Hour, nil }
	a, errc, cancel := launch(t, opts)
	stop := stopper(t, cancel, errc)
	waitReady(t, a, errc)
	return a, stop
}

func next(t *testing.T, ch <-chan core.Message) core.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(20 * time.Second):
		t.Fatal("no message")
		return core.Message{}
	}
}

func TestFirstBootProvisionsConnectsAndServes(t *testing.T) {
	b := startCloud(t, cloudOptions{})
	cfg := testConfig(t, b)
	status := b.watch("dt/fleet/+/status")
	echoes := b.watch("dt/fleet/+/echo")
	logs, n := &testenv.LogBuffer{}, &notifications{}
	feat := &echoFeature{stopped: make(chan struct{})}
	a, stop := startAgent(t, cfg, logs, n, func(*Runtime) (Feature, error) { return feat, nil })

	thing := "dev-" + serial
	rt := a.Runtime()
	require.NotNil(t, rt)
	assert.Equal(t, thing, rt.Identity.ThingName)

	// Claim connection first, then the device identity with the thing name.
	var ids []string
	for _, c := range b.log.list() {
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

	b.Publish(protocol.CommandTopic(thing, "echo"), []byte("hello"))
	assert.Equal(t, "hello", string(next(t, echoes).Payload))

	// Broker restart: the feature's subscription is re-established and the
	// status is published again.
	require.NoError(t, b.RestartBroker())
	next(t, status)
	b.Publish(protocol.CommandTopic(thing, "echo"), []byte("again"))
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
	b := startCloud(t, cloudOptions{})
	cfg := testConfig(t, b)
	n := &notifications{}
	_, stop := startAgent(t, cfg, &testenv.LogBuffer{}, n)
	stop()
	before := len(b.log.list())
	_, stop2 := startAgent(t, cfg, &testenv.LogBuffer{}, n)
	defer stop2()
	conns := b.log.list()[before:]
	require.NotEmpty(t, conns)
	for _, c := range conns {
		assert.Equal(t, "dev-"+serial, c.ClientID, "no claim connection after provisioning")
	}
	assert.Equal(t, 1, b.csrs())
	s, err := store.Open(cfg.StateDir)
	require.NoError(t, err)
	_, found, err := s.Identity()
	require.NoError(t, err)
	assert.True(t, found)
}

func TestSystemdNotifyOverRealSocket(t *testing.T) {
	n := listenNotify(t)
	require.NoError(t, SystemdNotifier("READY=1"))
	i := n.WaitFor(t, 0, "READY=1", nil, func(string) bool { return true })
	assert.Equal(t, "READY=1", n.List()[i])

	t.Setenv("NOTIFY_SOCKET", "")
	require.NoError(t, SystemdNotifier("READY=1"), "outside systemd notifying is a no-op")
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	_, err := New(Options{Config: config.Default()})
	var fe *config.FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "endpoint", fe.Field)
}
