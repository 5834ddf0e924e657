package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// MosquittoBinEnv names the environment variable that overrides the path of
// the mosquitto binary (default /usr/sbin/mosquitto).
const MosquittoBinEnv = "MOSQUITTO_BIN"

// MosquittoAdmin is the certificate common name the default ACL gives full
// access to (a test's "cloud side" observer).
const MosquittoAdmin = "fleet-admin"

// DefaultMosquittoACL mirrors the device policy: with
// use_identity_as_username the certificate's common name is the user, and
// each thing may only use its own dt/, cmd/ and Jobs topics.
var DefaultMosquittoACL = []string{
	"user " + MosquittoAdmin,
	"topic readwrite #",
	"topic readwrite $aws/#",
	"",
	"pattern readwrite dt/fleet/%u/#",
	"pattern read cmd/fleet/%u/#",
	"pattern readwrite $aws/things/%u/jobs/#",
}

// MosquittoOptions configure StartMosquitto.
type MosquittoOptions struct {
	// CAFile, CertFile and KeyFile are the server's TLS files. When all are
	// empty a test CA and a server certificate for 127.0.0.1 are generated;
	// Mosquitto.IssueClient then issues client certificates.
	CAFile, CertFile, KeyFile string
	// ACL lines of the acl_file (default DefaultMosquittoACL).
	ACL []string
	// Persistence keeps sessions and queued messages across Restart.
	Persistence bool
}

// Mosquitto is a running mosquitto broker with a mutual-TLS listener.
type Mosquitto struct {
	// Addr is 127.0.0.1:port (stable across Restart).
	Addr string
	Port int
	// CAFile verifies the server and the clients.
	CAFile string

	bin, dir, conf string
	caCert         *x509.Certificate
	caKey          *ecdsa.PrivateKey

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    *LogBuffer
	serial int64
}

// MosquittoBin returns the mosquitto binary, or an error if it is missing.
func MosquittoBin() (string, error) {
	bin := os.Getenv(MosquittoBinEnv)
	if bin == "" {
		bin = "/usr/sbin/mosquitto"
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("mosquitto not found at %s (apt-get install -y mosquitto, or set %s): %w", bin, MosquittoBinEnv, err)
	}
	return bin, nil
}

// StartMosquitto writes a mosquitto.conf (listener on a free 127.0.0.1
// port, require_certificate, use_identity_as_username, acl_file), starts
// mosquitto and waits until it accepts connections. The broker is killed
// when the test ends. Without the binary the test is skipped, or fails if
// $CI is set.
func StartMosquitto(t testing.TB, opts MosquittoOptions) *Mosquitto {
	t.Helper()
	bin, err := MosquittoBin()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	m := &Mosquitto{bin: bin, dir: dir, log: &LogBuffer{}, serial: 1}
	if opts.CAFile == "" && opts.CertFile == "" && opts.KeyFile == "" {
		if err := m.generatePKI(); err != nil {
			t.Fatal(err)
		}
		opts.CAFile = filepath.Join(dir, "ca.pem")
		opts.CertFile, opts.KeyFile, err = m.issue(dir, "server", true)
		if err != nil {
			t.Fatal(err)
		}
	} else if opts.CAFile == "" || opts.CertFile == "" || opts.KeyFile == "" {
		t.Fatal("StartMosquitto: CAFile, CertFile and KeyFile must be given together")
	}
	m.CAFile = opts.CAFile
	acl := opts.ACL
	if acl == nil {
		acl = DefaultMosquittoACL
	}
	aclFile := filepath.Join(dir, "acl")
	if err := os.WriteFile(aclFile, []byte(strings.Join(acl, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	port, err := mosqFreePort()
	if err != nil {
		t.Fatal(err)
	}
	m.Port = port
	m.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conf := []string{
		"per_listener_settings false",
		"allow_anonymous false",
		"log_dest stderr",
		"log_type error",
		"log_type warning",
		"log_type notice",
		"log_type information",
		"log_type subscribe",
		"connection_messages true",
		"acl_file " + aclFile,
		"persistence " + strconv.FormatBool(opts.Persistence),
		"persistence_location " + dir + "/",
		"listener " + strconv.Itoa(port) + " 127.0.0.1",
		"cafile " + opts.CAFile,
		"certfile " + opts.CertFile,
		"keyfile " + opts.KeyFile,
		"require_certificate true",
		"use_identity_as_username true",
		"tls_version tlsv1.2",
	}
	if os.Geteuid() == 0 {
		// Running as root, mosquitto would switch to the mosquitto user and
		// could no longer read the test's files.
		conf = append([]string{"user root"}, conf...)
	}
	m.conf = filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.kill)
	return m
}

// Log is mosquitto's output so far.
func (m *Mosquitto) Log() string { return m.log.String() }

// Stop terminates the broker gracefully (SIGTERM: with Persistence it
// saves its sessions), killing it if it does not exit within 5 seconds.
// Idempotent.
func (m *Mosquitto) Stop(t testing.TB) {
	t.Helper()
	m.stop(syscall.SIGTERM)
}

// Kill stops the broker with SIGKILL, like a crash (nothing is saved).
func (m *Mosquitto) Kill(t testing.TB) {
	t.Helper()
	m.stop(syscall.SIGKILL)
}

// Start starts a stopped broker again on the same port.
func (m *Mosquitto) Start(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	running := m.cmd != nil
	m.mu.Unlock()
	if running {
		t.Fatal("mosquitto already running")
	}
	if err := m.start(); err != nil {
		t.Fatal(err)
	}
}

// Restart stops the broker gracefully and starts it again on the same port.
func (m *Mosquitto) Restart(t testing.TB) {
	t.Helper()
	m.Stop(t)
	m.Start(t)
}

func (m *Mosquitto) start() error {
	var lastErr error
	// After a restart the port may still be held briefly by the old
	// process' socket; retry a few times.
	for try := 0; try < 5; try++ {
		cmd := exec.Command(m.bin, "-c", m.conf)
		cmd.Stdout, cmd.Stderr = m.log, m.log
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start mosquitto: %w", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if err := waitPort(m.Addr, exited, 10*time.Second); err != nil {
			_ = cmd.Process.Kill()
			<-exited
			lastErr = err
			time.Sleep(200 * time.Millisecond)
			continue
		}
		m.mu.Lock()
		m.cmd, m.exited = cmd, exited
		m.mu.Unlock()
		return nil
	}
	return fmt.Errorf("mosquitto did not start: %w\n%s", lastErr, m.log.String())
}

func (m *Mosquitto) kill() { m.stop(syscall.SIGKILL) }

func (m *Mosquitto) stop(sig syscall.Signal) {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func waitPort(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("mosquitto exited")
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("port %s not open after %v", addr, timeout)
}

func mosqFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (m *Mosquitto) generatePKI() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "iot-fleet mosquitto test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return err
	}
	m.caCert, err = x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	m.caKey = key
	return os.WriteFile(filepath.Join(m.dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func (m *Mosquitto) issue(dir, cn string, server bool) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	m.mu.Lock()
	m.serial++
	serial := m.serial
	m.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.caCert, key.Public(), m.caKey)
	if err != nil {
		return "", "", err
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// IssueClient issues a client certificate with common name cn (the MQTT
// user under use_identity_as_username) into a temporary directory. Only
// available when StartMosquitto generated the PKI.
func (m *Mosquitto) IssueClient(t testing.TB, cn string) (certFile, keyFile string) {
	t.Helper()
	if m.caKey == nil {
		t.Fatal("IssueClient: the broker uses caller-provided TLS files")
	}
	certFile, keyFile, err := m.issue(t.TempDir(), cn, false)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
