// Package broker embeds a mochi-mqtt broker as the MQTT front of the
// simulated AWS IoT Core: TLS 1.2+ with client certificates verified
// against the local CA, the certificate identifying the principal (its id
// is looked up in the registry and must be ACTIVE), and every connect,
// publish, subscribe and delivery authorized by the IoT policies attached
// to that certificate. A refused CONNECT (unknown, inactive or revoked
// certificate, or iot:Connect denied) is answered as AWS IoT Core answers
// it: the connection is closed without a CONNACK. Requests on the AWS
// reserved API topics are handed to routes (provisioning, jobs) instead of
// being routed to subscribers, and their answers go straight to the
// requesting connection, as AWS does. Fault rules can drop or delay
// messages in either direction.
package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iot-fleet/iot-fleet/internal/mqtttopic"
	"github.com/iot-fleet/iot-fleet/sim/ca"
	"github.com/iot-fleet/iot-fleet/sim/faults"
	"github.com/iot-fleet/iot-fleet/sim/iotpolicy"
	"github.com/iot-fleet/iot-fleet/sim/observers"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// ALPNProtocol is the ALPN protocol AWS IoT uses for MQTT on port 443.
const ALPNProtocol = "x-amzn-mqtt-ca"

// maxPacketSize is AWS IoT's MQTT message size limit (128 KiB).
const maxPacketSize = 128 * 1024

// Per-connection outbound limits. AWS IoT Core accepts at most 100
// publish requests per second per connection, inbound and outbound
// (docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits).
// A subscriber that reads or acknowledges more slowly than messages
// arrive falls behind; for each connection the broker keeps:
//
//   - at most OutboundInflight QoS 1 messages written and not yet
//     acknowledged (QoS 0 messages are never held for an
//     acknowledgement, so this window does not apply to them);
//   - at most OutboundQueue messages waiting to be written when the
//     socket takes no more: one queue for messages published by clients
//     and one of the same size for messages the local IoT Core publishes
//     itself (HTTP data-plane Publish, Jobs and shadow notifications, API
//     answers), so a subscriber that stops reading never blocks a
//     publisher or the deliveries to other subscribers.
//
// A message beyond either limit is dropped for that connection only,
// counted (Stats, GET /status "broker": QoS 1 drops by limit, QoS 0 drops
// on their own counter) and logged, as AWS discards and reports throttled
// publishes; the publisher still gets its PUBACK, as from AWS. So nothing
// is lost for a subscriber while it has fewer than OutboundInflight QoS 1
// messages unacknowledged and the messages not yet written fit the
// queue. See docs/protocol.md.
const (
	AWSPublishesPerSecond = 100
	OutboundQueue         = 10 * AWSPublishesPerSecond
	OutboundInflight      = 20 * AWSPublishesPerSecond
)

// Request is a message published on an API topic handled by a route.
type Request struct {
	ClientID      string
	CertificateID string
	// ThingName is the connection's thing ("" unless the client id is a
	// thing attached to the certificate).
	ThingName string
	Topic     string
	Payload   []byte
}

// Route takes over the messages of some topics.
type Route struct {
	Name   string
	Match  func(topic string) bool
	Handle func(ctx context.Context, req Request)
}

// Options configure a Broker.
type Options struct {
	// Addr is the TCP listen address, e.g. "127.0.0.1:0": MQTT over TLS
	// with mutual authentication, as AWS IoT Core serves it on 8883.
	Addr string
	// ALPNAddr, when set, is a second listen address that serves MQTT only
	// to clients that negotiate the ALPN protocol x-amzn-mqtt-ca, as AWS
	// IoT Core does on port 443 (where the AWS SDKs and the AWS IoT Device
	// Client connect by default). A client without it is refused after the
	// handshake.
	ALPNAddr   string
	ServerCert tls.Certificate
	ClientCAs  *x509.CertPool
	Registry   *registry.Registry
	// ARN builds the policy resource ARN of kind (client, topic,
	// topicfilter) and name.
	ARN    func(kind, name string) string
	Faults *faults.Set
	Routes []Route
	Logger *slog.Logger
}

