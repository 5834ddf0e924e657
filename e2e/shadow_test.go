package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/shadow"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// shadowOf returns the reported state of thing's fleet-agent shadow on
// the local IoT Core, and its delta.
func shadowOf(f *harness.Fleet, thing string) (shadow.Reported, map[string]any, bool) {
	doc, ok := f.Stack.Core.Shadows().Get(thing, shadow.Name)
	if !ok || doc.State == nil || doc.State.Reported == nil {
		return shadow.Reported{}, nil, false
	}
	b, err := json.Marshal(doc.State.Reported)
	if err != nil {
		return shadow.Reported{}, nil, false
	}
	var rep shadow.Reported
	if json.Unmarshal(b, &rep) != nil {
		return shadow.Reported{}, nil, false
	}
	return rep, doc.State.Delta, true
}

// A real agent keeps its fleet-agent shadow on the local IoT Core: what
// it reports after provisioning, during and after a job; desired settings
// arrive as a delta and are applied, an unknown key is refused and
// reported back; with its certificate, another thing's shadow is denied.
func TestShadowReportedDesiredAndDenied(t *testing.T) {
	f := startFleet(t, serialA)
	a, err := f.NewAgent("a", harness.AgentOptions{Serial: serialA, Configure: func(c *config.Config) {
		c.LogLevel = "info"
		c.Shadow.PollInterval = config.Duration(100 * time.Millisecond)
		c.Shadow.MinInterval = config.Duration(200 * time.Millisecond)
	}})
	require.NoError(t, err)
	marker := filepath.Join(a.Dir, "release")
	require.NoError(t, a.InstallHandler("wait.sh", "#!/bin/sh\nwhile [ ! -e "+marker+" ]; do sleep 0.05; done\necho released\n"))
	keepRunning(t, a.Serial, a, 60)
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	thing := a.ThingName()

	// After provisioning: the identity it got, its version, its boot.
	require.NoError(t, harness.Poll(ctx, "first report", func() bool { _, _, ok := shadowOf(f, thing); return ok }))
	rep, _, _ := shadowOf(f, thing)
	id, found, err := a.Identity()
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, id.CertificateID, rep.Certificate.ID)
	require.NotEmpty(t, rep.Certificate.ExpiresAt)
	require.NotEmpty(t, rep.AgentVersion)
	require.NotEmpty(t, rep.ImageVersion)
	require.NotEmpty(t, rep.BootID)
	require.True(t, rep.Connectivity.Connected)
	require.Equal(t, "info", rep.LogLevel)
	require.Nil(t, rep.Job)

	// During a job: its id and step; after it: no job.
	_, err = f.Stack.Core.CreateJob(ctx, jobs.CreateJobInput{JobID: "shadow-job", Things: []string{thing},
		Document: json.RawMessage(`{"version":"1.0","steps":[{"action":{"name":"Wait","type":"runHandler","input":{"handler":"wait.sh"}}}]}`)})
	require.NoError(t, err)
	require.NoError(t, harness.Poll(ctx, "job in the shadow", func() bool {
		rep, _, _ := shadowOf(f, thing)
		return rep.Job != nil && rep.Job.JobID == "shadow-job" && rep.Job.StepName == "Wait"
	}))
	require.NoError(t, os.WriteFile(marker, nil, 0o600))
	execs, err := f.Stack.Core.WaitForExecutions(ctx, "shadow-job")
	require.NoError(t, err)
	require.Equal(t, protocol.JobSucceeded, execs[0].Status)
	require.NoError(t, harness.Poll(ctx, "job gone from the shadow", func() bool {
		rep, _, ok := shadowOf(f, thing)
		return ok && rep.Job == nil
	}))

	// desired → delta → applied; an unknown key refused, never applied.
	_, err = f.Stack.Core.Shadows().Update(thing, shadow.Name, []byte(`{"state":{"desired":{"logLevel":"debug","reportInterval":"2m","sshEnabled":true}},"clientToken":"operator-1"}`))
	require.NoError(t, err)
	require.NoError(t, harness.Poll(ctx, "desired applied", func() bool {
		rep, _, _ := shadowOf(f, thing)
		return rep.LogLevel == "debug" && rep.ReportInterval == "2m" && rep.RejectedDesired["sshEnabled"] != ""
	}))
	_, delta, _ := shadowOf(f, thing)
	require.Equal(t, map[string]any{"sshEnabled": true}, delta, "only the refused key stays in the delta")
	// The agent logs at debug level now.
	require.NoError(t, a.WaitLog(ctx, "level=DEBUG"))

	// Another thing's shadow is denied to this device's certificate.
	other := f.ThingName(serialB)
	_, err = f.Stack.Core.Shadows().Update(other, shadow.Name, []byte(`{"state":{"reported":{"agentVersion":"v9"}}}`))
	require.NoError(t, err)
	require.NoError(t, a.Stop(10*time.Second))
	for _, try := range []func(c pahoClient) error{
		func(c pahoClient) error { return c.sub(protocol.ShadowDeltaTopic(other, shadow.Name)) },
		func(c pahoClient) error {
			return c.pub(protocol.ShadowUpdateTopic(other, shadow.Name), `{"state":{"reported":{"agentVersion":"forged"}}}`)
		},
		func(c pahoClient) error { return c.pub(protocol.ShadowGetTopic(other, shadow.Name), `{}`) },
	} {
		c, lost, err := deviceClient(t, f, a, thing)
		require.NoError(t, err)
		_ = try(pahoClient{c})
		select {
		case <-lost:
		case <-time.After(5 * time.Second):
			t.Fatal("using another thing's shadow did not close the connection")
		}
	}
	doc, ok := f.Stack.Core.Shadows().Get(other, shadow.Name)
	require.True(t, ok)
	require.Equal(t, int64(1), doc.Version, "the other thing's shadow is unchanged")
	require.Equal(t, "v9", doc.State.Reported["agentVersion"])
}

