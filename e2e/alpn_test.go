package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// An agent configured as for AWS IoT Core's port 443 (ALPN x-amzn-mqtt-ca,
// the AWS SDKs' and the Device Client's default) provisions by claim,
// connects and runs a job over the local IoT Core's ALPN listener; the
// same configuration without ALPN gets no MQTT there.
func TestAgentOverALPNListener(t *testing.T) {
	cloud := harness.NewCloudLog()
	ctx := waitCtx(t, 90*time.Second)
	f, err := harness.Start(ctx, harness.Options{
		Dir: t.TempDir(), AgentBin: agentBin, Allowlist: allowlistOf(serialA, serialB),
		JobMinute: time.Second, Logger: cloud.Logger(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })

	a, err := f.NewAgent("alpn", harness.AgentOptions{Serial: serialA, Configure: f.UseALPN})
	require.NoError(t, err)
	require.NoError(t, a.Start())
	t.Cleanup(func() { _ = a.Stop(10 * time.Second) })
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(40))
	execs := runJob(t, f, ctx, "over-alpn", `{"version":"1.0","includeStdOut":"true","steps":[
		{"action":{"name":"hello","type":"runCommand","input":{"command":"/bin/echo,over 443"}}}]}`, a.ThingName())
	require.Equal(t, protocol.JobSucceeded, execs[a.ThingName()].Status, "%v", execs[a.ThingName()].StatusDetails)

	noALPN, err := f.NewAgent("no-alpn", harness.AgentOptions{Serial: serialB, Configure: func(c *config.Config) {
		f.UseALPN(c)
		c.ALPN = false
	}})
	require.NoError(t, err)
	require.NoError(t, noALPN.Start())
	t.Cleanup(func() { _ = noALPN.Stop(10 * time.Second) })
	refusedALPN := "connection refused: ALPN x-amzn-mqtt-ca required on this listener"
	require.NoError(t, harness.Poll(ctx, "connections without ALPN refused", func() bool {
		return cloud.Count(refusedALPN, nil) >= 3
	}), noALPN.LogTail(20))
	_, found, err := noALPN.Identity()
	require.NoError(t, err)
	require.False(t, found, "without ALPN the listener serves no MQTT: no identity")
	require.False(t, f.Connected("provision-"+serialB))
}