// ClientInfo describes a connected client.
type ClientInfo struct {
	ClientID      string `json:"clientId"`
	CertificateID string `json:"certificateId"`
	ThingName     string `json:"thingName,omitempty"`
	Remote        string `json:"remote"`
}

// Errors returned by Reply.
var (
	ErrClientNotConnected = errors.New("client not connected")
	ErrNotSubscribed      = errors.New("client not subscribed to the topic")
	ErrNotAuthorized      = errors.New("not authorized to receive the topic")
)

// Broker is the MQTT broker. Create it with New, then Start.
type Broker struct {
	opts   Options
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	tlsCfg *tls.Config

	mu       sync.RWMutex
	srv      *mqtt.Server
	lst      *listener
	addr     string
	alpnAddr string
	closed   bool
	running  bool

	sessions sync.Map // *mqtt.Client -> *session
	// byID indexes the accepted connections by client id: the latest one
	// of each id (see takeover.go).
	byID sync.Map // string -> *mqtt.Client
	// expiring holds, by net.Conn, the clean-session connections whose
	// disconnect makes the embedded broker delete their client id from
	// its own index (see takeover.go).
	expiring sync.Map // net.Conn -> *mqtt.Client
	delayed  sync.WaitGroup
	writers  sync.WaitGroup

	queueFull    atomic.Int64
	inflightFull atomic.Int64
	qos0Dropped  atomic.Int64

	connects observers.Set[ConnectAttempt] // ObserveConnects
}

// Stats counts the messages the broker dropped at a connection's limits.
type Stats struct {
	// DroppedQueueFull counts QoS 1 messages dropped because the
	// connection's outbound queue (OutboundQueue) was full: it read too
	// slowly.
	DroppedQueueFull int64 `json:"droppedQueueFull"`
	// DroppedInflightFull counts QoS 1 messages dropped because the
	// connection had OutboundInflight messages unacknowledged.
	DroppedInflightFull int64 `json:"droppedInflightFull"`
	// DroppedQoS0 counts QoS 0 messages dropped because the connection's
	// outbound queue was full (QoS 0 messages do not wait for
	// acknowledgements, so the inflight window never drops them).
	DroppedQoS0 int64 `json:"droppedQoS0"`
}

// Stats returns the drop counters since New.
func (b *Broker) Stats() Stats {
	return Stats{DroppedQueueFull: b.queueFull.Load(), DroppedInflightFull: b.inflightFull.Load(), DroppedQoS0: b.qos0Dropped.Load()}
}

type session struct {
	clientID  string
	certID    string
	thingName string
	attrs     map[string]string
	remote    string

	// out holds the server-originated messages waiting to be written to
	// the connection (at most OutboundQueue); one writer goroutine drains
	// it until done is closed.
	out  chan *packets.Packet
	done chan struct{}
	once sync.Once

	mu          sync.Mutex
	pendingSubs map[string]bool
	subDenied   bool
	drops       int64 // messages dropped at this connection's limits
}

// stop ends the session's writer.
func (s *session) stop() { s.once.Do(func() { close(s.done) }) }

