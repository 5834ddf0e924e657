package devkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGenerateWriteLoadCSR(t *testing.T) {
	for _, alg := range []Algorithm{ECDSAP256, RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			require.True(t, alg.Valid())
			k, err := Generate(alg)
			require.NoError(t, err)
			switch alg {
			case ECDSAP256:
				assert.IsType(t, &ecdsa.PrivateKey{}, k)
			case RSA2048:
				require.IsType(t, &rsa.PrivateKey{}, k)
				assert.Equal(t, 2048, k.(*rsa.PrivateKey).N.BitLen())
			}
			path := filepath.Join(t.TempDir(), "device.key")
			require.NoError(t, Write(path, k))
			fi, err := os.Stat(path)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
			loaded, err := Load(path)
			require.NoError(t, err)
			assert.True(t, loaded.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()))

			csrPEM, err := CSR(loaded, "10000000abcdef01")
			require.NoError(t, err)
			block, _ := pem.Decode(csrPEM)
			require.NotNil(t, block)
			csr, err := x509.ParseCertificateRequest(block.Bytes)
			require.NoError(t, err)
			require.NoError(t, csr.CheckSignature())
			assert.Equal(t, "10000000abcdef01", csr.Subject.CommonName)
		})
	}
}

func TestLoadRefusesWorldReadableKeyAndGarbage(t *testing.T) {
	dir := t.TempDir()
	k, err := Generate(ECDSAP256)
	require.NoError(t, err)
	path := filepath.Join(dir, "k.pem")
	require.NoError(t, Write(path, k))
	require.NoError(t, os.Chmod(path, 0o644))
	_, err = Load(path)
	require.ErrorContains(t, err, "readable by group or others")

	bad := filepath.Join(dir, "bad.pem")
	require.NoError(t, os.WriteFile(bad, []byte("not a key"), 0o600))
	_, err = Load(bad)
	require.ErrorContains(t, err, "no PEM block")

	_, err = Generate("dsa-512")
	require.ErrorContains(t, err, "unsupported algorithm")
	assert.False(t, Algorithm("dsa-512").Valid())
}

func TestParsePEMLegacyFormats(t *testing.T) {
	k, err := Generate(ECDSAP256)
	require.NoError(t, err)
	der, err := x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
	require.NoError(t, err)
	got, err := ParsePEM(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	require.NoError(t, err)
	assert.True(t, got.(*ecdsa.PrivateKey).Equal(k))
	_, err = ParseCertificatePEM([]byte("x"))
	require.Error(t, err)
}
