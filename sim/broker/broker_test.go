package broker_test

import (
	"crypto/tls"
	"fmt"
	"log/slog"
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

// slowSubscriber subscribes at QoS 1 and takes delay over each message.
type slowSubscriber struct {
	mu   sync.Mutex
	got  map[string]bool
	dups int
}

func (f *fixture) slowSubscriber(t *testing.T, filter string, delay time.Duration) *slowSubscriber {
	s := &slowSubscriber{got: map[string]bool{}}
	cl := f.connect(t, "subscriber")
	tok := cl.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		time.Sleep(delay) // a slow consumer
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

func (s *slowSubscriber) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

// publishAll has publishers publish total QoS 1 messages on topic between
// them, each waiting for its PUBACK.
func (f *fixture) publishAll(t *testing.T, publishers, total int, topic string) {
	t.Helper()
	var wg sync.WaitGroup
	for p := range publishers {
		cl := f.connect(t, fmt.Sprintf("publisher-%d", p))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := p; i < total; i += publishers {
				tok := cl.Publish(topic, 1, false, fmt.Sprintf("m-%05d", i))
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					t.Errorf("publish %d: no PUBACK: %v", i, tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A subscriber slower than its publishers, behind by up to 20 s of AWS
// IoT's per-connection rate (100 publishes/s), receives every message
// (the broker used to drop some 7% beyond 1024 unacknowledged ones,
// silently, while the publishers got their PUBACKs).
func TestSlowSubscriberWithinLimitsLosesNothing(t *testing.T) {
	f := newFixture(t)
	sub := f.slowSubscriber(t, "fan/in/#", 2*time.Millisecond)
	total := broker.OutboundInflight
	f.publishAll(t, 4, total, "fan/in/x")
	require.Eventually(t, func() bool { return sub.count() == total }, 60*time.Second, 10*time.Millisecond,
		"received %d of %d; broker stats %+v", sub.count(), total, f.b.Stats())
	assert.Equal(t, broker.Stats{}, f.b.Stats(), "nothing dropped")
	assert.Zero(t, f.log.CountJSON("message dropped at the connection's limit", nil))
}

// Beyond the queue, messages to the slow subscriber are dropped, and every
// drop is counted: received + dropped = published.
func TestSlowSubscriberOverLimitsDropsAreCounted(t *testing.T) {
	f := newFixture(t)
	sub := f.slowSubscriber(t, "fan/in/#", 2*time.Millisecond)
	total := 2 * broker.OutboundInflight
	f.publishAll(t, 4, total, "fan/in/x")
	require.Eventually(t, func() bool {
		st := f.b.Stats()
		return int64(sub.count())+st.DroppedQueueFull+st.DroppedInflightFull == int64(total)
	}, 60*time.Second, 10*time.Millisecond)
	st := f.b.Stats()
	assert.Positive(t, st.DroppedQueueFull+st.DroppedInflightFull)
	// Logged: the connection's first drop, then every 100th.
	assert.Positive(t, f.log.CountJSON("message dropped at the connection's limit", map[string]string{"client": "subscriber"}))
	t.Logf("received %d, dropped %+v", sub.count(), st)
}