// New validates opts and prepares a broker.
func New(opts Options) (*Broker, error) {
	if opts.Registry == nil || opts.ARN == nil || opts.ClientCAs == nil || len(opts.ServerCert.Certificate) == 0 {
		return nil, fmt.Errorf("broker: Registry, ARN, ClientCAs and ServerCert are required")
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Faults == nil {
		opts.Faults = faults.New()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{
		opts:   opts,
		log:    opts.Logger.With("component", "broker"),
		ctx:    ctx,
		cancel: cancel,
		tlsCfg: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{opts.ServerCert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    opts.ClientCAs,
			NextProtos:   []string{ALPNProtocol, "mqtt"},
			// Classic ECDHE only, as AWS IoT endpoints offer.
			CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
		},
	}
	return b, nil
}

// Start listens and serves. The first start resolves Addr (port 0) and
// later restarts reuse the same address.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("broker: closed")
	}
	if b.running {
		return nil
	}
	addr := b.addr
	if addr == "" {
		addr = b.opts.Addr
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("broker: listen %s: %w", addr, err)
	}
	b.addr = ln.Addr().String()
	srv := mqtt.New(&mqtt.Options{
		Logger:                 slog.New(&quotaLog{inner: b.opts.Logger.Handler(), b: b}).With("component", "mochi"),
		SysTopicResendInterval: 3600,
		Capabilities: &mqtt.Capabilities{
			MaximumClients:               1 << 40,
			MaximumMessageExpiryInterval: 60 * 60 * 24,
			MaximumClientWritesPending:   OutboundQueue,
			MaximumSessionExpiryInterval: 60 * 60,
			MaximumPacketSize:            maxPacketSize,
			ReceiveMaximum:               100,
			// mochi checks the window once a delivery's QoS is decided
			// (QoS 1 only); its drops are counted and logged through
			// quotaLog.
			MaximumInflight:        OutboundInflight,
			TopicAliasMaximum:      8,
			MinimumProtocolVersion: 3,
			MaximumQos:             1, // AWS IoT supports QoS 0 and 1
			RetainAvailable:        1,
			WildcardSubAvailable:   1,
			SubIDAvailable:         0,
			SharedSubAvailable:     1,
		},
	})
	if err := srv.AddHook(&hook{b: b}, nil); err != nil {
		_ = ln.Close()
		return fmt.Errorf("broker: add hook: %w", err)
	}
	lst := &listener{id: "tls", ln: ln, tlsCfg: b.tlsCfg, pipes: make(chan net.Conn), done: make(chan struct{}), ended: b.connectionEnded}
	if err := srv.AddListener(lst); err != nil {
		_ = ln.Close()
		return fmt.Errorf("broker: add listener: %w", err)
	}
	if b.opts.ALPNAddr != "" {
		alpnAddr := b.alpnAddr
		if alpnAddr == "" {
			alpnAddr = b.opts.ALPNAddr
		}
		aln, err := net.Listen("tcp", alpnAddr)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("broker: listen %s (ALPN %s): %w", alpnAddr, ALPNProtocol, err)
		}
		b.alpnAddr = aln.Addr().String()
		cfg := b.tlsCfg.Clone()
		cfg.NextProtos = []string{ALPNProtocol}
		alst := &listener{id: "tls-alpn", ln: aln, tlsCfg: cfg, requireALPN: ALPNProtocol, pipes: make(chan net.Conn), done: make(chan struct{}), ended: b.connectionEnded}
		if err := srv.AddListener(alst); err != nil {
			_ = aln.Close()
			_ = srv.Close()
			return fmt.Errorf("broker: add ALPN listener: %w", err)
		}
	}
	if err := srv.Serve(); err != nil {
		_ = srv.Close()
		return fmt.Errorf("broker: serve: %w", err)
	}
	b.srv, b.lst, b.running = srv, lst, true
	b.log.Info("broker listening", "addr", b.addr, "alpnAddr", b.alpnAddr)
	return nil
}

// Addr returns host:port of the TLS listener.
func (b *Broker) Addr() string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.addr
}

// ALPNAddr returns host:port of the listener that requires ALPN
// x-amzn-mqtt-ca ("" without one).
func (b *Broker) ALPNAddr() string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.alpnAddr
}

// Stop closes the listener and every connection; Start serves again on
// the same address. Registries are untouched; MQTT sessions are lost.
func (b *Broker) Stop() {
	b.mu.Lock()
	srv := b.srv
	b.srv, b.lst, b.running = nil, nil, false
	b.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Close()
	done := make(chan struct{})
	go func() { srv.Listeners.ClientsWg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		b.log.Warn("broker stop: clients still closing")
	}
}

// Restart stops and starts the broker on the same address.
func (b *Broker) Restart() error {
	b.Stop()
	return b.Start()
}

// Close stops the broker for good.
func (b *Broker) Close() error {
	b.Stop()
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.delayed.Wait()
	b.sessions.Range(func(_, v any) bool { v.(*session).stop(); return true })
	b.writers.Wait()
	return nil
}

