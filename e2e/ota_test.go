package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// OTA end to end: real fleet-agent processes against the local IoT Core,
// with the OTA core's fake mender client (linked as mender-update; it
// models the A/B partitions) and a reboot command that only records the
// request. The test plays the reboot: kill -9 of the agent's process group
// (power cut), a new boot id, and a fresh start.

// otaArtifactURL is the document as the device receives it: the sim does
// not substitute ${aws:iot:s3-presigned-url:...}, so the job carries the
// presigned URL AWS IoT Jobs would put there.
const otaArtifactURL = "https://iot-fleet-dev-artifacts.s3.amazonaws.com/rpi-2024.06.mender?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=e2e0000secret"

func buildFakeMender(t *testing.T) string {
	t.Helper()
	root, err := harness.RepoRoot()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "fakemender")
	cmd := exec.Command("go", "build", "-o", bin, "./device/ota/internal/fakemender")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// otaDevice is an agent with its fake mender, boot id and reboot log.
type otaDevice struct {
	*harness.Agent
	t         *testing.T
	menderDir string
	bootID    string
	rebootLog string
	boots     int
}

func newOTADevice(t *testing.T, f *harness.Fleet, fakeMender, name, serial string, scenario map[string]any, checks []config.HealthCheck) *otaDevice {
	t.Helper()
	dir := t.TempDir()
	d := &otaDevice{t: t, menderDir: filepath.Join(dir, "mender"), bootID: filepath.Join(dir, "boot_id"), rebootLog: filepath.Join(dir, "reboot.log")}
	require.NoError(t, os.Mkdir(d.menderDir, 0o755))
	data, err := os.ReadFile(fakeMender)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(d.menderDir, "mender-update"), data, 0o755))
	d.setScenario(scenario)
	d.newBoot()
	a, err := f.NewAgent(name, harness.AgentOptions{Serial: serial, Configure: func(c *config.Config) {
		c.OTA.MenderUpdatePath = filepath.Join(d.menderDir, "mender-update")
		c.OTA.MenderPath = filepath.Join(d.menderDir, "mender")
		c.OTA.RetryDelay = config.Duration(100 * time.Millisecond)
		c.OTA.ProgressInterval = config.Duration(time.Hour)
		c.OTA.PreRebootCommand = []string{"/bin/sh", "-c", "echo pre-reboot >> " + d.rebootLog}
		c.OTA.RebootCommand = []string{"/bin/sh", "-c", "echo reboot >> " + d.rebootLog}
		c.OTA.RebootWait = config.Duration(10 * time.Minute)
		c.OTA.BootIDFile = d.bootID
		c.OTA.HealthChecks = checks
		// The device is silent while it reboots; the sim's minute is 1 s.
		c.Jobs.ProgressTimeoutMinutes = 60
	}})
	require.NoError(t, err)
	d.Agent = a
	require.NoError(t, a.Start())
	t.Cleanup(func() {
		_ = a.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("agent %s log tail:\n%s", name, a.LogTail(60))
		}
	})
	return d
}

func (d *otaDevice) setScenario(sc map[string]any) {
	b, err := json.Marshal(sc)
	require.NoError(d.t, err)
	require.NoError(d.t, os.WriteFile(filepath.Join(d.menderDir, "scenario.json"), b, 0o600))
}

func (d *otaDevice) newBoot() {
	d.boots++
	require.NoError(d.t, os.WriteFile(d.bootID, []byte(fmt.Sprintf("e2e00000-0000-4000-8000-%012d\n", d.boots)), 0o600))
}

// reboot plays the reboot the agent asked for.
func (d *otaDevice) reboot() {
	d.t.Helper()
	require.NoError(d.t, d.Kill())
	d.newBoot()
	require.NoError(d.t, d.Start())
}

func (d *otaDevice) rebootRequests() int {
	b, _ := os.ReadFile(d.rebootLog)
	return strings.Count(string(b), "pre-reboot\nreboot\n")
}

func (d *otaDevice) waitRebootRequests(ctx context.Context, n int) {
	d.t.Helper()
	require.NoError(d.t, harness.Poll(ctx, fmt.Sprintf("reboot request %d", n), func() bool { return d.rebootRequests() >= n }), d.LogTail(40))
	require.Equal(d.t, n, d.rebootRequests())
}

func (d *otaDevice) menderOps() []string {
	b, err := os.ReadFile(filepath.Join(d.menderDir, "calls.log"))
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(d.t, err)
	var ops []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var c struct {
			Args []string `json:"args"`
		}
		require.NoError(d.t, json.Unmarshal([]byte(line), &c))
		if len(c.Args) > 0 && !strings.HasPrefix(c.Args[0], "-") {
			ops = append(ops, c.Args[0])
		}
	}
	return ops
}

func (d *otaDevice) activePartition() string {
	var p struct {
		Active  string `json:"active"`
		Pending string `json:"pending"`
	}
	b, err := os.ReadFile(filepath.Join(d.menderDir, "partitions.json"))
	require.NoError(d.t, err)
	require.NoError(d.t, json.Unmarshal(b, &p))
	return p.Active + p.Pending
}

