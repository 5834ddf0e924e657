// Package mqttconn keeps the agent's MQTT connection to AWS IoT Core (or any
// MQTT 3.1.1 broker) over mutual TLS.
//
// It fixes the two connection defects of the reference agent: subscriptions
// are registered once with a handler and re-established on every
// (re)connect, whatever session state the broker kept, and QoS 1 publishes
// wait for the broker's PUBACK instead of being fire-and-forget.
//
// Reconnection is driven by Run, not by paho's own auto-reconnect, so the
// delay between attempts is an exponential backoff with jitter and every
// attempt loads a fresh TLS configuration (a rotated certificate takes
// effect on the next connect).
package mqttconn

import (
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

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/internal/mqtttopic"
)

// ALPNProtocol is the ALPN protocol name AWS IoT Core expects for MQTT with
// X.509 client certificates on port 443.
const ALPNProtocol = "x-amzn-mqtt-ca"

// Errors returned by Publish and Subscribe.
var (
	ErrNotConnected   = errors.New("mqtt: not connected")
	ErrConnectionLost = errors.New("mqtt: connection lost before the broker acknowledged")
)

// Handler receives a message delivered on a subscribed topic. Handlers run
// one at a time, in arrival order, on the client's dispatch goroutine (not
// paho's), so a handler may publish and wait for the acknowledgement; a
// handler that blocks for long delays the following messages.
type Handler func(topic string, payload []byte)

// OnConnectFunc runs after each successful (re)connect, once every
// registered subscription has been acknowledged. ctx is cancelled when that
// connection is lost or the client stops.
type OnConnectFunc func(ctx context.Context)

// TLSConfigFunc returns the TLS configuration for the next connection
// attempt.
type TLSConfigFunc func() (*tls.Config, error)

// Options configure a Client.
type Options struct {
	// Address is the broker's host:port.
	Address string
	// ClientID is the MQTT client id (the thing name, or the claim client id
	// during provisioning).
	ClientID string
	// CleanSession asks the broker for a clean session; the agent uses a
	// persistent session (false) with its device identity.
	CleanSession bool
	// TLSConfig is called before every connection attempt.
	TLSConfig TLSConfigFunc
	// KeepAlive is the MQTT keep-alive interval (default 60s).
	KeepAlive time.Duration
	// ConnectTimeout bounds the TCP+TLS+CONNECT exchange (default 30s).
	ConnectTimeout time.Duration
	// Backoff is the delay between connection attempts.
	Backoff backoff.Policy
	// StableAfter is how long a connection must last for the backoff to
	// start again from its initial delay (default 30s). A broker that drops
	// the connection right after accepting it is retried with growing delays.
	StableAfter time.Duration
	// Logger receives connection events (default slog.Default()).
	Logger *slog.Logger
	// OnAttempt, if set, is called by Run after every connection attempt,
	// synchronously, with nil on success or the attempt's error (a
	// *RefusedError when the broker refused the credentials).
	OnAttempt func(err error)
	// Liveness, if set, receives Run's heartbeats (the agent's
	// supervisor): Run beats while connected and while it waits, and
	// announces each connection attempt and backoff sleep as Busy with its
	// bound. While connected it stops beating if a handler has blocked
	// the dispatch goroutine for two intervals: a connection that delivers
	// no message to its handlers is not alive.
	Liveness Liveness
}

// Liveness is how Run reports that it is alive (the agent's *Loop).
type Liveness interface {
	Beat()
	Busy(d time.Duration)
	Interval() time.Duration
}

type noLiveness struct{}

func (noLiveness) Beat()                   {}
func (noLiveness) Busy(time.Duration)      {}
func (noLiveness) Interval() time.Duration { return time.Hour }

// NewTLSConfig builds a client TLS configuration: TLS 1.2 or newer, the
// given root CAs, the client certificate, the broker's host name for
// verification and, when alpn is set, the x-amzn-mqtt-ca ALPN protocol
// (required by AWS IoT Core for MQTT on port 443).
func NewTLSConfig(rootCAPEM []byte, cert tls.Certificate, serverName string, alpn bool) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootCAPEM) {
		return nil, errors.New("tls config: root CA file holds no PEM certificate")
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      pool,
		Certificates: []tls.Certificate{cert},
		ServerName:   serverName,
	}
	if alpn {
		cfg.NextProtos = []string{ALPNProtocol}
	}
	return cfg, nil
}