// DialPipe returns an in-memory connection to the broker's listener, for
// running more simulated devices than file descriptors allow. The caller
// does the TLS handshake over it as with TCP.
func (b *Broker) DialPipe(ctx context.Context) (net.Conn, error) {
	b.mu.RLock()
	lst := b.lst
	b.mu.RUnlock()
	if lst == nil {
		return nil, fmt.Errorf("broker: not running")
	}
	client, server := net.Pipe()
	select {
	case lst.pipes <- server:
		return client, nil
	case <-lst.done:
		return nil, fmt.Errorf("broker: not running")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *Broker) server() *mqtt.Server {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.srv
}

// Clients lists the authenticated connections.
func (b *Broker) Clients() []ClientInfo {
	var out []ClientInfo
	b.sessions.Range(func(k, v any) bool {
		cl := k.(*mqtt.Client)
		s := v.(*session)
		if !cl.Closed() {
			out = append(out, ClientInfo{ClientID: s.clientID, CertificateID: s.certID, ThingName: s.thingName, Remote: s.remote})
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ClientID < out[j].ClientID })
	return out
}

// DisconnectClient closes the connection of clientID; it reports whether
// one was connected.
func (b *Broker) DisconnectClient(clientID string) bool {
	found := false
	b.sessions.Range(func(k, v any) bool {
		cl := k.(*mqtt.Client)
		if v.(*session).clientID == clientID && !cl.Closed() {
			cl.Stop(packets.ErrAdministrativeAction)
			found = true
		}
		return true
	})
	return found
}

// DisconnectCertificate closes every connection authenticated with certID
// and returns how many there were.
func (b *Broker) DisconnectCertificate(certID string) int {
	n := 0
	b.sessions.Range(func(k, v any) bool {
		cl := k.(*mqtt.Client)
		if v.(*session).certID == certID && !cl.Closed() {
			cl.Stop(packets.ErrNotAuthorized)
			n++
		}
		return true
	})
	return n
}

// Publish delivers a server-originated message (QoS 1 where the
// subscription allows) to every client subscribed to topic, subject to
// each client's iot:Receive permission and the outbound fault rules.
func (b *Broker) Publish(topic string, payload []byte) { b.PublishQoS(topic, payload, 1) }

// PublishQoS is Publish at QoS qos (0 or 1): each subscriber receives the
// message at the lower of qos and its subscription's QoS.
func (b *Broker) PublishQoS(topic string, payload []byte, qos byte) {
	srv := b.server()
	if srv == nil {
		return
	}
	subs := srv.Topics.Subscribers(topic)
	for id, sub := range subs.Subscriptions {
		cl, ok := b.client(id)
		if !ok {
			continue
		}
		if err := b.deliver(cl, topic, payload, min(sub.Qos, qos)); err != nil {
			b.log.Debug("publish not delivered", "client", id, "topic", topic, "error", err)
		}
	}
}

// Reply sends an API answer to the client that made the request only. With
// needSubscription the client must hold a subscription matching topic
// (fleet provisioning); without, the answer is sent regardless (Jobs).
func (b *Broker) Reply(clientID, topic string, payload []byte, needSubscription bool) error {
	srv := b.server()
	if srv == nil {
		return ErrClientNotConnected
	}
	cl, ok := b.client(clientID)
	if !ok {
		return ErrClientNotConnected
	}
	qos, subscribed := byte(0), false
	for filter, sub := range cl.State.Subscriptions.GetAll() {
		if mqtttopic.Match(filter, topic) {
			subscribed = true
			qos = max(qos, sub.Qos)
		}
	}
	if needSubscription && !subscribed {
		return ErrNotSubscribed
	}
	return b.deliver(cl, topic, payload, qos)
}

func (b *Broker) deliver(cl *mqtt.Client, topic string, payload []byte, qos byte) error {
	if !b.authorize(cl, iotpolicy.ActionReceive, "topic", topic) {
		return ErrNotAuthorized
	}
	if act, ok := b.opts.Faults.Match(faults.Outbound, cl.ID, topic); ok {
		if act.Drop {
			b.log.Info("fault: dropped outbound message", "rule", act.RuleID, "client", cl.ID, "topic", topic)
			return nil
		}
		b.log.Info("fault: delaying outbound message", "rule", act.RuleID, "client", cl.ID, "topic", topic, "delay", act.Delay)
		b.delayed.Add(1)
		go func() {
			defer b.delayed.Done()
			t := time.NewTimer(act.Delay)
			defer t.Stop()
			select {
			case <-t.C:
				if err := b.enqueue(cl, topic, payload, qos); err != nil {
					b.log.Debug("delayed delivery failed", "client", cl.ID, "topic", topic, "error", err)
				}
			case <-b.ctx.Done():
			}
		}()
		return nil
	}
	return b.enqueue(cl, topic, payload, qos)
}

// ErrDropped reports a server-originated message dropped at the
// connection's limits (counted in Stats).
var ErrDropped = errors.New("dropped at the connection's limit")

// enqueue queues a server-originated PUBLISH for one client, with the
// limits and counters of client-originated messages: a QoS 1 message
// needs room in the inflight window (it is tracked there so the broker
// resends it on a persistent session's reconnect, as it does for routed
// messages) and every message room in the connection's queue. It never
// waits for the connection.
func (b *Broker) enqueue(cl *mqtt.Client, topic string, payload []byte, qos byte) error {
	qos = min(qos, 1)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     append([]byte(nil), payload...),
		Created:     time.Now().Unix(),
		Origin:      "$aws",
	}
	s := b.sessionOf(cl)
	if qos > 0 {
		if cl.State.Inflight.Len() >= OutboundInflight {
			b.inflightFull.Add(1)
			b.dropped(s, cl.ID, topic, "unacknowledged QoS 1 messages at the connection's limit", OutboundInflight)
			return ErrDropped
		}
		id, err := cl.NextPacketID()
		if err != nil {
			return fmt.Errorf("packet id: %w", err)
		}
		pk.PacketID = uint16(id)
		cl.State.Inflight.Set(pk)
	}
	if cl.Closed() || s == nil {
		if qos > 0 {
			return nil // kept inflight for the session's next connection
		}
		return ErrClientNotConnected
	}
	select {
	case s.out <- &pk:
		return nil
	default:
	}
	if qos > 0 {
		cl.State.Inflight.Delete(pk.PacketID)
		b.queueFull.Add(1)
	} else {
		b.qos0Dropped.Add(1)
	}
	b.dropped(s, cl.ID, topic, "outbound queue full: the connection reads slower than messages arrive", OutboundQueue)
	return ErrDropped
}

// writeLoop writes a session's server-originated messages until the
// session ends. A write that fails on a closed connection leaves a QoS 1
// message inflight for the session's next connection.
func (b *Broker) writeLoop(cl *mqtt.Client, s *session) {
	defer b.writers.Done()
	for {
		select {
		case pk := <-s.out:
			if err := cl.WritePacket(*pk); err != nil {
				b.log.Debug("delivery failed", "client", cl.ID, "topic", pk.TopicName, "error", err)
			}
		case <-s.done:
			return
		}
	}
}

func (b *Broker) sessionOf(cl *mqtt.Client) *session {
	v, ok := b.sessions.Load(cl)
	if !ok {
		return nil
	}
	return v.(*session)
}

// authorize evaluates action on kind/name for cl with fresh registry data.
// A certificate that is no longer ACTIVE fails every check and the
// connection is closed.
func (b *Broker) authorize(cl *mqtt.Client, action, kind, name string) bool {
	if cl.Net.Inline {
		return true
	}
	s := b.sessionOf(cl)
	if s == nil {
		return false
	}
	info, err := b.opts.Registry.Auth(s.certID, s.clientID)
	if err != nil || info.Status != registry.CertActive {
		b.log.Info("certificate no longer active, closing connection", "client", s.clientID, "certificate", s.certID)
		cl.Stop(packets.ErrNotAuthorized)
		return false
	}
	ctx := iotpolicy.Context{ClientID: s.clientID, ThingName: s.thingName, ThingAttributes: info.ThingAttributes}
	if s.thingName == "" {
		ctx.ThingAttributes = nil
	}
	d := iotpolicy.Evaluate(info.Policies, action, b.opts.ARN(kind, name), ctx)
	if d != iotpolicy.Allowed {
		b.log.Info("authorization denied", "client", s.clientID, "action", action, "resource", kind+"/"+name, "decision", d.String())
		return false
	}
	return true
}

// hook plugs the broker into mochi.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "iot-core" }

func (h *hook) Provides(x byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSubscribe, mqtt.OnSubscribed,
		mqtt.OnPublish, mqtt.OnDisconnect, mqtt.OnPacketSent, mqtt.OnPublishDropped,
	}, []byte{x})
}