// pahoClient wraps a paho client for one-line subscribe and publish.
type pahoClient struct{ c paho.Client }

func (p pahoClient) sub(filter string) error {
	tok := p.c.Subscribe(filter, 1, nil)
	tok.WaitTimeout(5 * time.Second)
	return tok.Error()
}

func (p pahoClient) pub(topic, payload string) error {
	tok := p.c.Publish(topic, 1, false, []byte(payload))
	tok.WaitTimeout(5 * time.Second)
	return tok.Error()
}

// After a full-system OTA update (the fake mender client with A/B
// partitions, the reboot played by the test), the shadow shows the new
// image, the OTA step and the new boot.
func TestShadowAfterOTA(t *testing.T) {
	fakeMender := buildFakeMender(t)
	const serial = "10000000000000e1"
	f := startFleet(t, serial)
	d, err := f.NewOTADevice("ota-shadow", serial, fakeMender, map[string]any{"artifactSizeMiB": 4}, nil)
	require.NoError(t, err)
	require.NoError(t, d.Reconfigure(func(c *config.Config) {
		c.Shadow.PollInterval = config.Duration(100 * time.Millisecond)
		c.Shadow.MinInterval = config.Duration(200 * time.Millisecond)
	}))
	keepRunning(t, "ota-shadow", d.Agent, 60)
	ctx := waitCtx(t, 3*time.Minute)
	require.NoError(t, d.WaitConnected(ctx), d.LogTail(30))
	thing := d.ThingName()
	require.NoError(t, harness.Poll(ctx, "first report", func() bool {
		rep, _, _ := shadowOf(f, thing)
		return rep.ImageVersion == "rpi-initial"
	}))
	rep, _, _ := shadowOf(f, thing)
	firstBoot := rep.BootID
	require.Nil(t, rep.OTA)

	doc := fmt.Sprintf(`{"operation":"mender_install","url":%q}`, otaArtifactURL)
	_, err = f.Stack.Core.CreateJob(ctx, jobs.CreateJobInput{JobID: "rootfs-shadow", Document: json.RawMessage(doc), Things: []string{thing}})
	require.NoError(t, err)
	require.NoError(t, d.WaitRebootRequests(ctx, 1), d.LogTail(40))
	require.NoError(t, harness.Poll(ctx, "OTA step rebooting in the shadow", func() bool {
		rep, _, _ := shadowOf(f, thing)
		return rep.OTA != nil && rep.OTA.Step == "rebooting" && rep.Job != nil && rep.Job.JobID == "rootfs-shadow"
	}))
	require.NoError(t, d.Reboot())
	execs, err := f.Stack.Core.WaitForExecutions(ctx, "rootfs-shadow")
	require.NoError(t, err)
	require.Equal(t, protocol.JobSucceeded, execs[0].Status, "%v", execs[0].StatusDetails)
	require.NoError(t, harness.Poll(ctx, "new image in the shadow", func() bool {
		rep, _, _ := shadowOf(f, thing)
		return rep.ImageVersion == "rpi-2024.06" && rep.OTA != nil && rep.OTA.Step == "committed" && rep.Job == nil
	}))
	rep, _, _ = shadowOf(f, thing)
	require.NotEqual(t, firstBoot, rep.BootID)
	require.Equal(t, "SUCCEEDED", rep.OTA.Status)
}
