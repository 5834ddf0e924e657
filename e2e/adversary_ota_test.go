package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// OTA against an adversary and a power cut, end to end: real fleet-agent
// processes against the local IoT Core. An attacker who can create a job
// (or tamper with one) points it at another host, or at an artifact that
// is not the released one; the device refuses. Artifacts come from a local
// HTTP server (ota.allowHTTP, ota.allowedHosts = its 127.0.0.1:port). The
// signature checks run Debian's real mender client 3.4 in the agent's OTA
// configuration (testenv.RealMender); the A/B reboot dance uses the fake.

// newAdversaryOTADevice prepares an OTA device, edits its configuration,
// and starts it.
func newAdversaryOTADevice(t *testing.T, f *harness.Fleet, fakeMender, name, serial string, scenario map[string]any, edit func(*config.Config)) *otaDevice {
	t.Helper()
	d, err := f.NewOTADevice(name, serial, fakeMender, scenario, nil)
	require.NoError(t, err)
	if edit != nil {
		require.NoError(t, d.Reconfigure(edit))
	}
	require.NoError(t, d.Start())
	t.Cleanup(func() {
		_ = d.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("agent %s log tail:\n%s", name, d.LogTail(80))
		}
	})
	return &otaDevice{OTADevice: d, t: t}
}

func TestAdversaryOTAOffHostURLIsRejected(t *testing.T) {
	fakeMender := buildFakeMender(t)
	const serial = "10000000000000e1"
	f := startFleet(t, serial)
	d := newAdversaryOTADevice(t, f, fakeMender, "ota-offhost", serial, map[string]any{}, nil)
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, d.WaitConnected(ctx), d.LogTail(30))

	for i, url := range []string{
		// The allowed bucket host as a prefix of the attacker's domain.
		"https://iot-fleet-dev-artifacts.s3.amazonaws.com.evil.example/rpi.mender",
		// The allowed host as user info: the request goes to evil.example.
		"https://iot-fleet-dev-artifacts.s3.amazonaws.com@evil.example/rpi.mender",
		// Another bucket on the shared path-style endpoint.
		"https://s3.amazonaws.com/attacker-bucket/rpi.mender",
	} {
		execs := runJob(t, f, ctx, fmt.Sprintf("offhost-%d", i), fmt.Sprintf(`{"operation":"mender_install","url":%q}`, url), d.ThingName())
		e := execs[d.ThingName()]
		require.Equal(t, protocol.JobRejected, e.Status, "%s: %v", url, e.StatusDetails)
		assert.Regexp(t, "is not allowed|user info", e.StatusDetails["reason"], url)
	}
	assert.Empty(t, d.menderOps(), "mender never ran")
	assert.Equal(t, 0, d.rebootRequests())
}

func TestAdversaryOTASHA256MismatchFails(t *testing.T) {
	fakeMender := buildFakeMender(t)
	const serial = "10000000000000e2"
	artifact := filepath.Join(t.TempDir(), "rpi-2026.12.mender")
	require.NoError(t, os.WriteFile(artifact, []byte("not the released artifact"), 0o600))
	base, host := testenv.ServeFiles(t, map[string]string{"rpi-2026.12.mender": artifact})
	f := startFleet(t, serial)
	d := newAdversaryOTADevice(t, f, fakeMender, "ota-mismatch", serial, map[string]any{}, func(c *config.Config) {
		c.OTA.AllowHTTP = true
		c.OTA.AllowedHosts = []string{host}
	})
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, d.WaitConnected(ctx), d.LogTail(30))

	want := strings.Repeat("5a", 32)
	execs := runJob(t, f, ctx, "mismatch", fmt.Sprintf(`{"operation":"mender_install","url":%q,"sha256":%q}`, base+"rpi-2026.12.mender", want), d.ThingName())
	e := execs[d.ThingName()]
	require.Equal(t, protocol.JobFailed, e.Status, "%v", e.StatusDetails)
	assert.Equal(t, "failed", e.StatusDetails["step"])
	assert.Contains(t, e.StatusDetails["reason"], "artifact integrity check failed (nothing was installed)")
	assert.Contains(t, e.StatusDetails["reason"], want)
	assert.Contains(t, e.StatusDetails["reason"], testenv.FileSHA256(t, artifact))
	assert.Empty(t, d.menderOps(), "mender was never asked to install")
	_, err := os.Stat(filepath.Join(d.MenderDir, "partitions.json"))
	assert.ErrorIs(t, err, os.ErrNotExist, "the fake device's partitions were never touched")
}