// ErrConnectRefused ends a connection whose CONNECT the broker refused:
// the certificate is unknown or not ACTIVE, or the policies attached to it
// do not allow iot:Connect with the client id.
var ErrConnectRefused = errors.New("connect refused")

// OnConnect authenticates the connection. A refusal closes it right after
// the CONNECT without sending any CONNACK, as AWS IoT Core does for a
// revoked, inactive or unknown certificate and for a policy that denies
// iot:Connect (mochi answers a false OnConnectAuthenticate with a
// CONNACK "not authorized"; an error from OnConnect ends the connection
// before any CONNACK is written). The refused client takes over no session.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	b := h.b
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return h.refuse(cl, "", "connect refused: not a TLS connection", "not a TLS connection")
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return h.refuse(cl, "", "connect refused: no client certificate", "no client certificate")
	}
	certID := ca.CertificateID(st.PeerCertificates[0].Raw)
	info, err := b.opts.Registry.Auth(certID, cl.ID)
	if err != nil {
		return h.refuse(cl, certID, "connect refused: unknown certificate", "unknown certificate "+certID)
	}
	if info.Status != registry.CertActive {
		return h.refuse(cl, certID, "connect refused: certificate not active", fmt.Sprintf("certificate %s is %s", certID, info.Status), "status", info.Status)
	}
	ctx := iotpolicy.Context{ClientID: cl.ID, ThingName: info.ThingName, ThingAttributes: info.ThingAttributes}
	if d := iotpolicy.Evaluate(info.Policies, iotpolicy.ActionConnect, b.opts.ARN("client", cl.ID), ctx); d != iotpolicy.Allowed {
		return h.refuse(cl, certID, "connect refused by policy", fmt.Sprintf("iot:Connect %s", d), "decision", d.String())
	}
	s := &session{
		clientID: cl.ID, certID: certID, thingName: info.ThingName, attrs: info.ThingAttributes,
		remote: cl.Net.Remote, pendingSubs: map[string]bool{},
		out: make(chan *packets.Packet, OutboundQueue), done: make(chan struct{}),
	}
	b.sessions.Store(cl, s)
	b.byID.Store(cl.ID, cl)
	b.writers.Add(1)
	go b.writeLoop(cl, s)
	b.log.Debug("client connected", "client", cl.ID, "certificate", certID, "thing", info.ThingName)
	b.connects.Notify(ConnectAttempt{ClientID: cl.ID, CertificateID: certID, ThingName: info.ThingName, Accepted: true})
	return nil
}

