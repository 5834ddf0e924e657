package core

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// testClient is a real MQTT 3.1.1 client (eclipse paho) over mutual TLS.
type testClient struct {
	t    testing.TB
	c    paho.Client
	msgs chan paho.Message
	lost chan error
}

type msg struct {
	Topic   string
	Payload []byte
}

func tlsConfig(rootPEM []byte, creds Credentials) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		return nil, errors.New("bad root CA")
	}
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, ServerName: "127.0.0.1"}, nil
}

// connect returns the client or the connect error.
func connect(t testing.TB, c *Core, creds Credentials, clientID string) (*testClient, error) {
	t.Helper()
	return connectWith(t, c, creds, clientID, nil)
}

func connectWith(t testing.TB, c *Core, creds Credentials, clientID string, dial func(ctx context.Context) (net.Conn, error)) (*testClient, error) {
	cfg, err := tlsConfig(c.RootCAPEM(), creds)
	if err != nil {
		return nil, err
	}
	tc := &testClient{t: t, msgs: make(chan paho.Message, 256), lost: make(chan error, 1)}
	opts := paho.NewClientOptions().
		AddBroker("tls://" + c.Endpoint()).
		SetClientID(clientID).
		// MQTT 3.1.1 only, as the agent and AWS IoT (no fallback to 3.1
		// after a refusal).
		SetProtocolVersion(4).
		SetTLSConfig(cfg).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(10 * time.Second).
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { tc.msgs <- m }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case tc.lost <- err:
			default:
			}
		})
	if dial != nil {
		opts.SetCustomOpenConnectionFn(func(_ *url.URL, o paho.ClientOptions) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			raw, err := dial(ctx)
			if err != nil {
				return nil, err
			}
			conn := tls.Client(raw, cfg)
			if err := conn.HandshakeContext(ctx); err != nil {
				_ = raw.Close()
				return nil, err
			}
			return conn, nil
		})
	}
	tc.c = paho.NewClient(opts)
	tok := tc.c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { tc.c.Disconnect(0) })
	return tc, nil
}

func mustConnect(t testing.TB, c *Core, creds Credentials, clientID string) *testClient {
	t.Helper()
	tc, err := connect(t, c, creds, clientID)
	require.NoError(t, err, "connect %s", clientID)
	return tc
}

// rawConnect completes a mutual-TLS handshake with creds at addr (one of
// c's listeners), offering the ALPN protocols protos, sends an MQTT 3.1.1
// CONNECT with clientID and returns the first bytes the broker answers
// with (a CONNACK is 4 bytes), the negotiated ALPN protocol, whether the
// CONNECT was written, and the write's error or else the read's: io.EOF
// with no bytes when the broker closed the connection without a CONNACK.
// The handshake must succeed.
func rawConnect(t testing.TB, c *Core, addr string, creds Credentials, clientID string, protos []string) (answer []byte, proto string, wrote bool, err error) {
	t.Helper()
	cfg, err := tlsConfig(c.RootCAPEM(), creds)
	require.NoError(t, err)
	cfg.NextProtos = protos
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(&d, "tcp", addr, cfg)
	require.NoError(t, err, "TLS handshake")
	defer conn.Close()
	proto = conn.ConnectionState().NegotiatedProtocol
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	pk := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	pk.ProtocolName, pk.ProtocolVersion = "MQTT", 4
	pk.CleanSession, pk.Keepalive, pk.ClientIdentifier = true, 30, clientID
	if err := pk.Write(conn); err != nil {
		return nil, proto, false, err
	}
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(conn, buf, 4)
	return buf[:n], proto, true, err
}

// connectRaw is rawConnect on the 8883-style listener, without ALPN; the
// CONNECT's write must succeed.
func connectRaw(t testing.TB, c *Core, creds Credentials, clientID string) ([]byte, error) {
	t.Helper()
	got, _, wrote, err := rawConnect(t, c, c.Endpoint(), creds, clientID, nil)
	require.True(t, wrote, "write CONNECT: %v", err)
	return got, err
}

// requireClosedAfterConnect asserts that the broker refuses creds with
// clientID the way AWS IoT Core does: the TLS handshake completes, the
// CONNECT is read, and the connection is closed without any CONNACK.
func requireClosedAfterConnect(t testing.TB, c *Core, creds Credentials, clientID string, msgAndArgs ...any) {
	t.Helper()
	got, err := connectRaw(t, c, creds, clientID)
	require.Empty(t, got, "no CONNACK (got % x): %s", got, fmt.Sprint(msgAndArgs...))
	require.Error(t, err, msgAndArgs...)
	require.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET),
		"connection closed after CONNECT, not %v: %s", err, fmt.Sprint(msgAndArgs...))
	// A real client sees a failed connect, not a hang.
	_, err = connect(t, c, creds, clientID)
	require.Error(t, err, msgAndArgs...)
}

