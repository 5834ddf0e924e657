package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/fleetctl"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// fleetctl end to end: the operator's tool, run in-process exactly as the
// fleetctl binary runs it (fleetctl.Run with a command line), with --local
// against the local IoT Core's one AWS endpoint (harness.ServeAWS: AWS IoT,
// Lambda, DynamoDB and S3 APIs over HTTP, the stack's real Lambda
// handlers) and real fleet-agent processes.

// ctl is the local AWS endpoint of a fleet and a way to run fleetctl
// command lines against it.
type ctl struct {
	t   *testing.T
	f   *harness.Fleet
	aws *harness.LocalAWS
}

func serveAWS(t *testing.T, f *harness.Fleet) *ctl {
	t.Helper()
	l, err := f.ServeAWS()
	require.NoError(t, err)
	return &ctl{t: t, f: f, aws: l}
}

// ctlResult is one fleetctl run.
type ctlResult struct {
	code        int
	out, errOut string
}

// run runs `fleetctl --local DIR args...` and returns its exit code and
// output.
func (c *ctl) run(ctx context.Context, args ...string) ctlResult {
	var out, errOut bytes.Buffer
	code := fleetctl.Run(ctx, append([]string{"--local", c.aws.OutputsDir}, args...), &out, &errOut)
	c.t.Logf("$ fleetctl %s  # exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return ctlResult{code: code, out: out.String(), errOut: errOut.String()}
}

// start runs fleetctl in the background; wait returns its result.
func (c *ctl) start(ctx context.Context, args ...string) (wait func() ctlResult) {
	var (
		res ctlResult
		wg  sync.WaitGroup
	)
	wg.Go(func() { res = c.run(ctx, args...) })
	return func() ctlResult {
		wg.Wait()
		return res
	}
}

func TestFleetctlOTAJobWatchedToCompletion(t *testing.T) {
	fakeMender := buildFakeMender(t)
	const serialOK, serialOld = "10000000000000e1", "10000000000000e2"
	f := startFleet(t, serialOK, serialOld)
	c := serveAWS(t, f)
	scenario := map[string]any{"artifactSizeMiB": 8}
	var devices []*otaDevice
	for i, sn := range []string{serialOK, serialOld} {
		d, err := f.NewOTADevice([]string{"ota-ok", "ota-old"}[i], sn, fakeMender, scenario, nil)
		require.NoError(t, err)
		// The artifact comes from the local S3 by the presigned URL the
		// Jobs service puts into the document.
		require.NoError(t, d.Reconfigure(func(cfg *config.Config) {
			cfg.OTA.AllowedHosts = []string{c.aws.ArtifactsHost}
			cfg.OTA.AllowHTTP = true
		}))
		require.NoError(t, d.Start())
		t.Cleanup(func() {
			_ = d.Stop(10 * time.Second)
			if t.Failed() {
				t.Logf("agent %s log tail:\n%s", d.Serial, d.LogTail(60))
			}
		})
		devices = append(devices, &otaDevice{OTADevice: d, t: t})
	}
	ctx := waitCtx(t, 3*time.Minute)
	for _, d := range devices {
		require.NoError(t, d.WaitConnected(ctx), d.LogTail(30))
	}
	ok, old := devices[0], devices[1]

	artifact := filepath.Join(t.TempDir(), "rpi-os-2026.12.mender")
	content := make([]byte, 256<<10)
	_, _ = rand.Read(content)
	require.NoError(t, os.WriteFile(artifact, content, 0o644))

	// An artifact that is not the release named is refused before upload.
	res := c.run(ctx, "ota", "create", "--artifact", artifact, "--sha256", strings.Repeat("0", 64), "--thing", serialOK)
	require.Equal(t, fleetctl.ExitInvalid, res.code, res.errOut)
	_, err := c.aws.Store.Get("iot-fleet-dev-artifacts", "rpi-os-2026.12.mender")
	require.Error(t, err, "nothing was uploaded")

	res = c.run(ctx, "-o", "json", "ota", "create", "--artifact", artifact, "--job-id", "ota-e2e",
		"--thing", serialOK, "--thing", old.ThingName())
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	var plan fleetctl.OTAPlan
	require.NoError(t, json.Unmarshal([]byte(res.out), &plan))
	assert.True(t, plan.Uploaded)
	assert.Len(t, plan.Targets, 2, "a serial and a thing name both resolve to things")
	obj, err := c.aws.Store.Get("iot-fleet-dev-artifacts", "rpi-os-2026.12.mender")
	require.NoError(t, err)
	assert.Equal(t, content, obj.Data, "uploaded to the artifacts bucket")

	// The watch runs while the devices install, reboot and commit or roll
	// back.
	watch := c.start(ctx, "ota", "watch", "ota-e2e", "--interval", "200ms", "--timeout", "2m")
	for _, d := range devices {
		d.waitRebootRequests(ctx, 1)
	}
	status := c.run(ctx, "ota", "status", "ota-e2e")
	assert.Equal(t, fleetctl.ExitOK, status.code, "nothing failed yet")
	assert.Contains(t, status.out, "rebooting")
	assert.Contains(t, status.out, "in progress")

	old.setScenario(map[string]any{"artifactSizeMiB": 8, "bootedOld": true})
	for _, d := range devices {
		d.reboot()
	}
	res = watch()
	assert.Equal(t, fleetctl.ExitFailed, res.code, "a device rolled back: the watch fails")
	assert.Contains(t, res.errOut, "failed on 1 device(s): "+old.ThingName())
	assert.Contains(t, res.errOut, ok.ThingName()+" SUCCEEDED committed (5/5)", "progress lines on stderr")
	assert.Regexp(t, ok.ThingName()+`\s+SUCCEEDED\s+committed`, res.out)
	assert.Regexp(t, old.ThingName()+`\s+FAILED\s+rolled_back`, res.out)
	assert.Contains(t, res.out, "finished")
	assert.Equal(t, "B", ok.activePartition(), "the update really was installed")
	assert.Equal(t, "A", old.activePartition(), "the bootloader fell back")
}

func TestFleetctlJobsRefuseWhatTheAgentWouldReject(t *testing.T) {
	f := startFleet(t, serialA)
	c := serveAWS(t, f)
	a := startAgent(t, f, "a", serialA)
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))

	dir := t.TempDir()
	bad := filepath.Join(dir, "escape.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"version":"1.0","steps":[{"action":{"name":"x","type":"runHandler","input":{"handler":"../../bin/sh"}}}]}`), 0o600))
	res := c.run(ctx, "jobs", "create", "--document", bad, "--job-id", "escape")
	assert.Equal(t, fleetctl.ExitInvalid, res.code)
	assert.Contains(t, res.errOut, "steps[0].action.input.handler")
	res = c.run(ctx, "-o", "json", "jobs", "list")
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	assert.JSONEq(t, `[]`, res.out, "nothing was created")

	good := filepath.Join(dir, "hello.json")
	require.NoError(t, os.WriteFile(good, []byte(`{"version":"1.0","steps":[{"action":{"name":"hello","type":"runCommand","input":{"command":"/bin/echo,hello"}}}]}`), 0o600))
	res = c.run(ctx, "jobs", "create", "--document", good, "--job-id", "hello", "--watch", "--timeout", "90s")
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	assert.Regexp(t, a.ThingName()+`\s+SUCCEEDED`, res.out)
	res = c.run(ctx, "jobs", "list", "--status", "COMPLETED")
	assert.Contains(t, res.out, "hello")

	// A job canceled while it runs: the watch reports the device CANCELED
	// and fails.
	slow := filepath.Join(dir, "slow.json")
	require.NoError(t, os.WriteFile(slow, []byte(`{"version":"1.0","steps":[{"action":{"name":"wait","type":"runCommand","input":{"command":"/bin/sleep,60"}}}]}`), 0o600))
	res = c.run(ctx, "jobs", "create", "--document", slow, "--job-id", "slow", "--thing", a.ThingName())
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	require.NoError(t, harness.Poll(ctx, "the slow job running", func() bool {
		v, err := f.Stack.Core.Jobs().Execution("slow", a.ThingName())
		return err == nil && v.Status == "IN_PROGRESS"
	}))
	res = c.run(ctx, "jobs", "cancel", "slow", "--force", "--reason", "wrong job")
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	res = c.run(ctx, "jobs", "watch", "slow", "--interval", "200ms", "--timeout", "60s")
	assert.Equal(t, fleetctl.ExitFailed, res.code, "a canceled device is a failure for scripts")
	assert.Regexp(t, a.ThingName()+`\s+CANCELED`, res.out)
}

