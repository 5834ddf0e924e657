package mqttconn

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/sim/ca"
	"github.com/iot-fleet/iot-fleet/sim/core"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

func probeOptions(t *testing.T, addr string, caPEM []byte, cert tls.Certificate, clientID string) Options {
	t.Helper()
	return Options{
		Address: addr, ClientID: clientID, ConnectTimeout: 5 * time.Second,
		TLSConfig: func() (*tls.Config, error) {
			return NewTLSConfig(caPEM, cert, "127.0.0.1", false)
		},
		Logger: testLogger(t),
	}
}

// newCA returns a certificate authority of its own (the sim's CA code).
func newCA(t *testing.T) *ca.CA {
	t.Helper()
	c, err := ca.New(ca.Options{})
	require.NoError(t, err)
	return c
}

// clientCert issues a client certificate signed by c.
func clientCert(t *testing.T, c *ca.CA) tls.Certificate {
	t.Helper()
	iss, key, err := c.NewKeyAndCertificate()
	require.NoError(t, err)
	cert, err := tls.X509KeyPair([]byte(iss.PEM), key)
	require.NoError(t, err)
	return cert
}

func reasonOf(err error) string {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// The local IoT Core, like AWS IoT Core, closes the connection of a
// revoked certificate right after CONNECT, without a CONNACK.
func TestProbeTellsRefusedCertificateFromNetworkFailure(t *testing.T) {
	b := startCloud(t, core.Options{})
	kp := registerDevice(t, b, "dev-a")
	ctx := waitCtx(t)

	require.NoError(t, Probe(ctx, probeOptions(t, b.Endpoint(), b.RootCAPEM(), kp.cert, "dev-a")))

	require.NoError(t, b.SetCertificateStatus(kp.certID, registry.CertRevoked))
	err := Probe(ctx, probeOptions(t, b.Endpoint(), b.RootCAPEM(), kp.cert, "dev-a"))
	require.Error(t, err)
	assert.True(t, IsRefused(err), "%v", err)
	assert.Equal(t, ReasonClosedConnect, reasonOf(err))

	// Nothing listens: a network failure, not a refusal.
	b.StopBroker()
	err = Probe(ctx, probeOptions(t, b.Endpoint(), b.RootCAPEM(), kp.cert, "dev-a"))
	require.Error(t, err)
	assert.False(t, IsRefused(err), "%v", err)
}

// Other MQTT servers (mosquitto, a plain mochi) answer credentials they
// refuse with CONNACK "not authorized" (return code 5).
func TestConnackNotAuthorizedIsARefusal(t *testing.T) {
	pki := newCA(t)
	addr := tlsServer(t, serverTLS(t, pki, pki), func(c *tls.Conn) {
		buf := make([]byte, 256)
		if _, err := c.Read(buf); err != nil { // the CONNECT
			return
		}
		_, _ = c.Write([]byte{0x20, 0x02, 0x00, 0x05})
	})
	err := Probe(waitCtx(t), probeOptions(t, addr, pki.CertPEM(), clientCert(t, pki), "dev-a"))
	require.Error(t, err)
	assert.True(t, IsRefused(err), "%v", err)
	assert.Equal(t, ReasonConnack, reasonOf(err), "%v", err)
}

// tlsServer accepts TLS connections on 127.0.0.1 and hands each one, after
// the handshake, to serve.
func tlsServer(t *testing.T, cfg *tls.Config, serve func(c *tls.Conn)) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := c.(*tls.Conn)
				_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.Handshake() != nil {
					return
				}
				serve(tc)
			}()
		}
	}()
	return l.Addr().String()
}

func serverTLS(t *testing.T, pki *ca.CA, clientCAs *ca.CA) *tls.Config {
	t.Helper()
	cert, err := pki.ServerCertificate("127.0.0.1")
	require.NoError(t, err)
	return &tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs.Pool(),
	}
}

// AWS IoT Core completes the TLS handshake with a revoked or inactive
// certificate and closes the connection after CONNECT, without a CONNACK.
func TestConnectionClosedAfterConnectIsARefusal(t *testing.T) {
	pki := newCA(t)
	addr := tlsServer(t, serverTLS(t, pki, pki), func(c *tls.Conn) {
		buf := make([]byte, 256)
		_, _ = c.Read(buf) // the CONNECT
	})
	kp := clientCert(t, pki)
	err := Probe(waitCtx(t), probeOptions(t, addr, pki.CertPEM(), kp, "dev-a"))
	require.Error(t, err)
	assert.Equal(t, ReasonClosedConnect, reasonOf(err), "%v", err)
}

// A server that does not trust the client certificate answers with a TLS
// alert: in the handshake (TLS 1.2) or on the first read (TLS 1.3).
func TestTLSAlertAboutTheClientCertificateIsARefusal(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		pki, other := newCA(t), newCA(t)
		cfg := serverTLS(t, pki, other)
		cfg.MaxVersion = v
		addr := tlsServer(t, cfg, func(*tls.Conn) {})
		kp := clientCert(t, pki)
		err := Probe(waitCtx(t), probeOptions(t, addr, pki.CertPEM(), kp, "dev-a"))
		require.Error(t, err)
		assert.Equal(t, ReasonTLSAlert, reasonOf(err), "TLS %x: %v", v, err)
	}
}

// A server whose certificate the client does not trust is not a refusal
// of the client's credentials, nor is a server that hangs.
func TestUntrustedServerAndSilentServerAreNotRefusals(t *testing.T) {
	pki, other := newCA(t), newCA(t)
	addr := tlsServer(t, serverTLS(t, other, pki), func(*tls.Conn) {})
	kp := clientCert(t, pki)
	err := Probe(waitCtx(t), probeOptions(t, addr, pki.CertPEM(), kp, "dev-a"))
	require.Error(t, err)
	assert.False(t, IsRefused(err), "%v", err)

	silent := tlsServer(t, serverTLS(t, pki, pki), func(c *tls.Conn) {
		buf := make([]byte, 256)
		_, _ = c.Read(buf)
		time.Sleep(2 * time.Second) // no CONNACK until the client's timeout
	})
	o := probeOptions(t, silent, pki.CertPEM(), kp, "dev-a")
	o.ConnectTimeout = 300 * time.Millisecond
	err = Probe(waitCtx(t), o)
	require.Error(t, err)
	assert.False(t, IsRefused(err), "%v", err)
}

func TestRunReportsEveryAttempt(t *testing.T) {
	b := startCloud(t, core.Options{})
	kp := registerDevice(t, b, "dev-a")
	require.NoError(t, b.SetCertificateStatus(kp.certID, registry.CertInactive))
	refused := make(chan error, 100)
	o := probeOptions(t, b.Endpoint(), b.RootCAPEM(), kp.cert, "dev-a")
	o.Backoff = backoff.Policy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	o.OnAttempt = func(err error) {
		select {
		case refused <- err:
		default:
		}
	}
	c, err := New(o)
	require.NoError(t, err)
	run(t, c)
	for i := 0; i < 3; i++ {
		select {
		case err := <-refused:
			assert.True(t, IsRefused(err), "%v", err)
		case <-waitCtx(t).Done():
			t.Fatal("no attempt reported")
		}
	}
	require.NoError(t, b.SetCertificateStatus(kp.certID, registry.CertActive))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		select {
		case err := <-refused:
			if err == nil {
				return // success is reported as nil
			}
		case <-ctx.Done():
			t.Fatal("no successful attempt reported")
		}
	}
}

var _ net.Conn = (*watchConn)(nil)