// requireConnackAccepted asserts that the broker answers creds' CONNECT
// with CONNACK "connection accepted".
func requireConnackAccepted(t testing.TB, c *Core, creds Credentials, clientID string) {
	t.Helper()
	got, err := connectRaw(t, c, creds, clientID)
	require.NoError(t, err)
	require.Equal(t, []byte{0x20, 0x02, 0x00, 0x00}, got, "CONNACK accepted")
}

// subscribe returns an error if the broker refused the subscription or
// dropped the connection.
func (tc *testClient) subscribe(filters ...string) error {
	m := map[string]byte{}
	for _, f := range filters {
		m[f] = 1
	}
	tok := tc.c.SubscribeMultiple(m, nil)
	if !tok.WaitTimeout(10 * time.Second) {
		return errors.New("subscribe timed out")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	for f, rc := range tok.(*paho.SubscribeToken).Result() {
		if rc >= 0x80 {
			return fmt.Errorf("subscription %s refused (0x%x)", f, rc)
		}
	}
	return nil
}

func (tc *testClient) mustSubscribe(filters ...string) {
	tc.t.Helper()
	require.NoError(tc.t, tc.subscribe(filters...))
}

func (tc *testClient) publish(topic string, payload any) error {
	var b []byte
	switch p := payload.(type) {
	case []byte:
		b = p
	case string:
		b = []byte(p)
	default:
		var err error
		if b, err = json.Marshal(p); err != nil {
			return err
		}
	}
	tok := tc.c.Publish(topic, 1, false, b)
	if !tok.WaitTimeout(10 * time.Second) {
		return errors.New("publish timed out")
	}
	return tok.Error()
}

func (tc *testClient) mustPublish(topic string, payload any) {
	tc.t.Helper()
	require.NoError(tc.t, tc.publish(topic, payload))
}

// next returns the next message received (any topic).
func (tc *testClient) next() msg {
	tc.t.Helper()
	select {
	case m := <-tc.msgs:
		return msg{m.Topic(), m.Payload()}
	case err := <-tc.lost:
		tc.t.Fatalf("connection lost while waiting for a message: %v", err)
	case <-time.After(15 * time.Second):
		tc.t.Fatalf("no message within 15s")
	}
	return msg{}
}

// await returns the next message on topic, skipping others.
func (tc *testClient) await(topic string) msg {
	tc.t.Helper()
	for {
		m := tc.next()
		if m.Topic == topic {
			return m
		}
	}
}

// waitLost waits until the broker closed the connection.
func (tc *testClient) waitLost() error {
	tc.t.Helper()
	select {
	case err := <-tc.lost:
		return err
	case <-time.After(15 * time.Second):
		tc.t.Fatalf("connection not closed within 15s")
	}
	return nil
}

func newCSR(t testing.TB) (csrPEM string, key *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, key)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}

func keyPEM(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func decode[T any](t testing.TB, m msg) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(m.Payload, &v), "payload of %s: %s", m.Topic, m.Payload)
	return v
}

// provisionOverMQTT runs CreateCertificateFromCsr + RegisterThing with
// the claim certificate and returns the device credentials and the
// RegisterThing answer (accepted or rejected message).
func provisionOverMQTT(t testing.TB, c *Core, claim Credentials, serial string) (Credentials, msg) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return provisionWithKey(t, c, claim, serial, key)
}

// provisionWithKey is provisionOverMQTT with the device key key (a device
// retrying keeps its key).
func provisionWithKey(t testing.TB, c *Core, claim Credentials, serial string, key *ecdsa.PrivateKey) (Credentials, msg) {
	t.Helper()
	tmpl := c.Names().TemplateName
	cl := mustConnect(t, c, claim, protocol.ClaimClientID(serial))
	defer cl.c.Disconnect(0)
	cl.mustSubscribe(protocol.CreateCertFromCSRTopic+"/+", protocol.RegisterThingTopic(tmpl)+"/+")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, key)
	require.NoError(t, err)
	csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	cl.mustPublish(protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csr})
	m := cl.next()
	require.Equal(t, protocol.CreateCertFromCSRAcceptedTopic, m.Topic, string(m.Payload))
	cert := decode[protocol.CreateCertResponse](t, m)
	cl.mustPublish(protocol.RegisterThingTopic(tmpl), protocol.RegisterThingRequest{
		CertificateOwnershipToken: cert.CertificateOwnershipToken,
		Parameters:                map[string]string{protocol.ParamSerialNumber: serial},
	})
	answer := cl.next()
	return Credentials{CertificateID: cert.CertificateID, CertPEM: []byte(cert.CertificatePEM), KeyPEM: keyPEM(t, key)}, answer
}