type subscription struct {
	filter  string
	qos     byte
	handler Handler
}

// session is one established connection.
type session struct {
	pc         mqtt.Client
	subscribed map[string]bool
	lost       chan struct{}
	lostOnce   sync.Once
	ctx        context.Context
	cancel     context.CancelFunc
}

func (s *session) markLost() { s.lostOnce.Do(func() { close(s.lost) }) }

// Client is a supervised MQTT connection. Create it with New, register
// subscriptions and hooks, then call Run.
type Client struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	subs      []subscription
	hooks     []OnConnectFunc
	sess      *session
	up        chan struct{} // closed while sess != nil
	kick      chan struct{} // Reconnect requests
	running   bool
	connected atomic.Int64

	inbox *queue
	probe bool // Probe: no auto-ack
	// handling is when the running handler started (unix ns; 0: none).
	handling atomic.Int64
}

// New validates opts and returns an idle Client.
func New(opts Options) (*Client, error) {
	if opts.Address == "" {
		return nil, errors.New("mqttconn: empty broker address")
	}
	if _, _, err := net.SplitHostPort(opts.Address); err != nil {
		return nil, fmt.Errorf("mqttconn: broker address %q: %w", opts.Address, err)
	}
	if opts.ClientID == "" {
		return nil, errors.New("mqttconn: empty client id")
	}
	if opts.TLSConfig == nil {
		return nil, errors.New("mqttconn: TLSConfig is required")
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = 60 * time.Second
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 30 * time.Second
	}
	if opts.StableAfter <= 0 {
		opts.StableAfter = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Liveness == nil {
		opts.Liveness = noLiveness{}
	}
	return &Client{
		opts:  opts,
		log:   opts.Logger.With("component", "mqtt", "clientId", opts.ClientID),
		up:    make(chan struct{}),
		kick:  make(chan struct{}, 1),
		inbox: newQueue(),
	}, nil
}

// ClientID is the MQTT client id of c.
func (c *Client) ClientID() string { return c.opts.ClientID }

// Connections counts the connections established so far.
func (c *Client) Connections() int64 { return c.connected.Load() }

// Subscribe registers handler for filter at qos. The subscription is made on
// every (re)connect; if c is connected now it is also made immediately and
// Subscribe waits for the SUBACK. A filter may only be registered once.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte, handler Handler) error {
	if filter == "" || handler == nil || qos > 1 {
		return fmt.Errorf("mqttconn: subscribe %q: need a filter, a handler and qos 0 or 1", filter)
	}
	c.mu.Lock()
	for _, s := range c.subs {
		if s.filter == filter {
			c.mu.Unlock()
			return fmt.Errorf("mqttconn: subscribe %q: already registered", filter)
		}
	}
	c.subs = append(c.subs, subscription{filter: filter, qos: qos, handler: handler})
	sess := c.sess
	c.mu.Unlock()
	if sess == nil {
		return nil
	}
	return c.subscribe(ctx, sess, map[string]byte{filter: qos})
}

// OnConnect registers fn to run after every (re)connect.
func (c *Client) OnConnect(fn OnConnectFunc) {
	c.mu.Lock()
	c.hooks = append(c.hooks, fn)
	c.mu.Unlock()
}

// IsConnected reports whether a connection is established.
func (c *Client) IsConnected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess != nil
}

