package store

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/devkey"
)

func selfSigned(t *testing.T, s *Store, name string) (certFile, keyFile string) {
	t.Helper()
	k, err := devkey.Generate(devkey.ECDSAP256)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	require.NoError(t, err)
	keyFile, certFile = filepath.Join(CertsDir, name+".key"), filepath.Join(CertsDir, name+".crt")
	require.NoError(t, devkey.Write(s.Path(keyFile), k))
	require.NoError(t, s.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	return certFile, keyFile
}

func TestIdentityRoundTrip(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state"))
	require.NoError(t, err)
	fi, err := os.Stat(s.Dir())
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	_, found, err := s.Identity()
	require.NoError(t, err)
	assert.False(t, found)

	certFile, keyFile := selfSigned(t, s, "a")
	id := Identity{ThingName: "dev-1", Serial: "1", CertFile: certFile, KeyFile: keyFile, ProvisionedAt: time.Now().UTC().Truncate(time.Second)}
	require.NoError(t, s.SaveIdentity(id))
	got, found, err := s.Identity()
	require.NoError(t, err)
	require.True(t, found)
	assert.Equal(t, id, got)
	fi, err = os.Stat(s.Path(IdentityFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	tc, err := s.TLSCertificate(got)
	require.NoError(t, err)
	assert.Equal(t, "a", tc.Leaf.Subject.CommonName)
}

func TestSaveIdentityRefusesMismatchedPair(t *testing.T) {
	s, err := Open(t.TempDir())
	require.NoError(t, err)
	certA, _ := selfSigned(t, s, "a")
	_, keyB := selfSigned(t, s, "b")
	err = s.SaveIdentity(Identity{ThingName: "x", CertFile: certA, KeyFile: keyB})
	require.ErrorContains(t, err, "does not match")
	_, found, err := s.Identity()
	require.NoError(t, err)
	assert.False(t, found, "a refused identity must not be recorded")
	require.Error(t, s.SaveIdentity(Identity{CertFile: certA, KeyFile: keyB}))
}

func TestJSONHelpers(t *testing.T) {
	s, err := Open(t.TempDir())
	require.NoError(t, err)
	type st struct{ N int }
	var v st
	found, err := s.ReadJSON("x.json", &v)
	require.NoError(t, err)
	assert.False(t, found)
	require.NoError(t, s.WriteJSON("x.json", st{N: 3}))
	found, err = s.ReadJSON("x.json", &v)
	require.NoError(t, err)
	assert.True(t, found)
	assert.Equal(t, 3, v.N)
	require.NoError(t, os.WriteFile(s.Path("bad.json"), []byte("{"), 0o600))
	_, err = s.ReadJSON("bad.json", &v)
	require.ErrorContains(t, err, "decode bad.json")
	require.NoError(t, s.Remove("x.json"))
	require.NoError(t, s.Remove("x.json"))
	_, err = s.ReadJSON("../etc/passwd", &v)
	require.ErrorContains(t, err, "invalid name")
	require.NoError(t, os.WriteFile(s.Path(IdentityFile), []byte(`{"thingName":"x"}`), 0o600))
	_, _, err = s.Identity()
	require.ErrorContains(t, err, "required")
	_, err = Open("")
	require.Error(t, err)
}
