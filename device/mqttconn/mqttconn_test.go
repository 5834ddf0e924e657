package mqttconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// startCloud runs the local IoT Core (sim/core: MQTT over mutual TLS with
// the stack's policies) until the test ends.
func startCloud(t *testing.T, opts core.Options) *core.Core {
	t.Helper()
	c, err := core.Start(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// device is a registered thing's identity.
type device struct {
	thing, certID string
	cert          tls.Certificate
}

// registerDevice creates thing with an ACTIVE certificate carrying the
// device policy.
func registerDevice(t *testing.T, c *core.Core, thing string) device {
	t.Helper()
	got, creds, err := c.RegisterDevice(strings.TrimPrefix(thing, c.Names().ThingNamePrefix))
	require.NoError(t, err)
	require.Equal(t, thing, got)
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	require.NoError(t, err)
	return device{thing: thing, certID: creds.CertificateID, cert: cert}
}

// watch observes, in order, what clients publish on filter.
func watch(t *testing.T, c *core.Core, filter string) <-chan core.Message {
	t.Helper()
	ch, stop, err := c.Watch(filter)
	require.NoError(t, err)
	t.Cleanup(stop)
	return ch
}

func deviceOptions(t *testing.T, c *core.Core, d device, clientID string) Options {
	t.Helper()
	return Options{
		Address:  c.Endpoint(),
		ClientID: clientID,
		TLSConfig: func() (*tls.Config, error) {
			return NewTLSConfig(c.RootCAPEM(), d.cert, "127.0.0.1", false)
		},
		KeepAlive: 5 * time.Second,
		Backoff:   backoff.Policy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		Logger:    testLogger(t),
	}
}

func deviceClient(t *testing.T, c *core.Core, d device, clientID string) *Client {
	t.Helper()
	cl, err := New(deviceOptions(t, c, d, clientID))
	require.NoError(t, err)
	return cl
}

func run(t *testing.T, c *Client) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return cancel
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type collector struct {
	mu   sync.Mutex
	msgs []string
	ch   chan string
}

func newCollector() *collector { return &collector{ch: make(chan string, 100)} }

func (c *collector) handle(topic string, payload []byte) {
	c.mu.Lock()
	c.msgs = append(c.msgs, topic+" "+string(payload))
	c.mu.Unlock()
	c.ch <- topic + " " + string(payload)
}

func (c *collector) next(t *testing.T) string {
	t.Helper()
	select {
	case m := <-c.ch:
		return m
	case <-time.After(15 * time.Second):
		t.Fatal("no message delivered")
		return ""
	}
}

func TestConnectSubscribePublishAndResubscribeAfterBrokerRestart(t *testing.T) {
	b := startCloud(t, core.Options{})
	kp := registerDevice(t, b, "dev-a")
	c := deviceClient(t, b, kp, "dev-a")
	got := newCollector()
	require.NoError(t, c.Subscribe(waitCtx(t), protocol.CommandTopic("dev-a", "#"), 1, got.handle))
	var hooks atomic.Int32
	hookCh := make(chan struct{}, 10)
	c.OnConnect(func(ctx context.Context) { hooks.Add(1); hookCh <- struct{}{} })
	watched := watch(t, b, "dt/fleet/#")
	run(t, c)
	ctx := waitCtx(t)
	require.NoError(t, c.WaitConnected(ctx))
	<-hookCh

	b.Publish(protocol.CommandTopic("dev-a", "ping"), []byte("1"))
	assert.Equal(t, "cmd/fleet/dev-a/ping 1", got.next(t))

	require.NoError(t, c.Publish(ctx, protocol.DataTopic("dev-a", "status"), 1, []byte("up")))
	select {
	case m := <-watched:
		assert.Equal(t, "dt/fleet/dev-a/status", m.Topic)
		assert.Equal(t, "up", string(m.Payload))
		assert.Equal(t, "dev-a", m.ClientID)
	case <-ctx.Done():
		t.Fatal("publish not seen by the broker")
	}

	// The restarted broker has no session for dev-a: only the agent's own
	// resubscription makes the next command arrive.
	require.NoError(t, b.RestartBroker())
	<-hookCh
	require.NoError(t, c.WaitConnected(ctx))
	assert.GreaterOrEqual(t, c.Connections(), int64(2))
	b.Publish(protocol.CommandTopic("dev-a", "ping"), []byte("2"))
	assert.Equal(t, "cmd/fleet/dev-a/ping 2", got.next(t))
	assert.GreaterOrEqual(t, hooks.Load(), int32(2))

	// A subscription added while connected is made at once.
	late := newCollector()
	require.NoError(t, c.Subscribe(ctx, protocol.JobsNotifyNextTopic("dev-a"), 1, late.handle))
	b.Publish(protocol.JobsNotifyNextTopic("dev-a"), []byte("{}"))
	assert.Equal(t, "$aws/things/dev-a/jobs/notify-next {}", late.next(t))
	require.ErrorContains(t, c.Subscribe(ctx, protocol.JobsNotifyNextTopic("dev-a"), 1, late.handle), "already registered")
}

func TestRefusedSubscriptionIsReportedAndConnectionStays(t *testing.T) {
	b := startCloud(t, core.Options{})
	kp := registerDevice(t, b, "dev-a")
	c := deviceClient(t, b, kp, "dev-a")
	run(t, c)
	ctx := waitCtx(t)
	require.NoError(t, c.WaitConnected(ctx))
	err := c.Subscribe(ctx, protocol.CommandTopic("dev-b", "#"), 1, func(string, []byte) {})
	var se *SubscribeError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, []string{"cmd/fleet/dev-b/#"}, se.Refused)
	assert.True(t, c.IsConnected())
}

func TestUnauthorizedPublishIsNotConfirmed(t *testing.T) {
	// Like AWS IoT Core, the broker drops a client that publishes outside its
	// policy: the publish must come back as an error, never as success.
	b := startCloud(t, core.Options{})
	kp := registerDevice(t, b, "dev-a")
	c := deviceClient(t, b, kp, "dev-a")
	run(t, c)
	ctx := waitCtx(t)
	require.NoError(t, c.WaitConnected(ctx))
	err := c.Publish(ctx, protocol.DataTopic("dev-b", "status"), 1, []byte("x"))
	require.Error(t, err)
	require.NoError(t, c.WaitConnected(ctx), "the client reconnects after being dropped")
}

func TestRefusedConnectIsRetriedWithBackoff(t *testing.T) {
	b := startCloud(t, core.Options{})
	kp := registerDevice(t, b, "dev-a")
	// The policy wants the client id to be the thing name: the core closes
	// the connection after CONNECT, every time, and the client retries.
	o := deviceOptions(t, b, kp, "dev-other")
	attempts := make(chan error, 100)
	o.OnAttempt = func(err error) {
		select {
		case attempts <- err:
		default:
		}
	}
	c, err := New(o)
	require.NoError(t, err)
	run(t, c)
	for range 3 {
		select {
		case err := <-attempts:
			require.Error(t, err, "a connect with a foreign client id succeeded")
			assert.True(t, IsRefused(err), "%v", err)
		case <-waitCtx(t).Done():
			t.Fatal("no retried connect")
		}
	}
	for _, cl := range b.Clients() {
		assert.NotEqual(t, "dev-other", cl.ClientID)
	}
	assert.False(t, c.IsConnected())
	err = c.Publish(context.Background(), "dt/fleet/dev-a/x", 1, nil)
	assert.ErrorIs(t, err, ErrNotConnected)
}

func TestReconnectLoadsFreshTLSConfig(t *testing.T) {
	b := startCloud(t, core.Options{})
	kp := registerDevice(t, b, "dev-a")
	var loads atomic.Int32
	o := deviceOptions(t, b, kp, "dev-a")
	load := o.TLSConfig
	o.TLSConfig = func() (*tls.Config, error) {
		loads.Add(1)
		return load()
	}
	o.Backoff = backoff.Policy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	c, err := New(o)
	require.NoError(t, err)
	hookCh := make(chan struct{}, 10)
	c.OnConnect(func(context.Context) { hookCh <- struct{}{} })
	run(t, c)
	<-hookCh
	c.Reconnect()
	<-hookCh
	assert.Equal(t, int64(2), c.Connections())
	assert.Equal(t, int32(2), loads.Load())
}

func TestNewValidatesOptions(t *testing.T) {
	tc := func() (*tls.Config, error) { return nil, errors.New("x") }
	_, err := New(Options{ClientID: "a", TLSConfig: tc})
	require.ErrorContains(t, err, "address")
	_, err = New(Options{Address: "nohost", ClientID: "a", TLSConfig: tc})
	require.ErrorContains(t, err, "nohost")
	_, err = New(Options{Address: "h:1", TLSConfig: tc})
	require.ErrorContains(t, err, "client id")
	_, err = New(Options{Address: "h:1", ClientID: "a"})
	require.ErrorContains(t, err, "TLSConfig")
}

func TestTLSConfigALPN(t *testing.T) {
	pki := newCA(t)
	srvCert, err := pki.ServerCertificate("127.0.0.1")
	require.NoError(t, err)
	cliCert := clientCert(t, pki)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srvCert}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: pki.Pool(), NextProtos: []string{ALPNProtocol}, MinVersion: tls.VersionTLS12,
	})
	require.NoError(t, err)
	defer l.Close()
	negotiated := make(chan string, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			negotiated <- err.Error()
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			negotiated <- err.Error()
			return
		}
		negotiated <- tc.ConnectionState().NegotiatedProtocol
	}()
	cfg, err := NewTLSConfig(pki.CertPEM(), cliCert, "127.0.0.1", true)
	require.NoError(t, err)
	assert.Equal(t, uint16(tls.VersionTLS12), cfg.MinVersion)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Addr().String(), cfg)
	require.NoError(t, err)
	defer conn.Close()
	assert.Equal(t, ALPNProtocol, conn.ConnectionState().NegotiatedProtocol)
	assert.Equal(t, ALPNProtocol, <-negotiated)

	_, err = NewTLSConfig([]byte("junk"), cliCert, "x", false)
	require.ErrorContains(t, err, "root CA")
}