func TestFleetctlDevicesSSMRotateRevokeAndAllowlistDiff(t *testing.T) {
	f := startFleet(t, serialA, serialB)
	c := serveAWS(t, f)
	host := newFakeSSMHost(t)
	a, err := f.NewAgent("a", harness.AgentOptions{Serial: serialA, Configure: func(cfg *config.Config) { cfg.SSM = host.Config }})
	require.NoError(t, err)
	keepRunning(t, "a", a, 40)
	b := startAgent(t, f, "b", serialB)
	ctx := waitCtx(t, 3*time.Minute)
	for _, x := range []*harness.Agent{a, b} {
		require.NoError(t, x.WaitConnected(ctx), x.LogTail(30))
	}

	// devices: registry, certificate and the shadow's connectivity.
	var views []fleetctl.DeviceView
	require.NoError(t, harness.Poll(ctx, "both devices online in their shadows", func() bool {
		res := c.run(ctx, "-o", "json", "devices", "list")
		views = nil
		if res.code != 0 || json.Unmarshal([]byte(res.out), &views) != nil || len(views) != 2 {
			return false
		}
		return views[0].Connectivity == fleetctl.ConnOnline && views[1].Connectivity == fleetctl.ConnOnline
	}))
	idA, _, err := a.Identity()
	require.NoError(t, err)
	assert.Equal(t, serialA, views[0].Serial)
	assert.Equal(t, "provisioned", views[0].State)
	assert.Equal(t, idA.CertificateID, views[0].CertificateID)
	assert.Equal(t, "ACTIVE", views[0].CertificateStatus)
	require.NotNil(t, views[0].CertNotAfter)
	res := c.run(ctx, "devices", "show", a.ThingName())
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	assert.Contains(t, res.out, "agentVersion", "the shadow's reported state")

	t.Run("ssm on waits for the registration, off removes it", func(t *testing.T) {
		on := c.start(ctx, "ssm", "on", serialA, "--timeout", "90s")
		require.NoError(t, harness.Poll(ctx, "the register call", func() bool { return len(host.RegisterCalls()) == 1 }))
		call := host.RegisterCalls()[0]
		reg, err := f.Stack.SSM.Register(ctx, call.ActivationID, call.Code)
		require.NoError(t, err)
		require.NoError(t, host.Answer(call.ActivationID, reg.InstanceID))
		res := on()
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
		assert.Contains(t, res.out, reg.InstanceID)
		assert.Contains(t, res.out, "aws ssm start-session --target "+reg.InstanceID)

		res = c.run(ctx, "ssm", "off", a.ThingName())
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)

		res = c.run(ctx, "ssm", "on", unknownSN)
		assert.Equal(t, fleetctl.ExitFailed, res.code, "the toggle failed for the device")
		assert.Contains(t, res.out, unknownSN)
		assert.Contains(t, res.errOut, "ssm on failed for 1 device(s)")
		res = c.run(ctx, "-o", "json", "ssm", "status", serialA)
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
		assert.Contains(t, res.out, `"state": "inactive"`)
		res = c.run(ctx, "ssm", "status", "--group", f.Stack.Core.Names().ThingGroup)
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
		assert.Contains(t, res.out, a.ThingName())
		assert.Contains(t, res.out, b.ThingName(), "every device of the group")
	})

	t.Run("rotate waits until the device uses its new certificate", func(t *testing.T) {
		res := c.run(ctx, "-o", "json", "rotate", serialA, "--timeout", "90s")
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
		var out struct {
			Rotations []fleetctl.Rotation `json:"rotations"`
		}
		require.NoError(t, json.Unmarshal([]byte(res.out), &out))
		require.Len(t, out.Rotations, 1)
		r := out.Rotations[0]
		assert.Equal(t, "completed", r.Status)
		assert.NotEqual(t, idA.CertificateID, r.CertificateID)
		rec, err := f.Stack.Registry.Get(ctx, serialA)
		require.NoError(t, err)
		assert.Equal(t, rec.CertificateID, r.CertificateID)
		assert.Equal(t, registry.RotationCompleted, rec.LastRotationStatus)
	})

	allowlist := func(serials ...string) string {
		p := filepath.Join(t.TempDir(), "allowlist.txt")
		require.NoError(t, os.WriteFile(p, []byte(allowlistOf(serials...)), 0o600))
		return p
	}

	t.Run("allowlist diff shows what a deploy would do, against the local registry", func(t *testing.T) {
		res := c.run(ctx, "allowlist", "diff", allowlist(serialA, serialC))
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
		assert.Contains(t, res.out, "admits 1 device(s): "+serialC)
		assert.Contains(t, res.out, "revokes 1 device(s)")
		assert.Contains(t, res.out, b.ThingName())
		res = c.run(ctx, "allowlist", "diff", allowlist())
		assert.Equal(t, fleetctl.ExitRefused, res.code, "an empty allowlist never revokes")
		assert.True(t, f.Connected(b.ThingName()), "diff changes nothing")
	})

	t.Run("revoke now, recorded, and held out of the next deploy", func(t *testing.T) {
		idB, _, err := b.Identity()
		require.NoError(t, err)
		res := c.run(ctx, "revoke", serialB)
		assert.Equal(t, fleetctl.ExitUsage, res.code, "no reason, no revocation")
		assert.True(t, f.Connected(b.ThingName()))

		res = c.run(ctx, "-o", "json", "revoke", b.ThingName(), "--reason", "INC-1 stolen", "--by", "e2e")
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
		var resp fleetctl.RevokeResponse
		require.NoError(t, json.Unmarshal([]byte(res.out), &resp))
		assert.Equal(t, serialB, resp.Serial)
		assert.Equal(t, idB.CertificateID, resp.CertificateID)
		assert.Equal(t, "revoked", resp.State)
		require.NoError(t, harness.Poll(ctx, b.ThingName()+" disconnected", func() bool { return !f.Connected(b.ThingName()) }))
		cert, err := f.Stack.Core.Registry().Certificate(idB.CertificateID)
		require.NoError(t, err)
		assert.Equal(t, "REVOKED", string(cert.Status))
		_, err = f.Stack.Core.Registry().Thing(b.ThingName())
		assert.Error(t, err, "thing deleted")
		rec, err := f.Stack.Registry.Get(ctx, serialB)
		require.NoError(t, err)
		assert.Equal(t, registry.StateRevoked, rec.State)

		// Still listed, it is not re-admitted by the next deploy.
		res = c.run(ctx, "allowlist", "diff", allowlist(serialA, serialB))
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
		assert.Contains(t, res.out, "admits 0 device(s)")
		assert.Contains(t, res.out, "holds out 1 emergency-revoked device(s), listed but not admitted (readmit=TOKEN with a token never used for that serial admits one): "+serialB)
		res = c.run(ctx, "devices", "show", serialB)
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
		assert.Contains(t, res.out, "by e2e: INC-1 stolen; held out of allowlist deploys")

		res = c.run(ctx, "revoke", serialB, "--reason", "again")
		require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
		assert.Contains(t, res.out, "already revoked")

		res = c.run(ctx, "rotate", serialB)
		assert.Equal(t, fleetctl.ExitRefused, res.code, "a revoked device has no certificate to rotate")

		res = c.run(ctx, "revoke", unknownSN, "--reason", "typo")
		assert.Equal(t, fleetctl.ExitFailed, res.code, "the Lambda refuses an unknown device")
		assert.Contains(t, res.errOut, "iot-fleet-dev-revoke")
	})
}

