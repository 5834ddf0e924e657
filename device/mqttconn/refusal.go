package mqttconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"syscall"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// RefusedError reports a connection attempt the broker refused because of
// the client's credentials (certificate revoked, inactive, unknown, or not
// allowed to connect with this client id), as opposed to a network failure
// or an unavailable broker. Brokers refuse in three ways and all three are
// recognised:
//
//   - a CONNACK "not authorized" (5) or "bad user name or password" (4):
//     mosquitto, a plain mochi (the project's test broker);
//   - a TLS alert naming the client certificate (bad_certificate,
//     certificate_revoked, certificate_unknown, unknown_ca, access_denied,
//     ...), during the handshake (TLS 1.2) or on the first read after it
//     (TLS 1.3, where the server checks the client certificate after the
//     client finished);
//   - the connection closed right after CONNECT, without a CONNACK, on a
//     completed TLS handshake: what AWS IoT Core does for a revoked,
//     inactive or unregistered certificate or a policy that denies
//     iot:Connect, and so does the local IoT Core in sim/.
//
// One refusal proves little (a broker shutting down also closes
// connections after CONNECT); callers count consecutive refusals and
// confirm with another identity before acting on them.
type RefusedError struct {
	// Reason says which of the three refusals was seen.
	Reason string
	Err    error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("credentials refused (%s): %v", e.Reason, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// IsRefused reports whether err is (or wraps) a RefusedError.
func IsRefused(err error) bool {
	var re *RefusedError
	return errors.As(err, &re)
}

// Refusal reasons.
const (
	ReasonConnack       = "CONNACK refused the credentials"
	ReasonTLSAlert      = "TLS alert about the client certificate"
	ReasonClosedConnect = "connection closed after CONNECT without a CONNACK"
)

// certAlerts are the TLS alerts (crypto/tls spelling) a server sends about
// the client's certificate.
var certAlerts = map[string]bool{
	"tls: bad certificate":               true,
	"tls: unsupported certificate":       true,
	"tls: revoked certificate":           true,
	"tls: expired certificate":           true,
	"tls: unknown certificate":           true,
	"tls: unknown certificate authority": true,
	"tls: access denied":                 true,
	"tls: certificate required":          true,
}

// certAlert reports whether err is a TLS alert the server sent about the
// client certificate.
func certAlert(err error) bool {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "remote error" || oe.Err == nil {
		return false
	}
	return certAlerts[oe.Err.Error()]
}

// attempt records what happened on the wire during one connection attempt.
type attempt struct {
	mu        sync.Mutex
	handshake bool  // TLS handshake completed
	hsErr     error // TLS handshake error
	wrote     bool  // bytes written after the handshake (the CONNECT)
	read      bool  // bytes read after the handshake (the CONNACK)
	readErr   error // first read error before any byte was read
	conn      net.Conn
	aborted   bool
}

// abort closes the attempt's connection (and any it opens later), so that
// paho's CONNECT/CONNACK exchange, which does not watch a context, ends at
// once when the caller gives up.
func (at *attempt) abort() {
	at.mu.Lock()
	defer at.mu.Unlock()
	at.aborted = true
	if at.conn != nil {
		_ = at.conn.Close()
	}
}

type watchConn struct {
	net.Conn
	at *attempt
}

func (w *watchConn) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	w.at.mu.Lock()
	if n > 0 {
		w.at.read = true
	} else if err != nil && !w.at.read && w.at.readErr == nil {
		w.at.readErr = err
	}
	w.at.mu.Unlock()
	return n, err
}

func (w *watchConn) Write(p []byte) (int, error) {
	n, err := w.Conn.Write(p)
	if n > 0 {
		w.at.mu.Lock()
		w.at.wrote = true
		w.at.mu.Unlock()
	}
	return n, err
}

// openFunc dials TCP and completes the TLS handshake itself (instead of
// paho) so that the attempt can tell a refusal from a network failure.
func (c *Client) openFunc(ctx context.Context, cfg *tls.Config, at *attempt) mqtt.OpenConnectionFunc {
	return func(uri *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
		d := net.Dialer{Timeout: c.opts.ConnectTimeout}
		dctx, cancel := context.WithTimeout(ctx, c.opts.ConnectTimeout)
		defer cancel()
		raw, err := d.DialContext(dctx, "tcp", uri.Host)
		if err != nil {
			return nil, err
		}
		cfg := cfg.Clone()
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(uri.Host)
			cfg.ServerName = host
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			_ = raw.Close()
			at.mu.Lock()
			at.hsErr = err
			at.mu.Unlock()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		at.mu.Lock()
		defer at.mu.Unlock()
		if at.aborted {
			_ = tc.Close()
			return nil, context.Canceled
		}
		at.handshake = true
		at.conn = tc
		return &watchConn{Conn: tc, at: at}, nil
	}
}

// classify wraps err in a RefusedError when the attempt shows the broker
// refused the credentials.
func classify(err error, at *attempt) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) {
		return &RefusedError{Reason: ReasonConnack, Err: err}
	}
	at.mu.Lock()
	defer at.mu.Unlock()
	if certAlert(at.hsErr) {
		return &RefusedError{Reason: ReasonTLSAlert, Err: err}
	}
	if at.handshake && at.wrote && !at.read && at.readErr != nil {
		switch {
		case certAlert(at.readErr):
			return &RefusedError{Reason: ReasonTLSAlert, Err: err}
		case errors.Is(at.readErr, io.EOF) || errors.Is(at.readErr, syscall.ECONNRESET):
			return &RefusedError{Reason: ReasonClosedConnect, Err: err}
		}
	}
	return err
}

// Probe makes one connection attempt with o (no retry, no subscription,
// received messages are not acknowledged so a persistent session keeps
// them) and disconnects cleanly. It returns nil if the broker accepted the
// credentials, a *RefusedError if it refused them, another error for a
// network failure or an unavailable broker.
func Probe(ctx context.Context, o Options) error {
	c, err := New(o)
	if err != nil {
		return err
	}
	c.probe = true
	sess, err := c.connectOnce(ctx)
	if err != nil {
		return err
	}
	sess.cancel()
	sess.pc.Disconnect(250)
	return nil
}
