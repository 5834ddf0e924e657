package testbroker

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Provisioning APIs the responder implements.
const (
	APICreateCertFromCSR = "CreateCertificateFromCsr"
	APIRegisterThing     = "RegisterThing"
)

// Certificate statuses.
const (
	StatusPending = "PENDING_ACTIVATION"
	StatusActive  = "ACTIVE"
)

// Options configure a Broker.
type Options struct {
	// TemplateName is the provisioning template (default "iot-fleet-dev").
	TemplateName string
	// ThingNamePrefix is prepended to the serial (default "dev-").
	ThingNamePrefix string
	// Allow is the pre-provisioning hook; nil allows every serial.
	Allow func(serial string) bool
	// TokenTTL is how long an ownership token is valid (default 5m).
	TokenTTL time.Duration
}

// Cert is a certificate the broker knows.
type Cert struct {
	ID     string
	Claim  bool
	Status string
	Thing  string
}

// ConnectRecord is one accepted or refused CONNECT.
type ConnectRecord struct {
	ClientID string
	CertID   string
	Accepted bool
}

// Received is a message observed by Watch.
type Received struct {
	Topic   string
	Payload []byte
	From    string
}

type injected struct {
	resp    *protocol.ErrorResponse // reject with this
	drop    bool                    // no answer
	process bool                    // with drop: process, then drop the answer
	signal  chan struct{}
}

type watch struct {
	filter string
	ch     chan Received
}

// Broker is a running embedded broker.
type Broker struct {
	t    testing.TB
	opts Options
	PKI  *PKI
	// Addr is host:port of the TLS listener (stable across Restart).
	Addr string
	// CAFile holds the CA (root of the server and client certificates).
	CAFile string
	// Claim is the shared provisioning-claim certificate.
	Claim KeyPair

	dir    string
	server KeyPair

	mu       sync.Mutex
	srv      *mqtt.Server
	certs    map[string]*Cert
	tokens   map[string]tokenRecord
	things   map[string]string // thing -> serial
	connects []ConnectRecord
	inject   map[string][]injected
	requests map[string]int
	watches  []watch
	subID    int
}

type tokenRecord struct {
	certID string
	issued time.Time
}

// Start runs a broker on a free 127.0.0.1 port until the test ends.
func Start(t testing.TB, opts Options) *Broker {
	t.Helper()
	if opts.TemplateName == "" {
		opts.TemplateName = "iot-fleet-dev"
	}
	if opts.ThingNamePrefix == "" {
		opts.ThingNamePrefix = "dev-"
	}
	if opts.TokenTTL == 0 {
		opts.TokenTTL = 5 * time.Minute
	}
	dir := t.TempDir()
	b := &Broker{
		t: t, opts: opts, PKI: NewPKI(t), dir: dir,
		certs: map[string]*Cert{}, tokens: map[string]tokenRecord{}, things: map[string]string{},
		inject: map[string][]injected{}, requests: map[string]int{},
	}
	b.CAFile = dir + "/ca.pem"
	require.NoError(t, os.WriteFile(b.CAFile, b.PKI.CAPEM, 0o644))
	b.server = b.PKI.Issue(t, dir, "server", true)
	b.Claim = b.PKI.Issue(t, dir, "claim", false)
	b.certs[b.Claim.CertificateID] = &Cert{ID: b.Claim.CertificateID, Claim: true, Status: StatusActive}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b.Addr = l.Addr().String()
	require.NoError(t, l.Close())
	b.startServer(t)
	t.Cleanup(b.Stop)
	return b
}

// TemplateName is the provisioning template the responder serves.
func (b *Broker) TemplateName() string { return b.opts.TemplateName }

func (b *Broker) startServer(t testing.TB) {
	t.Helper()
	cert, err := tls.X509KeyPair(b.server.CertPEM, b.server.KeyPEM)
	require.NoError(t, err)
	srv := mqtt.New(&mqtt.Options{
		InlineClient: true,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, srv.AddHook(&authHook{b: b}, nil))
	tcp := listeners.NewTCP(listeners.Config{
		Type: "tcp", ID: "tls", Address: b.Addr,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    b.PKI.Pool(),
		},
	})
	// The port was free a moment ago; after a Restart the old listener may
	// still be closing, so retry briefly.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err = srv.AddListener(tcp)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.NoError(t, err, "listen %s", b.Addr)
	// The in-test services and observers subscribe before the listener
	// serves, so no client message published right after a (re)start is
	// missed by them.
	b.mu.Lock()
	watches := append([]watch(nil), b.watches...)
	b.mu.Unlock()
	require.NoError(t, b.subscribeInline(srv, protocol.CreateCertFromCSRTopic, b.handleCSR))
	require.NoError(t, b.subscribeInline(srv, protocol.RegisterThingTopic(b.opts.TemplateName), b.handleRegister))
	for _, w := range watches {
		require.NoError(t, b.subscribeInline(srv, w.filter, watchFn(w.ch)))
	}
	require.NoError(t, srv.Serve())

	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
}

