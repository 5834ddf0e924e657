package mqttconn

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/internal/testbroker"
)

func probeOptions(t *testing.T, addr string, caPEM []byte, kp testbroker.KeyPair, clientID string) Options {
	t.Helper()
	return Options{
		Address: addr, ClientID: clientID, ConnectTimeout: 5 * time.Second,
		TLSConfig: func() (*tls.Config, error) {
			cert, err := tls.LoadX509KeyPair(kp.CertFile, kp.KeyFile)
			if err != nil {
				return nil, err
			}
			return NewTLSConfig(caPEM, cert, "127.0.0.1", false)
		},
		Logger: testLogger(t),
	}
}

func reasonOf(err error) string {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// The test broker (a plain mochi) answers an inactive or revoked
// certificate with CONNACK "not authorized" (the local IoT Core closes the
// connection as AWS does: e2e's recovery test covers that path).
func TestProbeTellsRefusedCertificateFromNetworkFailure(t *testing.T) {
	b := testbroker.Start(t, testbroker.Options{})
	kp := b.RegisterDevice(t, "dev-a")
	ca, err := os.ReadFile(b.CAFile)
	require.NoError(t, err)
	ctx := waitCtx(t)

	require.NoError(t, Probe(ctx, probeOptions(t, b.Addr, ca, kp, "dev-a")))

	b.SetCert(kp.CertificateID, "REVOKED", "dev-a")
	err = Probe(ctx, probeOptions(t, b.Addr, ca, kp, "dev-a"))
	require.Error(t, err)
	assert.True(t, IsRefused(err), "%v", err)
	assert.Equal(t, ReasonConnack, reasonOf(err))

	// Nothing listens: a network failure, not a refusal.
	b.Stop()
	err = Probe(ctx, probeOptions(t, b.Addr, ca, kp, "dev-a"))
	require.Error(t, err)
	assert.False(t, IsRefused(err), "%v", err)
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

func serverTLS(t *testing.T, pki *testbroker.PKI, clientCAs *testbroker.PKI) *tls.Config {
	t.Helper()
	srv := pki.Issue(t, t.TempDir(), "server", true)
	cert, err := tls.X509KeyPair(srv.CertPEM, srv.KeyPEM)
	require.NoError(t, err)
	return &tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs.Pool(),
	}
}

// AWS IoT Core completes the TLS handshake with a revoked or inactive
// certificate and closes the connection after CONNECT, without a CONNACK.
func TestConnectionClosedAfterConnectIsARefusal(t *testing.T) {
	pki := testbroker.NewPKI(t)
	addr := tlsServer(t, serverTLS(t, pki, pki), func(c *tls.Conn) {
		buf := make([]byte, 256)
		_, _ = c.Read(buf) // the CONNECT
	})
	kp := pki.Issue(t, t.TempDir(), "dev-a", false)
	err := Probe(waitCtx(t), probeOptions(t, addr, pki.CAPEM, kp, "dev-a"))
	require.Error(t, err)
	assert.Equal(t, ReasonClosedConnect, reasonOf(err), "%v", err)
}

// A server that does not trust the client certificate answers with a TLS
// alert: in the handshake (TLS 1.2) or on the first read (TLS 1.3).
func TestTLSAlertAboutTheClientCertificateIsARefusal(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		pki, other := testbroker.NewPKI(t), testbroker.NewPKI(t)
		cfg := serverTLS(t, pki, other)
		cfg.MaxVersion = v
		addr := tlsServer(t, cfg, func(*tls.Conn) {})
		kp := pki.Issue(t, t.TempDir(), "dev-a", false)
		err := Probe(waitCtx(t), probeOptions(t, addr, pki.CAPEM, kp, "dev-a"))
		require.Error(t, err)
		assert.Equal(t, ReasonTLSAlert, reasonOf(err), "TLS %x: %v", v, err)
	}
}

// A server whose certificate the client does not trust is not a refusal
// of the client's credentials, nor is a server that hangs.
func TestUntrustedServerAndSilentServerAreNotRefusals(t *testing.T) {
	pki, other := testbroker.NewPKI(t), testbroker.NewPKI(t)
	addr := tlsServer(t, serverTLS(t, other, pki), func(*tls.Conn) {})
	kp := pki.Issue(t, t.TempDir(), "dev-a", false)
	err := Probe(waitCtx(t), probeOptions(t, addr, pki.CAPEM, kp, "dev-a"))
	require.Error(t, err)
	assert.False(t, IsRefused(err), "%v", err)

	silent := tlsServer(t, serverTLS(t, pki, pki), func(c *tls.Conn) {
		buf := make([]byte, 256)
		_, _ = c.Read(buf)
		time.Sleep(2 * time.Second) // no CONNACK until the client's timeout
	})
	o := probeOptions(t, silent, pki.CAPEM, kp, "dev-a")
	o.ConnectTimeout = 300 * time.Millisecond
	err = Probe(waitCtx(t), o)
	require.Error(t, err)
	assert.False(t, IsRefused(err), "%v", err)
}

func TestRunReportsEveryAttempt(t *testing.T) {
	b := testbroker.Start(t, testbroker.Options{})
	kp := b.RegisterDevice(t, "dev-a")
	b.SetCert(kp.CertificateID, "INACTIVE", "dev-a")
	ca, err := os.ReadFile(b.CAFile)
	require.NoError(t, err)
	refused := make(chan error, 100)
	o := probeOptions(t, b.Addr, ca, kp, "dev-a")
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
	b.SetCert(kp.CertificateID, "ACTIVE", "dev-a")
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
