// Package testbroker runs an embedded MQTT broker (mochi-mqtt) for the
// agent's tests: mutual TLS with a test CA, AWS IoT-like authorization
// (the claim certificate may only use the fleet provisioning API with a
// provision-* client id; a device certificate may only connect as its thing
// and use its own topics) and an in-process responder that implements the
// fleet provisioning MQTT API (CreateCertificateFromCsr, RegisterThing with
// a pre-provisioning hook) with injectable rejections.
package testbroker

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// PKI is a throw-away certificate authority.
type PKI struct {
	mu     sync.Mutex
	ca     *x509.Certificate
	caKey  crypto.Signer
	CAPEM  []byte
	serial int64
}

// NewPKI creates a CA.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "iot-fleet test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &PKI{ca: ca, caKey: key, CAPEM: pemCert(der), serial: 1}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// Pool is a cert pool holding the CA.
func (p *PKI) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	return pool
}

func (p *PKI) sign(pub crypto.PublicKey, cn string, server bool) ([]byte, error) {
	p.mu.Lock()
	p.serial++
	serial := p.serial
	p.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, pub, p.caKey)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	return der, nil
}

// SignCSR issues a client certificate for a CSR (after checking its
// signature) and returns it with its AWS-style certificate id.
func (p *PKI) SignCSR(csrPEM []byte) (certPEM []byte, certID string, err error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, "", fmt.Errorf("no CERTIFICATE REQUEST PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, "", err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", err
	}
	der, err := p.sign(csr.PublicKey, csr.Subject.CommonName, false)
	if err != nil {
		return nil, "", err
	}
	return pemCert(der), CertID(der), nil
}

// CertID is the AWS IoT certificate id of a DER certificate (hex SHA-256).
func CertID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// KeyPair is a certificate and its key, as PEM and as files.
type KeyPair struct {
	CertPEM, KeyPEM   []byte
	CertFile, KeyFile string
	CertificateID     string
}

// Issue makes a key and a certificate with common name cn and writes them
// (key 0600) into dir.
func (p *PKI) Issue(t testing.TB, dir, cn string, server bool) KeyPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := p.sign(key.Public(), cn, server)
	require.NoError(t, err)
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	kp := KeyPair{
		CertPEM:       pemCert(der),
		KeyPEM:        pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}),
		CertFile:      filepath.Join(dir, cn+".crt"),
		KeyFile:       filepath.Join(dir, cn+".key"),
		CertificateID: CertID(der),
	}
	require.NoError(t, os.WriteFile(kp.CertFile, kp.CertPEM, 0o644))
	require.NoError(t, os.WriteFile(kp.KeyFile, kp.KeyPEM, 0o600))
	return kp
}
