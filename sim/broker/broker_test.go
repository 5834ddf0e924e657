package broker_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/broker"
	"github.com/iot-fleet/iot-fleet/sim/ca"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// fixture is a broker whose clients may do anything (the policies are not
// what these tests are about).
type fixture struct {
	b   *broker.Broker
	ca  *ca.CA
	reg *registry.Registry
	log *testenv.LogBuffer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	authority, err := ca.New(ca.Options{})
	require.NoError(t, err)
	reg := registry.New(nil)
	params := policy.Params{Partition: "aws", Region: "local-1", AccountID: "000000000000", TemplateName: "t"}
	require.NoError(t, reg.CreatePolicy("all", policy.Document{Version: "2012-10-17", Statement: []policy.Statement{
		{Effect: "Allow", Action: []string{"iot:*"}, Resource: []string{"*"}},
	}}))
	serverCert, err := authority.ServerCertificate("127.0.0.1")
	require.NoError(t, err)
	logs := &testenv.LogBuffer{}
	b, err := broker.New(broker.Options{ServerCert: serverCert, ClientCAs: authority.Pool(), Registry: reg, ARN: params.ARN,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	require.NoError(t, err)
	require.NoError(t, b.Start())
	t.Cleanup(func() { _ = b.Close() })
	return &fixture{b: b, ca: authority, reg: reg, log: logs}
}

func (f *fixture) tlsConfig(t *testing.T) *tls.Config {
	t.Helper()
	iss, key, err := f.ca.NewKeyAndCertificate()
	require.NoError(t, err)
	require.NoError(t, f.reg.RegisterCertificate(iss.ID, iss.PEM, registry.CertActive, iss.Cert.NotAfter))
	require.NoError(t, f.reg.AttachPolicy("all", iss.ID))
	cert, err := tls.X509KeyPair([]byte(iss.PEM), key)
	require.NoError(t, err)
	return &tls.Config{RootCAs: f.ca.Pool(), Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}
}

// connect connects a client over TCP (whose socket buffers let the
// broker write far ahead of a slow reader's PUBACKs).
func (f *fixture) connect(t *testing.T, id string) paho.Client {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker("tls://" + f.b.Addr()).SetClientID(id).SetAutoReconnect(false).
		SetTLSConfig(f.tlsConfig(t)).SetKeepAlive(time.Minute).SetWriteTimeout(time.Minute)
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second), "connect %s", id)
	require.NoError(t, tok.Error())
	t.Cleanup(func() { cl.Disconnect(0) })
	return cl
}

// subscriber subscribes to filter at qos and records what it receives;
// with ack false it never acknowledges a QoS 1 message (it keeps reading).
type subscriber struct {
	mu   sync.Mutex
	got  map[string]bool
	dups int
}

func (f *fixture) subscriber(t *testing.T, id, filter string, qos byte, ack bool) *subscriber {
	t.Helper()
	s := &subscriber{got: map[string]bool{}}
	opts := paho.NewClientOptions().AddBroker("tls://" + f.b.Addr()).SetClientID(id).SetAutoReconnect(false).
		SetTLSConfig(f.tlsConfig(t)).SetKeepAlive(time.Minute).SetWriteTimeout(time.Minute).
		SetAutoAckDisabled(!ack).SetOrderMatters(false)
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second), "connect %s", id)
	require.NoError(t, tok.Error())
	t.Cleanup(func() { cl.Disconnect(0) })
	tok = cl.Subscribe(filter, qos, func(_ paho.Client, m paho.Message) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.got[string(m.Payload())] {
			s.dups++
		}
		s.got[string(m.Payload())] = true
	})
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	return s
}

func (s *subscriber) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

func (s *subscriber) duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dups
}

func (s *subscriber) has(payload string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[payload]
}