// startProcess starts cmd and stops it (by its PID) when the test ends.
func startProcess(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

// TestFleetctlAgainstFleetSimServe runs fleetctl --local DIR as an
// operator would against `fleet-sim serve --dir DIR` (its outputs.json and
// one AWS endpoint), with a fleet-agent process started from DIR/agent.json.
func TestFleetctlAgainstFleetSimServe(t *testing.T) {
	ctx := waitCtx(t, 4*time.Minute)
	root, err := harness.RepoRoot()
	require.NoError(t, err)
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "fleet-sim")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./sim/cmd/fleet-sim")
	build.Dir = root
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))
	dir, allow := filepath.Join(tmp, "sim"), filepath.Join(tmp, "allowlist.txt")
	require.NoError(t, os.WriteFile(allow, []byte(allowlistOf(serialA, serialB)), 0o644))
	simErr := &testenv.LogBuffer{}
	sim := exec.Command(bin, "serve", "--dir", dir, "--allowlist", allow, "--alpn-listen", "off", "--log-level", "warn")
	sim.Stderr = simErr
	startProcess(t, sim)
	require.NoError(t, harness.Poll(ctx, "fleet-sim ready", func() bool {
		_, err := os.Stat(filepath.Join(dir, "endpoint"))
		return err == nil
	}), simErr.String())

	agentErr := &testenv.LogBuffer{}
	agent := exec.Command(agentBin, "run", "--config", filepath.Join(dir, "agent.json"), "--state-dir", filepath.Join(tmp, "agent"), "--serial", serialA)
	agent.Stdout, agent.Stderr = agentErr, agentErr
	startProcess(t, agent)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("fleet-sim stderr:\n%s\nagent log:\n%s", simErr.String(), agentErr.String())
		}
	})

	run := func(args ...string) ctlResult {
		var o, e bytes.Buffer
		code := fleetctl.Run(ctx, append([]string{"--local", dir}, args...), &o, &e)
		t.Logf("$ fleetctl --local DIR %s  # exit %d\n%s%s", strings.Join(args, " "), code, o.String(), e.String())
		return ctlResult{code: code, out: o.String(), errOut: e.String()}
	}
	var thing string
	require.NoError(t, harness.Poll(ctx, "the agent provisioned and online", func() bool {
		res := run("-o", "json", "devices", "show", serialA)
		var v fleetctl.DeviceView
		if res.code != 0 || json.Unmarshal([]byte(res.out), &v) != nil {
			return false
		}
		thing = v.ThingName
		return v.State == "provisioned" && v.Connectivity == fleetctl.ConnOnline && v.CertificateStatus == "ACTIVE"
	}))

	doc := filepath.Join(tmp, "hello.json")
	require.NoError(t, os.WriteFile(doc, []byte(`{"version":"1.0","steps":[{"action":{"name":"hello","type":"runCommand","input":{"command":"/bin/echo,hello"}}}]}`), 0o600))
	res := run("jobs", "create", "--document", doc, "--job-id", "hello", "--thing", serialA, "--watch", "--interval", "200ms", "--timeout", "90s")
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	assert.Regexp(t, thing+`\s+SUCCEEDED`, res.out)

	res = run("ota", "create", "--key", "rpi-os-2026.12.mender", "--sha256", strings.Repeat("ab", 32), "--dry-run")
	require.Equal(t, fleetctl.ExitOK, res.code, "the local outputs name the artifacts bucket and presign role: %s", res.errOut)

	res = run("allowlist", "diff", allow)
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	assert.Contains(t, res.out, "no changes")

	res = run("rotate", serialA, "--timeout", "90s")
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	assert.Contains(t, res.out, "completed")
	// The scheduled scan: the new certificate is far from expiring.
	res = run("-o", "json", "rotate", "--expiring")
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	assert.Contains(t, res.out, `"rotations": []`)
	assert.Contains(t, res.errOut, "rotation requested for 0 device(s)")

	res = run("revoke", serialA, "--reason", "e2e: fleet-sim serve", "--by", "e2e")
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	assert.Contains(t, res.out, "revoked "+serialA)
	res = run("-o", "json", "devices", "show", serialA)
	require.Equal(t, fleetctl.ExitOK, res.code, res.errOut)
	assert.Contains(t, res.out, `"state": "revoked"`)
	assert.Contains(t, res.out, `"heldOut": true`)
}
