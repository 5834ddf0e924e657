package devicetest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

// Files a device configuration names, as WriteClaimFiles writes them.
const (
	RootCAFile    = "root-ca.pem"
	ClaimCertFile = "claim.pem"
	ClaimKeyFile  = "claim.key"
)

// WriteClaimFiles issues a claim certificate from the local IoT Core c and
// writes, in dir, what a device needs to provision by claim against it:
// the root CA (RootCAFile), the claim certificate and its key
// (ClaimCertFile, ClaimKeyFile), each 0600.
func WriteClaimFiles(t testing.TB, c *core.Core, dir string) core.Credentials {
	t.Helper()
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	for name, data := range map[string][]byte{RootCAFile: c.RootCAPEM(), ClaimCertFile: claim.CertPEM, ClaimKeyFile: claim.KeyPEM} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o600))
	}
	return claim
}

// DenyUnless makes the local IoT Core deny provisioning to every serial
// allow refuses, asked before c's own pre-provisioning hook (the stack's
// real one), which decides for the others.
func DenyUnless(c *core.Core, allow func(serial string) bool) {
	real := c.Provisioning().Hook()
	c.SetPreProvisioningHook(func(ctx context.Context, req protocol.PreProvisioningHookRequest) (protocol.PreProvisioningHookResponse, error) {
		if !allow(req.Parameters[protocol.ParamSerialNumber]) {
			return protocol.PreProvisioningHookResponse{AllowProvisioning: false}, nil
		}
		return real(ctx, req)
	})
}