// WaitConnected blocks until c is connected (subscriptions made) or ctx is
// done.
func (c *Client) WaitConnected(ctx context.Context) error {
	c.mu.Lock()
	up := c.up
	c.mu.Unlock()
	select {
	case <-up:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Reconnect drops the current connection (if any); Run reconnects at once
// with a freshly loaded TLS configuration.
func (c *Client) Reconnect() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Publish sends payload to topic. With qos 1 it returns only once the broker
// acknowledged the message (PUBACK), or with an error: ErrNotConnected,
// ErrConnectionLost (the message may or may not have reached the broker),
// or ctx's error.
func (c *Client) Publish(ctx context.Context, topic string, qos byte, payload []byte) error {
	if qos > 1 {
		return fmt.Errorf("mqttconn: publish %s: qos %d not supported", topic, qos)
	}
	c.mu.Lock()
	sess := c.sess
	c.mu.Unlock()
	if sess == nil {
		return ErrNotConnected
	}
	tok := sess.pc.Publish(topic, qos, false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("mqtt publish %s: %w", topic, err)
		}
		return nil
	case <-sess.lost:
		return ErrConnectionLost
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run connects and keeps c connected until ctx is done, then disconnects
// cleanly and returns nil. Connection failures are retried with backoff and
// logged; Run returns an error only when called twice concurrently.
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running {
		c.mu.Unlock()
		return errors.New("mqttconn: Run called twice")
	}
	c.running = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
	}()

	dispatchDone := make(chan struct{})
	go func() {
		defer close(dispatchDone)
		c.dispatch(ctx)
	}()
	defer func() { <-dispatchDone }()

	live := c.opts.Liveness
	attempt := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		// Dial, TLS, CONNECT and SUBSCRIBE: each bounded by ConnectTimeout
		// (or by the keep-alive once connected).
		live.Busy(2*c.opts.ConnectTimeout + c.opts.KeepAlive)
		sess, err := c.connectOnce(ctx)
		if ctx.Err() == nil && c.opts.OnAttempt != nil {
			c.opts.OnAttempt(err)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d := c.opts.Backoff.Delay(attempt)
			attempt++
			c.log.Warn("mqtt connect failed", "addr", c.opts.Address, "err", err, "retryIn", d.Round(time.Millisecond))
			live.Busy(d)
			if backoff.Sleep(ctx, d) != nil {
				return nil
			}
			continue
		}
		start := time.Now()
		if missed := c.setSession(sess); len(missed) > 0 {
			// Registered while this connection was being set up.
			_ = c.subscribe(ctx, sess, missed)
		}
		c.runHooks(sess)

		stopped := c.serveSession(ctx, sess)
		c.clearSession(sess)
		sess.pc.Disconnect(250)
		sess.markLost()
		if stopped {
			c.log.Info("mqtt disconnected")
			return nil
		}
		if time.Since(start) >= c.opts.StableAfter {
			attempt = 0
		}
		d := c.opts.Backoff.Delay(attempt)
		attempt++
		live.Busy(d)
		if backoff.Sleep(ctx, d) != nil {
			return nil
		}
	}
}

// serveSession waits until sess is lost, a reconnect is requested or ctx
// is done (stopped), beating while the connection and its dispatch
// goroutine are alive.
func (c *Client) serveSession(ctx context.Context, sess *session) (stopped bool) {
	live := c.opts.Liveness
	live.Beat()
	tick := time.NewTicker(live.Interval())
	defer tick.Stop()
	for {
		select {
		case <-sess.lost:
			c.log.Warn("mqtt connection lost")
			return false
		case <-c.kick:
			c.log.Info("mqtt reconnect requested")
			return false
		case <-ctx.Done():
			return true
		case <-tick.C:
			if since := c.handling.Load(); since != 0 && time.Since(time.Unix(0, since)) > 2*live.Interval() {
				c.log.Error("mqtt message handler blocked: incoming messages are not delivered", "blockedFor", time.Since(time.Unix(0, since)).Round(time.Millisecond))
				continue
			}
			live.Beat()
		}
	}
}

// setSession publishes s as the current connection and returns the
// subscriptions registered after s made its own.
func (c *Client) setSession(s *session) map[string]byte {
	c.mu.Lock()
	c.sess = s
	close(c.up)
	missed := map[string]byte{}
	for _, sub := range c.subs {
		if !s.subscribed[sub.filter] {
			missed[sub.filter] = sub.qos
		}
	}
	c.mu.Unlock()
	c.connected.Add(1)
	return missed
}

func (c *Client) clearSession(s *session) {
	s.cancel()
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
		c.up = make(chan struct{})
	}
	c.mu.Unlock()
}

