// Package certrotatetest holds what the rotation tests share: KeyHash, the
// registry's hash of a certificate's public key. AWS IoT itself is the
// local IoT Core's control plane (sim/iottest, sim/stack), reached with the
// real SDK client.
package certrotatetest

import (
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/lambdas/preprovision"
)

// KeyHash is the registry's public key hash of the certificate certPEM, as
// the pre-provisioning hook computes it; a certPEM that is not a
// certificate fails the test.
func KeyHash(t testing.TB, certPEM string) string {
	t.Helper()
	block, _ := pem.Decode([]byte(certPEM))
	require.NotNil(t, block, "no PEM block in %q", certPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return preprovision.PublicKeySHA256(leaf)
}