func TestAdversaryOTAUnsignedArtifactFailsWithMendersReason(t *testing.T) {
	testenv.NeedRealMender(t)
	fakeMender := buildFakeMender(t)
	const serial = "10000000000000e3"
	ctx := waitCtx(t, 3*time.Minute)
	rm, err := testenv.NewRealMender(ctx, t.TempDir())
	require.NoError(t, err)
	unsigned, err := rm.Artifact(ctx, "rpi-unsigned", "unsigned build\n", "")
	require.NoError(t, err)
	signed, err := rm.Artifact(ctx, "rpi-2026.12", "release 2026.12\n", rm.ReleaseKey)
	require.NoError(t, err)
	base, host := testenv.ServeFiles(t, map[string]string{"unsigned.mender": unsigned, "signed.mender": signed})
	f := startFleet(t, serial)
	d := newAdversaryOTADevice(t, f, fakeMender, "ota-real-mender", serial, map[string]any{}, func(c *config.Config) {
		c.OTA.AllowHTTP = true
		c.OTA.AllowedHosts = []string{host}
		c.OTA.MenderPath = rm.Wrapper
		c.OTA.MenderUpdatePath = filepath.Join(rm.Dir, "no-mender-update")
		c.OTA.ArtifactVerifyKey = rm.VerifyKey
	})
	require.NoError(t, d.WaitConnected(ctx), d.LogTail(30))

	execs := runJob(t, f, ctx, "unsigned", fmt.Sprintf(`{"operation":"mender_install","url":%q}`, base+"unsigned.mender"), d.ThingName())
	e := execs[d.ThingName()]
	require.Equal(t, protocol.JobFailed, e.Status, "%v", e.StatusDetails)
	assert.Equal(t, "failed", e.StatusDetails["step"])
	assert.Equal(t, "mender3", e.StatusDetails["mender"])
	assert.Contains(t, e.StatusDetails["reason"], "mender refused the artifact (nothing was installed)")
	assert.Contains(t, e.StatusDetails["reason"], "expecting signed artifact, but no signature file found")
	_, installed, err := rm.Installed()
	require.NoError(t, err)
	assert.False(t, installed)
	assert.Equal(t, 0, d.rebootRequests())

	// The released, signed artifact (checked against its sha256 too)
	// installs with the same client and commits after the reboot.
	doc := fmt.Sprintf(`{"operation":"mender_install","url":%q,"sha256":%q}`, base+"signed.mender", testenv.FileSHA256(t, signed))
	_, err = f.Stack.Core.CreateJob(ctx, jobsInput("signed", doc, d.ThingName()))
	require.NoError(t, err)
	d.waitRebootRequests(ctx, 1)
	d.reboot()
	execs2, err := f.Stack.Core.WaitForExecutions(ctx, "signed")
	require.NoError(t, err)
	require.Len(t, execs2, 1)
	require.Equal(t, protocol.JobSucceeded, execs2[0].Status, "%v", execs2[0].StatusDetails)
	got, installed, err := rm.Installed()
	require.NoError(t, err)
	require.True(t, installed)
	assert.Equal(t, "release 2026.12\n", got)
	name, err := rm.ShowArtifact(ctx)
	require.NoError(t, err)
	assert.Equal(t, "rpi-2026.12", name)
}

func TestAdversaryOTAKill9RightAfterCommitSucceedsOnce(t *testing.T) {
	fakeMender := buildFakeMender(t)
	const serial = "10000000000000e4"
	f := startFleet(t, serial)
	d := newAdversaryOTADevice(t, f, fakeMender, "ota-commit-crash", serial, map[string]any{"hangAfterCommit": true}, nil)
	ctx := waitCtx(t, 3*time.Minute)
	require.NoError(t, d.WaitConnected(ctx), d.LogTail(30))

	_, err := f.Stack.Core.CreateJob(ctx, jobsInput("commit-crash", fmt.Sprintf(`{"operation":"mender_install","url":%q}`, otaArtifactURL), d.ThingName()))
	require.NoError(t, err)
	d.waitRebootRequests(ctx, 1)
	d.reboot()

	// mender's commit took effect; the agent dies before it records or
	// reports it (power cut).
	pid, err := d.WaitCommitTookEffect(ctx)
	require.NoError(t, err)
	require.NoError(t, d.Kill())
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL), "the hanging fake mender is ours")
	require.Equal(t, "B", d.activePartition())
	e, err := f.Stack.Core.Jobs().Execution("commit-crash", d.ThingName())
	require.NoError(t, err)
	require.Equal(t, protocol.JobInProgress, e.Status, "nothing terminal was reported before the kill: %v", e.StatusDetails)

	require.NoError(t, d.Start())
	execs, err := f.Stack.Core.WaitForExecutions(ctx, "commit-crash")
	require.NoError(t, err)
	require.Len(t, execs, 1)
	e = execs[0]
	assert.Equal(t, protocol.JobSucceeded, e.Status, "%v", e.StatusDetails)
	assert.Equal(t, "committed", e.StatusDetails["step"])
	assert.Equal(t, []string{"install", "commit", "commit"}, d.menderOps(), "the second commit found nothing to commit; never a rollback")
	assert.Equal(t, "B", d.activePartition())
	require.NoError(t, d.WaitLog(ctx, "the commit before the restart took effect"))
	require.NoError(t, d.WaitLog(ctx, "no pending jobs"))
	assert.NotContains(t, d.Log(), "terminal state", "no second terminal update")
	assert.NotContains(t, d.Log(), "rolling back")
}

func jobsInput(jobID, doc string, things ...string) jobs.CreateJobInput {
	return jobs.CreateJobInput{JobID: jobID, Document: json.RawMessage(doc), Things: things}
}