func TestOTAUpdateAndRollback(t *testing.T) {
	fakeMender := buildFakeMender(t)
	const serialOK, serialOld, serialSick = "10000000000000d1", "10000000000000d2", "10000000000000d3"
	f := startFleet(t, serialOK, serialOld, serialSick)
	scenario := map[string]any{"artifactSizeMiB": 32}
	ok := newOTADevice(t, f, fakeMender, "ota-ok", serialOK, scenario, nil)
	old := newOTADevice(t, f, fakeMender, "ota-old", serialOld, scenario, nil)
	sick := newOTADevice(t, f, fakeMender, "ota-sick", serialSick, scenario, []config.HealthCheck{
		{Name: "app-running", Command: []string{"/bin/sh", "-c", "echo app is down >&2; exit 3"}, Timeout: config.Duration(10 * time.Second)},
	})
	ctx := waitCtx(t, 3*time.Minute)
	for _, d := range []*otaDevice{ok, old, sick} {
		require.NoError(t, d.WaitConnected(ctx), d.LogTail(30))
	}

	doc := fmt.Sprintf(`{"operation":"mender_install","url":%q}`, otaArtifactURL)
	_, err := f.Stack.Core.CreateJob(ctx, jobs.CreateJobInput{JobID: "rootfs-2024-06", Document: json.RawMessage(doc),
		Groups: []string{f.Stack.Core.Names().ThingGroup}})
	require.NoError(t, err)

	for _, d := range []*otaDevice{ok, old, sick} {
		d.waitRebootRequests(ctx, 1)
		// The Jobs service accepted "rebooting" before the reboot.
		e, err := f.Stack.Core.Jobs().Execution("rootfs-2024-06", d.ThingName())
		require.NoError(t, err)
		require.Equal(t, protocol.JobInProgress, e.Status)
		require.Equal(t, "rebooting", e.StatusDetails["step"], "%v", e.StatusDetails)
		require.Equal(t, []string{"install"}, d.menderOps())
	}
	// old's new partition does not boot: the bootloader falls back.
	old.setScenario(map[string]any{"artifactSizeMiB": 32, "bootedOld": true})
	for _, d := range []*otaDevice{ok, old, sick} {
		d.reboot()
	}
	// sick rolls back after its health check failed and reboots into the
	// old partition before it reports.
	sick.waitRebootRequests(ctx, 2)
	sick.reboot()

	execs, err := f.Stack.Core.WaitForExecutions(ctx, "rootfs-2024-06")
	require.NoError(t, err)
	byThing := map[string]jobs.Execution{}
	for _, e := range execs {
		byThing[e.ThingName] = e
	}

	e := byThing[ok.ThingName()]
	assert.Equal(t, protocol.JobSucceeded, e.Status, "%v\n%s", e.StatusDetails, ok.LogTail(30))
	assert.Equal(t, "committed", e.StatusDetails["step"])
	assert.Equal(t, []string{"install", "commit"}, ok.menderOps())
	assert.Equal(t, "B", ok.activePartition())

	e = byThing[old.ThingName()]
	assert.Equal(t, protocol.JobFailed, e.Status, "%v", e.StatusDetails)
	assert.Equal(t, "rolled_back", e.StatusDetails["step"])
	assert.Contains(t, e.StatusDetails["reason"], "commit failed")
	assert.Equal(t, []string{"install", "commit", "rollback"}, old.menderOps())
	assert.Equal(t, "A", old.activePartition())

	e = byThing[sick.ThingName()]
	assert.Equal(t, protocol.JobFailed, e.Status, "%v", e.StatusDetails)
	assert.Equal(t, "rolled_back", e.StatusDetails["step"])
	assert.Contains(t, e.StatusDetails["reason"], "health check failed: app-running")
	assert.Equal(t, []string{"install", "rollback"}, sick.menderOps())
	assert.Equal(t, "A", sick.activePartition())
	assert.Equal(t, 2, sick.rebootRequests())

	for _, d := range []*otaDevice{ok, old, sick} {
		assert.NotContains(t, d.Log(), "e2e0000secret", "the presigned URL's signature is never logged")
		assert.True(t, d.Running())
	}
}

func TestOTAJobWithoutURLIsRejected(t *testing.T) {
	fakeMender := buildFakeMender(t)
	const serial = "10000000000000d4"
	f := startFleet(t, serial)
	d := newOTADevice(t, f, fakeMender, "ota-no-url", serial, map[string]any{}, nil)
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, d.WaitConnected(ctx), d.LogTail(30))
	execs := runJob(t, f, ctx, "no-url", `{"operation":"mender_install"}`, d.ThingName())
	e := execs[d.ThingName()]
	require.Equal(t, protocol.JobRejected, e.Status, "%v", e.StatusDetails)
	require.Contains(t, e.StatusDetails["reason"], "url")
	require.Empty(t, d.menderOps())
}