func watchFn(ch chan Received) mqtt.InlineSubFn {
	return func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		ch <- Received{Topic: pk.TopicName, Payload: append([]byte(nil), pk.Payload...), From: pk.Origin}
	}
}

func (b *Broker) subscribeInline(srv *mqtt.Server, filter string, fn mqtt.InlineSubFn) error {
	b.mu.Lock()
	b.subID++
	id := b.subID
	b.mu.Unlock()
	return srv.Subscribe(filter, id, fn)
}

// Stop closes the broker (idempotent).
func (b *Broker) Stop() {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	b.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// Restart stops the broker, dropping every connection and session, and
// starts it again on the same address. The "cloud" state (certificates,
// things) is kept.
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	b.Stop()
	b.startServer(t)
}

// Watch delivers every message published on filter (the observer bypasses
// authorization, like an operator's test client). The channel is buffered.
func (b *Broker) Watch(t testing.TB, filter string) <-chan Received {
	t.Helper()
	ch := make(chan Received, 256)
	b.mu.Lock()
	b.watches = append(b.watches, watch{filter: filter, ch: ch})
	srv := b.srv
	b.mu.Unlock()
	require.NotNil(t, srv)
	require.NoError(t, b.subscribeInline(srv, filter, watchFn(ch)))
	return ch
}

// Serve runs fn for every message published on filter by a client (an
// in-test cloud service such as a minimal Jobs API); fn may answer with
// Reply.
func (b *Broker) Serve(t testing.TB, filter string, fn func(from, topic string, payload []byte)) {
	t.Helper()
	ch := b.Watch(t, filter)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case m := <-ch:
				fn(m.From, m.Topic, m.Payload)
			case <-done:
				return
			}
		}
	}()
}

// Reply sends v as JSON on topic to clientID only (if it is subscribed to
// it), the way AWS answers reserved-topic API requests.
func (b *Broker) Reply(clientID, topic string, v any) { b.reply(clientID, topic, v) }

// Publish sends a message from the cloud side (QoS 1).
func (b *Broker) Publish(topic string, payload []byte) error {
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	if srv == nil {
		return fmt.Errorf("broker stopped")
	}
	return srv.Publish(topic, payload, false, 1)
}

// Disconnect drops the connection of clientID.
func (b *Broker) Disconnect(clientID string) bool {
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	if srv == nil {
		return false
	}
	cl, ok := srv.Clients.Get(clientID)
	if !ok {
		return false
	}
	cl.Stop(fmt.Errorf("disconnected by test"))
	return true
}

// RegisterDevice issues an active device certificate attached to thing.
func (b *Broker) RegisterDevice(t testing.TB, thing string) KeyPair {
	t.Helper()
	kp := b.PKI.Issue(t, t.TempDir(), thing, false)
	b.mu.Lock()
	b.certs[kp.CertificateID] = &Cert{ID: kp.CertificateID, Status: StatusActive, Thing: thing}
	b.things[thing] = ""
	b.mu.Unlock()
	return kp
}

// RejectNext makes the next n requests of api fail with resp.
func (b *Broker) RejectNext(api string, resp protocol.ErrorResponse, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := 0; i < n; i++ {
		r := resp
		b.inject[api] = append(b.inject[api], injected{resp: &r})
	}
}

// DropNext makes the broker swallow the answer to the next request of api.
// With process set the request takes effect (the certificate is created or
// the thing registered) and only the answer is lost; otherwise the request
// itself is lost. The returned channel is closed when that request arrived.
func (b *Broker) DropNext(api string, process bool) <-chan struct{} {
	ch := make(chan struct{})
	b.mu.Lock()
	b.inject[api] = append(b.inject[api], injected{drop: true, process: process, signal: ch})
	b.mu.Unlock()
	return ch
}

// Requests counts the requests received for api.
func (b *Broker) Requests(api string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.requests[api]
}

// Certs returns the certificates issued through CreateCertificateFromCsr.
func (b *Broker) Certs() []Cert {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Cert
	for _, c := range b.certs {
		if !c.Claim {
			out = append(out, *c)
		}
	}
	return out
}

