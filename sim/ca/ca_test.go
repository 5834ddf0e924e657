package ca

import (
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
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func csrPEM(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestSignCSRIssuesClientCertificateWithAWSStyleID(t *testing.T) {
	c, err := New(Options{})
	require.NoError(t, err)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	for name, key := range map[string]any{"ecdsa": ecKey, "rsa2048": rsaKey} {
		t.Run(name, func(t *testing.T) {
			iss, err := c.SignCSR(csrPEM(t, key))
			require.NoError(t, err)
			sum := sha256.Sum256(iss.DER)
			assert.Equal(t, hex.EncodeToString(sum[:]), iss.ID)
			assert.Len(t, iss.ID, 64)
			assert.Equal(t, DeviceCommonName, iss.Cert.Subject.CommonName)
			assert.Equal(t, time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC), iss.Cert.NotAfter.UTC())
			_, err = iss.Cert.Verify(x509.VerifyOptions{Roots: c.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			require.NoError(t, err)
			block, _ := pem.Decode([]byte(iss.PEM))
			require.NotNil(t, block)
			assert.Equal(t, iss.DER, block.Bytes)
		})
	}
}

func TestSignCSRRejectsBadRequests(t *testing.T) {
	c, err := New(Options{})
	require.NoError(t, err)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	good, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tampered := func() []byte {
		p := csrPEM(t, good)
		block, _ := pem.Decode(p)
		block.Bytes[len(block.Bytes)-5] ^= 0xff
		return pem.EncodeToMemory(block)
	}()
	cases := map[string]struct {
		in   []byte
		want string
	}{
		"not pem":       {[]byte("hello"), "no PEM block"},
		"wrong type":    {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), "PEM block type"},
		"garbage der":   {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}}), "parse"},
		"weak rsa":      {csrPEM(t, weak), "1024 bits"},
		"bad signature": {tampered, ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := c.SignCSR(tc.in)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidCSR)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestNewKeyAndCertificateAndServerCertificate(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c, err := New(Options{Now: func() time.Time { return now }, DeviceCertValidity: 48 * time.Hour})
	require.NoError(t, err)
	iss, keyPEM, err := c.NewKeyAndCertificate()
	require.NoError(t, err)
	_, err = tls.X509KeyPair([]byte(iss.PEM), keyPEM)
	require.NoError(t, err, "key must match certificate")
	assert.Equal(t, now.Add(48*time.Hour), iss.Cert.NotAfter.UTC())

	srv, err := c.ServerCertificate("127.0.0.1", "localhost")
	require.NoError(t, err)
	_, err = srv.Leaf.Verify(x509.VerifyOptions{Roots: c.Pool(), DNSName: "127.0.0.1", CurrentTime: now})
	require.NoError(t, err)
	_, err = srv.Leaf.Verify(x509.VerifyOptions{Roots: c.Pool(), DNSName: "localhost", CurrentTime: now})
	require.NoError(t, err)
	_, err = srv.Leaf.Verify(x509.VerifyOptions{Roots: c.Pool(), DNSName: "example.com", CurrentTime: now})
	require.Error(t, err)

	block, _ := pem.Decode(c.CertPEM())
	require.NotNil(t, block)
	assert.Equal(t, c.Certificate().Raw, block.Bytes)
}
