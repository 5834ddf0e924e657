package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// A device whose serial is removed from the allowlist is revoked and
// disconnected; while it is not admitted its re-provisioning attempts are
// denied and back off (no hot loop: a bound on the attempts the local IoT
// Core sees in a window); once its serial is back on the allowlist it
// provisions a new key and certificate by itself, connects with them and
// runs jobs again.
func TestRecoveryAfterRevocationAndReadmission(t *testing.T) {
	cloud := harness.NewCloudLog()
	ctx0, cancel0 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel0()
	f, err := harness.Start(ctx0, harness.Options{
		Dir: t.TempDir(), AgentBin: agentBin, Allowlist: allowlistOf(serialA, serialB),
		JobMinute: time.Second, Logger: cloud.Logger(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })

	b, err := f.NewAgent("b", harness.AgentOptions{Serial: serialB, Configure: func(c *config.Config) {
		// Denials back off from 500ms, doubling up to 4s (1m and 1h on
		// devices).
		c.Provisioning.DeniedBackoffMin = config.Duration(500 * time.Millisecond)
		c.Provisioning.DeniedBackoff = config.Duration(4 * time.Second)
	}})
	require.NoError(t, err)
	keepRunning(t, "b", b, 60)
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, b.WaitConnected(ctx), b.LogTail(30))
	old, _, err := b.Identity()
	require.NoError(t, err)

	claimClient := protocol.ClaimClientID(serialB)
	registerTopic := protocol.RegisterThingTopic(f.Stack.Core.Names().TemplateName)
	denied := func() int {
		return cloud.Count("provisioning request rejected", map[string]string{"client": claimClient, "topic": registerTopic, "errorCode": protocol.ErrCodeAccessDenied})
	}
	refused := func() int {
		return cloud.Count("connect refused: certificate not active", map[string]string{"client": b.ThingName()})
	}

	// The operator removes B from allowlist.txt and deploys: revoked and
	// disconnected.
	res, err := f.Stack.DeployAllowlist(ctx, []byte(allowlistOf(serialA)))
	require.NoError(t, err)
	require.Equal(t, 1, res.Revoked)
	require.NoError(t, harness.Poll(ctx, "B disconnected", func() bool { return !f.Connected(b.ThingName()) }))

	// B notices the refusals, tries to provision again and is denied.
	require.NoError(t, harness.Poll(ctx, "a denied re-provisioning", func() bool { return denied() >= 1 }), b.LogTail(30))
	d0, r0 := denied(), refused()
	time.Sleep(6 * time.Second) // the window in which attempts are counted
	d1, r1 := denied(), refused()
	t.Logf("in the 6s window: %d denied provisioning attempts, %d refused connections", d1-d0, r1-r0)
	// With waits of 0.25-0.5s, 0.5-1s, 1-2s, 2-4s, 2-4s... at most 5
	// attempts fit in 6s; a hot loop would make hundreds.
	require.GreaterOrEqual(t, d1-d0, 1, "it keeps trying")
	require.LessOrEqual(t, d1-d0, 6, "denied attempts in 6s")
	// Each attempt checks the old certificate once; the reconnect loop
	// stopped hammering it.
	require.LessOrEqual(t, r1-r0, d1-d0+2, "refused connections in 6s")
	require.False(t, f.Connected(b.ThingName()))
	id, found, err := b.Identity()
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, old, id, "the old identity is kept while denied")

	// Re-admitted: B provisions a new identity by itself and connects.
	_, err = f.Stack.DeployAllowlist(ctx, []byte(allowlistOf(serialA, serialB)))
	require.NoError(t, err)
	var got = old
	require.NoError(t, harness.Poll(ctx, "B back with a new certificate", func() bool {
		id, _, err := b.Identity()
		if err != nil || id.CertificateID == old.CertificateID {
			return false
		}
		got = id
		return f.Connected(b.ThingName())
	}), b.LogTail(40))
	require.Equal(t, b.ThingName(), got.ThingName)
	require.NotEqual(t, old.KeyFile, got.KeyFile, "a new key made on the device")
	rec, err := f.Stack.Registry.Get(ctx, serialB)
	require.NoError(t, err)
	require.Equal(t, "provisioned", string(rec.State))
	require.Equal(t, got.CertificateID, rec.CertificateID)
	cert, err := f.Stack.Core.Registry().Certificate(got.CertificateID)
	require.NoError(t, err)
	require.Equal(t, "ACTIVE", string(cert.Status))

	// And its jobs work.
	execs := runJob(t, f, ctx, "after-recovery",
		`{"version":"1.0","includeStdOut":"true","steps":[{"action":{"name":"greet","type":"runCommand","input":{"command":"/bin/echo,back"}}}]}`,
		b.ThingName())
	e := execs[b.ThingName()]
	require.Equal(t, protocol.JobSucceeded, e.Status, "%v\n%s", e.StatusDetails, b.LogTail(30))
}
