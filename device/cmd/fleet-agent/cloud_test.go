package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// localCloud is the local IoT Core with the stack's real Lambdas
// (sim/stack), the cloud the agent binary talks to over MQTT with mutual
// TLS: serials are on its allowlist, and dir holds its root CA and a claim
// certificate for the agents' configuration.
type localCloud struct {
	*stack.Stack
	dir string
}

func startLocalCloud(t *testing.T, serials ...string) *localCloud {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	_, err = st.DeployAllowlist(ctx, []byte(strings.Join(serials, "\n")+"\n"))
	require.NoError(t, err)
	claim, err := st.Core.IssueClaimCertificate()
	require.NoError(t, err)
	c := &localCloud{Stack: st, dir: t.TempDir()}
	for name, data := range map[string][]byte{"root-ca.pem": st.Core.RootCAPEM(), "claim.pem": claim.CertPEM, "claim.key": claim.KeyPEM} {
		require.NoError(t, os.WriteFile(filepath.Join(c.dir, name), data, 0o600))
	}
	return c
}

// agentConfig writes a configuration for serial against c (the serial
// read from a cpuinfo file).
func (c *localCloud) agentConfig(t *testing.T, serial string) (cfgFile, stateDir string) {
	t.Helper()
	dir := t.TempDir()
	serialFile := filepath.Join(dir, "cpuinfo")
	require.NoError(t, os.WriteFile(serialFile, []byte("Hardware\t: BCM2835\nSerial\t\t: "+serial+"\n"), 0o444))
	host, port, err := net.SplitHostPort(c.Core.Endpoint())
	require.NoError(t, err)
	stateDir = filepath.Join(dir, "state")
	cfg := `{"endpoint":"` + host + `","port":` + port + `,"rootCAFile":"` + filepath.Join(c.dir, "root-ca.pem") + `",
		"stateDir":"` + stateDir + `","logLevel":"debug",
		"provisioning":{"claimCertFile":"` + filepath.Join(c.dir, "claim.pem") + `","claimKeyFile":"` + filepath.Join(c.dir, "claim.key") + `",
			"templateName":"` + c.Core.Names().TemplateName + `","serialFiles":["` + serialFile + `"],"retryMin":"10ms","retryMax":"100ms","deniedBackoff":"1s"},
		"mqtt":{"reconnectMin":"10ms","reconnectMax":"200ms"}}`
	cfgFile = filepath.Join(dir, "config.json")
	require.NoError(t, os.WriteFile(cfgFile, []byte(cfg), 0o600))
	return cfgFile, stateDir
}