// refuse logs a refused CONNECT (msg and attrs, the messages
// docs/protocol.md lists), reports it to the ObserveConnects callbacks and
// returns the error that ends the connection.
func (h *hook) refuse(cl *mqtt.Client, certID, msg, reason string, attrs ...any) error {
	args := []any{"client", cl.ID}
	if certID != "" {
		args = append(args, "certificate", certID)
	}
	h.b.log.Info(msg, append(args, attrs...)...)
	h.b.connects.Notify(ConnectAttempt{ClientID: cl.ID, CertificateID: certID, Reason: reason})
	return fmt.Errorf("%w: %s", ErrConnectRefused, reason)
}

// OnConnectAuthenticate admits the connections OnConnect accepted (it
// refused the others before this is called).
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return h.b.sessionOf(cl) != nil
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if v, ok := h.b.sessions.LoadAndDelete(cl); ok {
		v.(*session).stop()
	}
	h.b.byID.CompareAndDelete(cl.ID, cl)
	if expire {
		h.b.expiring.Store(cl.Net.Conn, cl)
	}
}

func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	s := h.b.sessionOf(cl)
	if s == nil {
		return pk
	}
	decisions := make(map[string]bool, len(pk.Filters))
	denied := false
	for _, f := range pk.Filters {
		ok := h.b.authorize(cl, iotpolicy.ActionSubscribe, "topicfilter", f.Filter)
		decisions[f.Filter] = ok
		denied = denied || !ok
	}
	s.mu.Lock()
	s.pendingSubs = decisions
	s.subDenied = s.subDenied || denied
	s.mu.Unlock()
	return pk
}

