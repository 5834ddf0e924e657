package preprovision

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
)

// The hook records the expiry of the certificate it admits, so the rotation
// scan finds the device through the registry's expiry index.
func TestRecordsCertificateExpiry(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		notAfter := time.Date(2027, 3, 4, 5, 6, 7, 0, time.UTC)
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "device"},
			NotBefore: notAfter.AddDate(-1, 0, 0), NotAfter: notAfter,
		}, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}}, &key.PublicKey, key)
		require.NoError(t, err)

		req := request(allowedSerial, certID(5))
		req.CertificatePEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		require.True(t, f.handle(t, req))
		require.Equal(t, "2027-03-04T05:06:07Z", f.lastLog(t)["certNotAfter"])

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d, err := f.store.Get(ctx, allowedSerial)
		require.NoError(t, err)
		require.True(t, notAfter.Equal(d.CertNotAfter), "certNotAfter %v", d.CertNotAfter)
		page, err := f.store.ExpiringBefore(ctx, notAfter.Add(time.Second), "", 0)
		require.NoError(t, err)
		require.Len(t, page.Devices, 1)
		require.Equal(t, allowedSerial, page.Devices[0].Serial)

		// An unparsable PEM still admits a new device, with the expiry
		// (and key) unknown.
		const other = "10000000a1b2c3e0"
		require.NoError(t, f.store.PutAllowed(ctx, other))
		req = request(other, certID(6))
		require.True(t, f.handle(t, req))
		require.Contains(t, f.lastLog(t)["certNotAfter"], "unknown")
		d, err = f.store.Get(ctx, other)
		require.NoError(t, err)
		require.True(t, d.CertNotAfter.IsZero())
	})
}