// Thing reports whether thing is registered, and its serial.
func (b *Broker) Thing(thing string) (serial string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	serial, ok = b.things[thing]
	return serial, ok
}

// Connects returns every CONNECT the broker saw.
func (b *Broker) Connects() []ConnectRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]ConnectRecord(nil), b.connects...)
}

// ExpireTokens makes every ownership token issued so far expired.
func (b *Broker) ExpireTokens() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, v := range b.tokens {
		v.issued = v.issued.Add(-b.opts.TokenTTL - time.Second)
		b.tokens[k] = v
	}
}

func (b *Broker) takeInjection(api string) (injected, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.requests[api]++
	q := b.inject[api]
	if len(q) == 0 {
		return injected{}, false
	}
	b.inject[api] = q[1:]
	return q[0], true
}

// reply sends payload on topic to clientID only, like AWS answers reserved
// API requests to the requesting connection (if it is subscribed).
func (b *Broker) reply(clientID, topic string, v any) {
	payload, err := json.Marshal(v)
	if err != nil {
		b.t.Errorf("testbroker: marshal reply: %v", err)
		return
	}
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	if srv == nil {
		return
	}
	cl, ok := srv.Clients.Get(clientID)
	if !ok {
		return
	}
	subscribed := false
	for filter := range cl.State.Subscriptions.GetAll() {
		if topicMatch(filter, topic) {
			subscribed = true
		}
	}
	if !subscribed {
		return
	}
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 0},
		TopicName:   topic,
		Payload:     payload,
	})
}

func (b *Broker) handleCSR(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	from := pk.Origin
	inj, has := b.takeInjection(APICreateCertFromCSR)
	if has && inj.resp != nil {
		b.reply(from, protocol.CreateCertFromCSRRejectedTopic, inj.resp)
		return
	}
	if has && inj.drop {
		defer close(inj.signal)
		if !inj.process {
			return
		}
	}
	var req protocol.CreateCertFromCSRRequest
	if err := json.Unmarshal(pk.Payload, &req); err != nil {
		b.reply(from, protocol.CreateCertFromCSRRejectedTopic, protocol.ErrorResponse{StatusCode: 400, ErrorCode: protocol.ErrCodeInvalidJSON, ErrorMessage: "invalid JSON: " + err.Error()})
		return
	}
	certPEM, certID, err := b.PKI.SignCSR([]byte(req.CertificateSigningRequest))
	if err != nil {
		b.reply(from, protocol.CreateCertFromCSRRejectedTopic, protocol.ErrorResponse{StatusCode: 400, ErrorCode: protocol.ErrCodeInvalidPayload, ErrorMessage: "invalid certificateSigningRequest: " + err.Error()})
		return
	}
	token := randomHex(32)
	b.mu.Lock()
	b.certs[certID] = &Cert{ID: certID, Status: StatusPending}
	b.tokens[token] = tokenRecord{certID: certID, issued: time.Now()}
	b.mu.Unlock()
	if has && inj.drop {
		return
	}
	b.reply(from, protocol.CreateCertFromCSRAcceptedTopic, protocol.CreateCertResponse{
		CertificateID: certID, CertificatePEM: string(certPEM), CertificateOwnershipToken: token,
	})
}