func (c *Client) connectOnce(ctx context.Context) (*session, error) {
	tlsCfg, err := c.opts.TLSConfig()
	if err != nil {
		return nil, fmt.Errorf("tls config: %w", err)
	}
	sess := &session{lost: make(chan struct{})}
	at := &attempt{}
	po := mqtt.NewClientOptions().
		AddBroker("tls://" + c.opts.Address).
		SetClientID(c.opts.ClientID).
		SetCleanSession(c.opts.CleanSession).
		SetTLSConfig(tlsCfg).
		SetKeepAlive(c.opts.KeepAlive).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(c.opts.ConnectTimeout).
		SetWriteTimeout(c.opts.ConnectTimeout).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetOrderMatters(true).
		SetProtocolVersion(4).
		SetAutoAckDisabled(c.probe).
		SetCustomOpenConnectionFn(c.openFunc(ctx, tlsCfg, at)).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			c.inbox.push(inbound{topic: m.Topic(), payload: m.Payload()})
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			c.log.Debug("mqtt connection lost", "err", err)
			sess.markLost()
		})
	pc := mqtt.NewClient(po)
	tok := pc.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		at.abort()
		<-tok.Done()
		if tok.Error() == nil {
			pc.Disconnect(0)
		}
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect %s: %w", c.opts.Address, classify(err, at))
	}
	sess.pc = pc
	sess.ctx, sess.cancel = context.WithCancel(ctx)

	c.mu.Lock()
	filters := make(map[string]byte, len(c.subs))
	sess.subscribed = make(map[string]bool, len(c.subs))
	for _, s := range c.subs {
		filters[s.filter] = s.qos
		sess.subscribed[s.filter] = true
	}
	c.mu.Unlock()
	if len(filters) > 0 {
		if err := c.subscribe(ctx, sess, filters); err != nil {
			var se *SubscribeError
			if !errors.As(err, &se) { // refused filters are logged, not fatal
				sess.cancel()
				pc.Disconnect(0)
				return nil, err
			}
		}
	}
	c.log.Info("mqtt connected", "addr", c.opts.Address, "subscriptions", len(filters))
	return sess, nil
}

// SubscribeError lists the filters the broker refused (SUBACK 0x80).
type SubscribeError struct{ Refused []string }

func (e *SubscribeError) Error() string {
	return fmt.Sprintf("mqtt: broker refused subscriptions %v", e.Refused)
}

func (c *Client) subscribe(ctx context.Context, sess *session, filters map[string]byte) error {
	tok := sess.pc.SubscribeMultiple(filters, nil)
	select {
	case <-tok.Done():
	case <-sess.lost:
		return ErrConnectionLost
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("mqtt subscribe: %w", err)
	}
	st, ok := tok.(*mqtt.SubscribeToken)
	if !ok {
		return nil
	}
	var refused []string
	for f, code := range st.Result() {
		if code == 0x80 {
			refused = append(refused, f)
		}
	}
	if len(refused) > 0 {
		sort.Strings(refused)
		c.log.Error("mqtt subscriptions refused by the broker", "filters", refused)
		return &SubscribeError{Refused: refused}
	}
	return nil
}

func (c *Client) runHooks(sess *session) {
	c.mu.Lock()
	hooks := append([]OnConnectFunc(nil), c.hooks...)
	c.mu.Unlock()
	if len(hooks) == 0 {
		return
	}
	go func() {
		for _, h := range hooks {
			if sess.ctx.Err() != nil {
				return
			}
			h(sess.ctx)
		}
	}()
}

func (c *Client) dispatch(ctx context.Context) {
	for {
		m, ok := c.inbox.pop(ctx)
		if !ok {
			return
		}
		c.mu.Lock()
		var hs []Handler
		for _, s := range c.subs {
			if mqtttopic.Match(s.filter, m.topic) {
				hs = append(hs, s.handler)
			}
		}
		c.mu.Unlock()
		if len(hs) == 0 {
			c.log.Debug("mqtt message without handler", "topic", m.topic)
		}
		c.handling.Store(time.Now().UnixNano())
		for _, h := range hs {
			h(m.topic, m.payload)
		}
		c.handling.Store(0)
	}
}