// publishAll has publishers publish total messages at qos on topic
// between them, numbered from first, each waiting for its PUBACK.
func (f *fixture) publishAll(t *testing.T, publishers, first, total int, topic string, qos byte) {
	t.Helper()
	var wg sync.WaitGroup
	for p := range publishers {
		cl := f.connect(t, fmt.Sprintf("publisher-%d-%d", first, p))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := first + p; i < first+total; i += publishers {
				tok := cl.Publish(topic, qos, false, fmt.Sprintf("m-%05d", i))
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					t.Errorf("publish %d: no PUBACK: %v", i, tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A subscriber that acknowledges nothing receives, without loss or
// duplicate, every QoS 1 message up to the inflight window
// (OutboundInflight); the next ones are dropped and counted as inflight
// drops, and logged. (The broker used to drop some 7% beyond 1024
// unacknowledged messages, silently, while the publishers got their
// PUBACKs.) One publisher, so deliveries are sequential and the window
// is reached exactly.
func TestInflightWindowKeepsEveryQoS1MessageUpToTheLimit(t *testing.T) {
	f := newFixture(t)
	sub := f.subscriber(t, "subscriber", "fan/in/#", 1, false)
	const over = 25
	f.publishAll(t, 1, 0, broker.OutboundInflight+over, "fan/in/x", 1)
	require.Eventually(t, func() bool { return sub.count() == broker.OutboundInflight }, 60*time.Second, 10*time.Millisecond,
		"received %d of %d; broker stats %+v", sub.count(), broker.OutboundInflight, f.b.Stats())
	for i := range broker.OutboundInflight {
		require.True(t, sub.has(fmt.Sprintf("m-%05d", i)), "message %d of the window lost", i)
	}
	assert.Zero(t, sub.duplicates())
	// The broker acknowledges a publish before it fans it out: the last
	// drops may be counted just after the last PUBACK.
	require.Eventually(t, func() bool { return f.b.Stats() == broker.Stats{DroppedInflightFull: over} }, 10*time.Second, time.Millisecond,
		"broker stats %+v", f.b.Stats())
	// Logged: the connection's first drop (then every 100th).
	assert.Equal(t, 1, f.log.CountJSON("message dropped at the connection's limit", map[string]string{"client": "subscriber"}))
}

// QoS 0 messages do not wait for acknowledgements: a full inflight window
// does not drop them, and is not charged with them (the broker used to
// drop them and count them as QoS 1 inflight drops).
func TestQoS0MessagesPassAFullInflightWindow(t *testing.T) {
	f := newFixture(t)
	sub := f.subscriber(t, "subscriber", "fan/in/#", 1, false)
	f.publishAll(t, 1, 0, broker.OutboundInflight+1, "fan/in/x", 1)
	require.Eventually(t, func() bool { return f.b.Stats().DroppedInflightFull == 1 }, 60*time.Second, 10*time.Millisecond,
		"broker stats %+v", f.b.Stats())
	const n = 50
	f.publishAll(t, 1, broker.OutboundInflight+1, n, "fan/in/x", 0)
	// Server-originated QoS 0 messages too.
	for i := range n {
		f.b.PublishQoS("fan/in/x", fmt.Appendf(nil, "s-%05d", i), 0)
	}
	require.Eventually(t, func() bool { return sub.count() == broker.OutboundInflight+2*n }, 30*time.Second, 10*time.Millisecond,
		"received %d of %d; broker stats %+v", sub.count(), broker.OutboundInflight+2*n, f.b.Stats())
	assert.Equal(t, broker.Stats{DroppedInflightFull: 1}, f.b.Stats())
	// Server-originated QoS 1 messages share the window: dropped, counted.
	f.b.PublishQoS("fan/in/x", []byte("s-qos1"), 1)
	assert.Equal(t, broker.Stats{DroppedInflightFull: 2}, f.b.Stats())
}

// stuckSubscriber connects over an in-memory pipe (no socket buffers),
// subscribes to filter at QoS 0, then never reads again: every write to
// it blocks.
func (f *fixture) stuckSubscriber(t *testing.T, id, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := f.b.DialPipe(ctx)
	require.NoError(t, err)
	conn := tls.Client(raw, f.tlsConfig(t))
	t.Cleanup(func() { _ = raw.Close() })
	require.NoError(t, conn.HandshakeContext(ctx))
	// MQTT 3.1.1 CONNECT: clean session, keepalive 0 (never timed out).
	connect := []byte{0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x00, 0x00, byte(len(id))}
	connect = append(connect, id...)
	_, err = conn.Write(append([]byte{0x10, byte(len(connect))}, connect...))
	require.NoError(t, err)
	connack := make([]byte, 4)
	_, err = io.ReadFull(conn, connack)
	require.NoError(t, err)
	require.Equal(t, []byte{0x20, 0x02, 0x00, 0x00}, connack, "CONNACK accepted")
	sub := []byte{0x00, 0x01, 0x00, byte(len(filter))}
	sub = append(sub, filter...)
	sub = append(sub, 0x00)
	_, err = conn.Write(append([]byte{0x82, byte(len(sub))}, sub...))
	require.NoError(t, err)
	suback := make([]byte, 5)
	_, err = io.ReadFull(conn, suback)
	require.NoError(t, err)
	require.Equal(t, []byte{0x90, 0x03, 0x00, 0x01, 0x00}, suback, "SUBACK granted QoS 0")
}

// A subscriber that stops reading blocks neither a server-side publish
// (HTTP data-plane Publish, Jobs and shadow notifications) nor the
// deliveries to the other subscribers: its messages wait in its own
// queue, and beyond OutboundQueue they are dropped and counted. (The
// broker used to write server-side publishes synchronously: the first
// one to the stuck subscriber never returned.)
func TestStuckSubscriberBlocksNoServerPublish(t *testing.T) {
	f := newFixture(t)
	f.stuckSubscriber(t, "stuck", "note/#")
	good := f.subscriber(t, "good", "note/#", 1, true)
	const over = 20
	total := broker.OutboundQueue + over
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			f.b.PublishQoS("note/x", fmt.Appendf(nil, "n-%05d", i), 1)
		}
	}()
	require.Eventually(t, func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}, 30*time.Second, 10*time.Millisecond, "PublishQoS blocked on the stuck subscriber")
	require.Eventually(t, func() bool { return good.count() == total }, 30*time.Second, 10*time.Millisecond,
		"the other subscriber received %d of %d", good.count(), total)
	assert.Zero(t, good.duplicates())
	// The stuck connection holds OutboundQueue messages in its queue and
	// at most one in the write that blocks; the rest are dropped, counted
	// as QoS 0 drops (its subscription is QoS 0), and logged.
	st := f.b.Stats()
	assert.Zero(t, st.DroppedQueueFull+st.DroppedInflightFull)
	assert.GreaterOrEqual(t, st.DroppedQoS0, int64(over-1))
	assert.LessOrEqual(t, st.DroppedQoS0, int64(over))
	assert.Equal(t, 1, f.log.CountJSON("message dropped at the connection's limit", map[string]string{"client": "stuck"}))
}

// The same limit for messages clients publish: a stuck subscriber's queue
// takes OutboundQueue messages, the rest are dropped and counted, and the
// publishers and the other subscribers go on. The messages are larger
// than mochi's write buffer (2 KiB), so its writer holds at most the one
// whose write blocks, not a buffer of small ones.
func TestStuckSubscriberQueueDropsAreCounted(t *testing.T) {
	f := newFixture(t)
	f.stuckSubscriber(t, "stuck", "fan/in/#")
	good := f.subscriber(t, "good", "fan/in/#", 1, true)
	const over = 20
	total := broker.OutboundQueue + over
	pad := strings.Repeat("x", 4096)
	var wg sync.WaitGroup
	for p := range 4 {
		cl := f.connect(t, fmt.Sprintf("publisher-%d", p))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := p; i < total; i += 4 {
				tok := cl.Publish("fan/in/x", 1, false, fmt.Sprintf("m-%05d-%s", i, pad))
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					t.Errorf("publish %d: no PUBACK: %v", i, tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
	require.Eventually(t, func() bool { return good.count() == total }, 60*time.Second, 10*time.Millisecond,
		"the other subscriber received %d of %d", good.count(), total)
	assert.Zero(t, good.duplicates())
	// The broker acknowledges a publish before it fans it out: poll until
	// every message was either queued or dropped for the stuck one.
	require.Eventually(t, func() bool { return f.b.Stats().DroppedQoS0 >= over-1 }, 10*time.Second, time.Millisecond,
		"broker stats %+v", f.b.Stats())
	st := f.b.Stats()
	assert.Zero(t, st.DroppedQueueFull+st.DroppedInflightFull)
	assert.LessOrEqual(t, st.DroppedQoS0, int64(over))
	assert.Positive(t, f.log.CountJSON("message dropped at the connection's limit", map[string]string{"client": "stuck"}))
}
