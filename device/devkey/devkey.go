// Package devkey makes and loads the device's private keys and certificate
// signing requests. Keys are generated on the device and written 0600,
// atomically; nothing in this package logs key material.
package devkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
)

// Algorithm names a key type the agent can generate.
type Algorithm string

// Supported algorithms.
const (
	ECDSAP256 Algorithm = "ecdsa-p256"
	RSA2048   Algorithm = "rsa-2048"
)

// Valid reports whether a is a supported algorithm.
func (a Algorithm) Valid() bool { return a == ECDSAP256 || a == RSA2048 }

// Generate makes a new private key of algorithm a.
func Generate(a Algorithm) (crypto.Signer, error) {
	switch a {
	case ECDSAP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate ecdsa p-256 key: %w", err)
		}
		return k, nil
	case RSA2048:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("generate rsa 2048 key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("generate key: unsupported algorithm %q", a)
}

// MarshalPEM encodes key as a PKCS#8 "PRIVATE KEY" PEM block.
func MarshalPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePEM decodes a private key from PEM (PKCS#8, SEC1 EC or PKCS#1 RSA).
func ParsePEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("parse private key: no PEM block")
	}
	switch block.Type {
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse EC private key: %w", err)
		}
		return k, nil
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse RSA private key: %w", err)
		}
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse PKCS#8 private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("parse private key: %T is not a signing key", k)
	}
	return s, nil
}

// Write stores key at path with mode 0600, atomically (temp file, fsync,
// rename, fsync of the directory).
func Write(path string, key crypto.Signer) error {
	data, err := MarshalPEM(key)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write private key: %w", err)
	}
	return nil
}

// Load reads the private key at path. It refuses a key file that group or
// others can read.
func Load(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load private key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load private key %s: mode %v is readable by group or others, want 0600", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load private key: %w", err)
	}
	k, err := ParsePEM(data)
	if err != nil {
		return nil, fmt.Errorf("load private key %s: %w", path, err)
	}
	return k, nil
}

// CSR returns a PEM certificate signing request for key with the given
// common name.
func CSR(key crypto.Signer, commonName string) ([]byte, error) {
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: commonName}}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ParseCertificatePEM decodes the first certificate of a PEM bundle.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("parse certificate: no CERTIFICATE PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return c, nil
}

// Matches reports whether cert certifies the public half of key.
func Matches(cert *x509.Certificate, key crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	return ok && pub.Equal(cert.PublicKey)
}
