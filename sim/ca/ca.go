// Package ca is the local certificate authority of the simulated IoT Core:
// a root CA, the broker's server certificate, device certificates signed
// from CSRs (CreateCertificateFromCsr) and key+certificate pairs minted on
// the server side (CreateKeysAndCertificate, the claim certificate).
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// DeviceCommonName is the subject common name AWS IoT gives the
// certificates it issues.
const DeviceCommonName = "AWS IoT Certificate"

// Options tune the CA. The zero value is usable.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// DeviceCertValidity is how long issued device certificates are valid.
	// Zero means until 2049-12-31T23:59:59Z, like certificates issued by
	// AWS IoT.
	DeviceCertValidity time.Duration
}

// CA is a local certificate authority. It is safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	pool    *x509.CertPool
	opts    Options
}

// Issued is a certificate the CA signed.
type Issued struct {
	// ID is the AWS IoT certificate id: hex SHA-256 of the DER.
	ID   string
	DER  []byte
	PEM  string
	Cert *x509.Certificate
}

// CertificateID returns the AWS IoT certificate id of a DER certificate:
// the lower-case hex SHA-256 fingerprint.
func CertificateID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// New creates a CA with a fresh ECDSA P-256 root key.
func New(opts Options) (*CA, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate root key: %w", err)
	}
	now := opts.Now()
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "iot-fleet local IoT Core root CA", Organization: []string{"iot-fleet simulator"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: create root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse root certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pool:    pool,
		opts:    opts,
	}, nil
}

// CertPEM returns the root CA certificate in PEM form.
func (c *CA) CertPEM() []byte { return append([]byte(nil), c.certPEM...) }

// Certificate returns the root CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// Pool returns a pool holding only the root CA certificate.
func (c *CA) Pool() *x509.CertPool { return c.pool.Clone() }

// ServerCertificate issues a TLS server certificate for hosts (IP
// addresses or DNS names) signed by the root.
func (c *CA) ServerCertificate(hosts ...string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: generate server key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := c.opts.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "iot-fleet local IoT Core"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: create server certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: parse server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// ErrInvalidCSR is wrapped by SignCSR errors caused by the request itself.
var ErrInvalidCSR = errors.New("invalid certificate signing request")

// SignCSR verifies a PEM certificate signing request and issues a client
// certificate for its public key. Like AWS IoT it accepts RSA keys of at
// least 2048 bits and ECDSA P-256/P-384/P-521 keys, and ignores the
// requested subject.
func (c *CA) SignCSR(csrPEM []byte) (*Issued, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block found", ErrInvalidCSR)
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: PEM block type %q, want CERTIFICATE REQUEST", ErrInvalidCSR, block.Type)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: parse: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrInvalidCSR, err)
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	return c.issueClient(csr.PublicKey)
}

// NewKeyAndCertificate generates an ECDSA P-256 key on the server side
// and issues a client certificate for it (CreateKeysAndCertificate, and
// the shared claim certificate). It returns the PKCS#8 private key PEM.
func (c *CA) NewKeyAndCertificate() (*Issued, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: generate key: %w", err)
	}
	iss, err := c.issueClient(key.Public())
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: marshal key: %w", err)
	}
	return iss, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func (c *CA) issueClient(pub crypto.PublicKey) (*Issued, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := c.opts.Now()
	notAfter := time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC)
	if c.opts.DeviceCertValidity > 0 {
		notAfter = now.Add(c.opts.DeviceCertValidity)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: DeviceCommonName},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("ca: create client certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse client certificate: %w", err)
	}
	return &Issued{
		ID:   CertificateID(der),
		DER:  der,
		PEM:  string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		Cert: cert,
	}, nil
}

func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits, want at least 2048", k.N.BitLen())
		}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return fmt.Errorf("ECDSA curve %s not supported", k.Curve.Params().Name)
		}
	default:
		return fmt.Errorf("public key type %T not supported (want RSA or ECDSA)", pub)
	}
	return nil
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("ca: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