func (b *Broker) handleRegister(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	from := pk.Origin
	tmpl := b.opts.TemplateName
	rejected := protocol.RegisterThingRejectedTopic(tmpl)
	inj, has := b.takeInjection(APIRegisterThing)
	if has && inj.resp != nil {
		b.reply(from, rejected, inj.resp)
		return
	}
	if has && inj.drop {
		defer close(inj.signal)
		if !inj.process {
			return
		}
	}
	var req protocol.RegisterThingRequest
	if err := json.Unmarshal(pk.Payload, &req); err != nil {
		b.reply(from, rejected, protocol.ErrorResponse{StatusCode: 400, ErrorCode: protocol.ErrCodeInvalidJSON, ErrorMessage: "invalid JSON: " + err.Error()})
		return
	}
	b.mu.Lock()
	tok, ok := b.tokens[req.CertificateOwnershipToken]
	expired := ok && time.Since(tok.issued) > b.opts.TokenTTL
	b.mu.Unlock()
	if !ok || expired {
		b.reply(from, rejected, protocol.ErrorResponse{StatusCode: 400, ErrorCode: protocol.ErrCodeInvalidRequest, ErrorMessage: "Invalid or expired certificate ownership token"})
		return
	}
	serial := req.Parameters[protocol.ParamSerialNumber]
	if serial == "" {
		b.reply(from, rejected, protocol.ErrorResponse{StatusCode: 400, ErrorCode: protocol.ErrCodeInvalidRequest, ErrorMessage: "missing parameter " + protocol.ParamSerialNumber})
		return
	}
	if b.opts.Allow != nil && !b.opts.Allow(serial) {
		b.reply(from, rejected, protocol.ErrorResponse{StatusCode: 403, ErrorCode: protocol.ErrCodeAccessDenied, ErrorMessage: "Pre provisioning hook denied the request"})
		return
	}
	thing := b.opts.ThingNamePrefix + serial
	b.mu.Lock()
	c := b.certs[tok.certID]
	c.Status = StatusActive
	c.Thing = thing
	b.things[thing] = serial
	b.mu.Unlock()
	if has && inj.drop {
		return
	}
	b.reply(from, protocol.RegisterThingAcceptedTopic(tmpl), protocol.RegisterThingResponse{
		ThingName:           thing,
		DeviceConfiguration: map[string]string{"thingGroup": "iot-fleet-dev"},
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// principal identifies the certificate of a connection.
func (b *Broker) principal(cl *mqtt.Client) (*Cert, string) {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return nil, ""
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return nil, ""
	}
	id := CertID(st.PeerCertificates[0].Raw)
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.certs[id]
	if c == nil {
		return nil, id
	}
	cp := *c
	return &cp, id
}

type authHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *authHook) ID() string { return "iot-auth" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	c, id := h.b.principal(cl)
	ok := false
	switch {
	case c == nil:
	case c.Claim:
		ok = strings.HasPrefix(cl.ID, protocol.ClaimClientIDPrefix)
	default:
		ok = c.Status == StatusActive && c.Thing != "" && cl.ID == c.Thing
	}
	h.b.mu.Lock()
	h.b.connects = append(h.b.connects, ConnectRecord{ClientID: cl.ID, CertID: id, Accepted: ok})
	h.b.mu.Unlock()
	return ok
}

func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	c, _ := h.b.principal(cl)
	if c == nil {
		return false
	}
	tmpl := h.b.opts.TemplateName
	if c.Claim {
		csr, reg := protocol.CreateCertFromCSRTopic, protocol.RegisterThingTopic(tmpl)
		if write {
			return topic == csr || topic == reg
		}
		return topic == csr+"/accepted" || topic == csr+"/rejected" || topic == csr+"/+" ||
			topic == reg+"/accepted" || topic == reg+"/rejected" || topic == reg+"/+"
	}
	thing := c.Thing
	jobs := "$aws/things/" + thing + "/jobs/"
	dt := "dt/" + protocol.Application + "/" + thing + "/"
	cmd := "cmd/" + protocol.Application + "/" + thing + "/"
	// Its own fleet-agent named shadow, as the device policy allows.
	shadow := protocol.NamedShadowPrefix(thing, protocol.AgentShadowName) + "/"
	if write {
		return strings.HasPrefix(topic, jobs) || strings.HasPrefix(topic, dt) ||
			topic == shadow+protocol.ShadowOpUpdate || topic == shadow+protocol.ShadowOpGet || topic == shadow+protocol.ShadowOpDelete
	}
	return strings.HasPrefix(topic, jobs) || strings.HasPrefix(topic, cmd) || strings.HasPrefix(topic, shadow)
}

// topicMatch matches an MQTT filter against a topic.
func topicMatch(filter, topic string) bool {
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

// Pool returns the CA pool (for test clients).
func (b *Broker) Pool() *x509.CertPool { return b.PKI.Pool() }

// SetCert records certificate id with status and thing, as a cloud control
// plane would after CreateCertificateFromCsr, UpdateCertificate or
// (Attach|Detach)ThingPrincipal (used by the rotation tests).
func (b *Broker) SetCert(id, status, thing string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.certs[id] = &Cert{ID: id, Status: status, Thing: thing}
	if thing != "" {
		if _, ok := b.things[thing]; !ok {
			b.things[thing] = ""
		}
	}
}

// DeleteCert forgets certificate id (DeleteCertificate).
func (b *Broker) DeleteCert(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.certs, id)
}

// PrincipalOf returns the certificate id of clientID's current connection
// ("" if it is not connected), like AWS IoT's principal() rule function.
func (b *Broker) PrincipalOf(clientID string) string {
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	if srv == nil {
		return ""
	}
	cl, ok := srv.Clients.Get(clientID)
	if !ok {
		return ""
	}
	_, id := b.principal(cl)
	return id
}