func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if s := h.b.sessionOf(cl); s != nil {
		s.mu.Lock()
		s.pendingSubs = map[string]bool{}
		s.mu.Unlock()
	}
}

// OnPacketSent closes a connection after the SUBACK that refused a
// subscription: AWS IoT disconnects clients on authorization failures.
func (h *hook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Suback {
		return
	}
	s := h.b.sessionOf(cl)
	if s == nil {
		return
	}
	s.mu.Lock()
	denied := s.subDenied
	s.subDenied = false
	s.mu.Unlock()
	if denied {
		cl.Stop(packets.ErrNotAuthorized)
	}
}

func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	b := h.b
	if cl.Net.Inline {
		return true
	}
	if write {
		if b.authorize(cl, iotpolicy.ActionPublish, "topic", topic) {
			return true
		}
		cl.Stop(packets.ErrNotAuthorized) // AWS IoT disconnects on an unauthorized publish
		return false
	}
	s := b.sessionOf(cl)
	if s == nil {
		return false
	}
	// mochi asks for both subscriptions (a filter) and deliveries (a
	// topic) with write=false; filters being subscribed right now were
	// decided in OnSubscribe.
	s.mu.Lock()
	subOK, subscribing := s.pendingSubs[topic]
	s.mu.Unlock()
	if subscribing {
		return subOK
	}
	if !b.authorize(cl, iotpolicy.ActionReceive, "topic", topic) {
		return false
	}
	// The inflight window is checked by mochi once the delivery's QoS is
	// known (QoS 0 messages do not use it); see quotaLog.
	if act, ok := b.opts.Faults.Match(faults.Outbound, cl.ID, topic); ok && act.Drop {
		b.log.Info("fault: dropped outbound message", "rule", act.RuleID, "client", cl.ID, "topic", topic)
		return false
	}
	return true
}

func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	b := h.b
	if cl.Net.Inline {
		return pk, nil
	}
	if act, ok := b.opts.Faults.Match(faults.Inbound, cl.ID, pk.TopicName); ok {
		if act.Drop {
			b.log.Info("fault: dropped inbound message", "rule", act.RuleID, "client", cl.ID, "topic", pk.TopicName)
			return pk, packets.ErrRejectPacket
		}
		b.log.Info("fault: delaying inbound message", "rule", act.RuleID, "client", cl.ID, "topic", pk.TopicName, "delay", act.Delay)
		t := time.NewTimer(act.Delay)
		select {
		case <-t.C:
		case <-b.ctx.Done():
			t.Stop()
			return pk, packets.ErrRejectPacket
		}
	}
	for _, r := range b.opts.Routes {
		if !r.Match(pk.TopicName) {
			continue
		}
		s := b.sessionOf(cl)
		if s == nil {
			return pk, packets.ErrRejectPacket
		}
		r.Handle(b.ctx, Request{
			ClientID: s.clientID, CertificateID: s.certID, ThingName: s.thingName,
			Topic: pk.TopicName, Payload: append([]byte(nil), pk.Payload...),
		})
		return pk, packets.CodeSuccessIgnore
	}
	return pk, nil
}

// OnPublishDropped counts and logs a message mochi dropped because the
// connection's outbound queue was full. mochi passes the message as
// published: it went out at the lower of its QoS and the connection's
// subscription.
func (h *hook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	qos := byte(0)
	if pk.FixedHeader.Qos > 0 {
		for filter, sub := range cl.State.Subscriptions.GetAll() {
			if mqtttopic.Match(filter, pk.TopicName) {
				qos = max(qos, min(sub.Qos, 1))
			}
		}
	}
	if qos > 0 {
		h.b.queueFull.Add(1)
	} else {
		h.b.qos0Dropped.Add(1)
	}
	h.b.dropped(h.b.sessionOf(cl), cl.ID, pk.TopicName, "outbound queue full: the connection reads slower than messages arrive", OutboundQueue)
}

