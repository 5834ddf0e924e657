package e2e

import (
	"context"
	"encoding/json"
	"fmt"
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
	bin, err := harness.BuildFakeMender(waitCtx(t, 5*time.Minute), t.TempDir())
	require.NoError(t, err)
	return bin
}

// otaDevice is a started harness.OTADevice with test-failing accessors.
type otaDevice struct {
	*harness.OTADevice
	t *testing.T
}

func newOTADevice(t *testing.T, f *harness.Fleet, fakeMender, name, serial string, scenario map[string]any, checks []config.HealthCheck) *otaDevice {
	t.Helper()
	d, err := f.NewOTADevice(name, serial, fakeMender, scenario, checks)
	require.NoError(t, err)
	require.NoError(t, d.Start())
	t.Cleanup(func() {
		_ = d.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("agent %s log tail:\n%s", name, d.LogTail(60))
		}
	})
	return &otaDevice{OTADevice: d, t: t}
}

func (d *otaDevice) setScenario(sc map[string]any) { require.NoError(d.t, d.SetScenario(sc)) }

func (d *otaDevice) reboot() {
	d.t.Helper()
	require.NoError(d.t, d.Reboot())
}

func (d *otaDevice) rebootRequests() int { return d.RebootRequests() }

func (d *otaDevice) waitRebootRequests(ctx context.Context, n int) {
	d.t.Helper()
	require.NoError(d.t, d.WaitRebootRequests(ctx, n), d.LogTail(40))
	require.Equal(d.t, n, d.RebootRequests())
}

func (d *otaDevice) menderOps() []string {
	ops, err := d.MenderOps()
	require.NoError(d.t, err)
	return ops
}

func (d *otaDevice) activePartition() string {
	p, err := d.ActivePartition()
	require.NoError(d.t, err)
	return p
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