// dropped logs a drop at a connection's limit: the first of the
// connection and every 100th, so a flood does not flood the log.
func (b *Broker) dropped(s *session, clientID, topic, why string, limit int) {
	n := int64(1)
	if s != nil {
		s.mu.Lock()
		s.drops++
		n = s.drops
		s.mu.Unlock()
	}
	if n == 1 || n%100 == 0 {
		b.log.Warn("message dropped at the connection's limit", "client", clientID, "topic", topic, "reason", why, "limit", limit, "droppedForClient", n)
	}
}

// mochiQuotaMessage is what mochi logs when it drops a QoS 1 delivery
// because the connection has MaximumInflight messages unacknowledged
// (mochi has no hook there).
const mochiQuotaMessage = "client store quota reached"

// quotaLog is mochi's log handler: it turns mochi's inflight-window drops
// into the broker's counter and rate-limited log, and passes every other
// record on.
type quotaLog struct {
	inner slog.Handler
	b     *Broker
}

func (q *quotaLog) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || q.inner.Enabled(ctx, l)
}

func (q *quotaLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message != mochiQuotaMessage {
		if !q.inner.Enabled(ctx, r.Level) {
			return nil
		}
		return q.inner.Handle(ctx, r)
	}
	var clientID string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "client" {
			clientID = a.Value.String()
			return false
		}
		return true
	})
	var s *session
	if cl, ok := q.b.client(clientID); ok {
		s = q.b.sessionOf(cl)
	}
	q.b.inflightFull.Add(1)
	q.b.dropped(s, clientID, "", "unacknowledged QoS 1 messages at the connection's limit", OutboundInflight)
	return nil
}

func (q *quotaLog) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &quotaLog{inner: q.inner.WithAttrs(attrs), b: q.b}
}

func (q *quotaLog) WithGroup(name string) slog.Handler {
	return &quotaLog{inner: q.inner.WithGroup(name), b: q.b}
}

// listener serves TLS over TCP and over in-memory pipes.
type listener struct {
	id     string
	ln     net.Listener
	tlsCfg *tls.Config
	// requireALPN, when set, is the ALPN protocol a client must negotiate.
	requireALPN string
	pipes       chan net.Conn
	done        chan struct{}
	once        sync.Once
	log         *slog.Logger
	// ended is called with each connection once the embedded broker is
	// done with it (its clean-up included).
	ended func(net.Conn)
}

func (l *listener) ID() string                  { return l.id }
func (l *listener) Address() string             { return l.ln.Addr().String() }
func (l *listener) Protocol() string            { return "tls" }
func (l *listener) Init(log *slog.Logger) error { l.log = log; return nil }

func (l *listener) Serve(establish listeners.EstablishFn) {
	handle := func(raw net.Conn) {
		// Bound the TLS handshake and CONNECT; mochi replaces the
		// deadline with the keepalive once connected.
		_ = raw.SetDeadline(time.Now().Add(20 * time.Second))
		conn := tls.Server(raw, l.tlsCfg)
		if l.requireALPN != "" {
			// Like AWS IoT Core on 443: MQTT only with the ALPN protocol.
			if err := conn.Handshake(); err != nil {
				l.log.Debug("TLS handshake failed", "remote", raw.RemoteAddr().String(), "error", err)
				_ = conn.Close()
				return
			}
			if got := conn.ConnectionState().NegotiatedProtocol; got != l.requireALPN {
				l.log.Warn("connection refused: ALPN "+l.requireALPN+" required on this listener", "remote", raw.RemoteAddr().String(), "alpn", got)
				_ = conn.Close()
				return
			}
		}
		if err := establish(l.id, conn); err != nil {
			l.log.Debug("connection ended", "remote", raw.RemoteAddr().String(), "error", err)
		}
		if l.ended != nil {
			l.ended(conn)
		}
	}
	go func() {
		for {
			select {
			case c := <-l.pipes:
				go handle(c)
			case <-l.done:
				return
			}
		}
	}()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		go handle(c)
	}
}

func (l *listener) Close(closeClients listeners.CloseFn) {
	l.once.Do(func() {
		close(l.done)
		closeClients(l.id)
		_ = l.ln.Close()
	})
}
