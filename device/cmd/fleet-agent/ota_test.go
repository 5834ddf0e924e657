package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/core"
	simjobs "github.com/iot-fleet/iot-fleet/sim/jobs"
)

// The OTA tests run the real fleet-agent binary against the local IoT
// Core with the stack's Lambdas (sim/stack: MQTT over mutual TLS, fleet
// provisioning, the Jobs service), the OTA core's fake mender client
// (device/ota/internal/fakemender, linked as mender-update) and a reboot
// command that only records the request. A reboot is
// simulated by killing the agent (SIGKILL, as the power cut of a reboot
// would) and starting it again with a different boot id (ota.bootIdFile).

// otaSecret is the signature of the presigned URL: it must never appear
// in logs or statusDetails.
const otaSecret = "5ecre7519nature0123456789abcdef"

const otaURL = "https://iot-fleet-dev-artifacts.s3.amazonaws.com/rpi-2024.06.mender?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=" + otaSecret

// buildFakeMender compiles the OTA core's fake mender client.
func buildFakeMender(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "fakemender")
	cmd := exec.Command("go", "build", "-o", bin, "../../ota/internal/fakemender")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// otaDevice is one device: its fake mender, boot id, reboot log, config
// and the agent process of the current "boot".
type otaDevice struct {
	t          *testing.T
	bin        string
	dir        string
	cfgFile    string
	bootIDFile string
	rebootLog  string
	menderDir  string
	logs       *testenv.LogBuffer
	boots      int

	cmd    *exec.Cmd
	exited chan error
}

// otaOptions add to the device's "ota" section.
type otaOptions struct {
	healthChecks string // JSON list, "" for none
	disabled     bool
	// scenario is the fake mender's scenario.json (nil: a mender 4
	// client whose installs succeed, 24 MiB artifact).
	scenario map[string]any
}

func newOTADevice(t *testing.T, agentBin, fakeMender string, c *localCloud, serial string, o otaOptions) *otaDevice {
	t.Helper()
	dir := t.TempDir()
	d := &otaDevice{t: t, bin: agentBin, dir: dir, logs: &testenv.LogBuffer{},
		bootIDFile: filepath.Join(dir, "boot_id"), rebootLog: filepath.Join(dir, "reboot.log"), menderDir: filepath.Join(dir, "mender")}
	require.NoError(t, os.Mkdir(d.menderDir, 0o755))
	menderUpdate := filepath.Join(d.menderDir, "mender-update")
	if err := os.Link(fakeMender, menderUpdate); err != nil {
		data, rerr := os.ReadFile(fakeMender)
		require.NoError(t, rerr)
		require.NoError(t, os.WriteFile(menderUpdate, data, 0o755))
	}
	if o.scenario == nil {
		o.scenario = map[string]any{"artifactSizeMiB": 24}
	}
	d.setScenario(o.scenario)
	d.setBootID()

	checks := json.RawMessage(o.healthChecks)
	if o.healthChecks == "" {
		checks = json.RawMessage("[]")
	}
	d.cfgFile = c.writeAgentConfig(t, dir, serial, map[string]any{"ota": map[string]any{
		"enabled": !o.disabled, "allowedHosts": []string{"iot-fleet-dev-artifacts.s3.amazonaws.com"},
		"menderUpdatePath": menderUpdate, "menderPath": filepath.Join(d.menderDir, "mender"),
		"retryDelay": "10ms", "progressInterval": "1h", "rebootWait": "10m",
		"preRebootCommand": []string{"/bin/sh", "-c", "echo pre-reboot >> " + d.rebootLog},
		"rebootCommand":    []string{"/bin/sh", "-c", "echo reboot >> " + d.rebootLog},
		"bootIdFile":       d.bootIDFile, "healthChecks": checks,
	}})
	t.Cleanup(func() {
		if d.cmd != nil {
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
		d.killMender()
		if t.Failed() {
			t.Logf("agent log:\n%s", d.logs.String())
		}
	})
	return d
}

func (d *otaDevice) setScenario(sc map[string]any) {
	b, err := json.Marshal(sc)
	require.NoError(d.t, err)
	require.NoError(d.t, os.WriteFile(filepath.Join(d.menderDir, "scenario.json"), b, 0o600))
}

// setBootID writes a new boot id: the next start is a new boot.
func (d *otaDevice) setBootID() {
	d.boots++
	require.NoError(d.t, os.WriteFile(d.bootIDFile, []byte(fmt.Sprintf("00000000-0000-4000-8000-%012d\n", d.boots)), 0o600))
}

// start runs the agent for the current boot.
func (d *otaDevice) start() {
	d.t.Helper()
	fmt.Fprintf(d.logs, "---- boot %d ----\n", d.boots)
	d.cmd = exec.Command(d.bin, "run", "--config", d.cfgFile)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	require.NoError(d.t, d.cmd.Start())
	d.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, ch chan error) { ch <- cmd.Wait() }(d.cmd, d.exited)
}

// powerCut kills the agent with SIGKILL, and the mender process it may be
// running (the power cut of a reboot; under systemd, KillMode=control-group
// does the same), and waits for the agent.
func (d *otaDevice) powerCut() {
	d.t.Helper()
	require.NoError(d.t, d.cmd.Process.Signal(syscall.SIGKILL))
	d.killMender()
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.t.Fatal("agent did not die after SIGKILL")
	}
	d.cmd = nil
}

// killMender kills every process running this device's fake mender (it
// runs in its own process group, so killing the agent leaves it behind).
func (d *otaDevice) killMender() {
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(d.t, err)
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.HasPrefix(string(b), d.menderDir+"/") {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// reboot simulates the reboot the agent asked for.
func (d *otaDevice) reboot() {
	d.t.Helper()
	d.powerCut()
	d.setBootID()
	d.start()
}

// rebootRequests returns the lines of the reboot log ("pre-reboot",
// "reboot").
func (d *otaDevice) rebootRequests() []string {
	b, err := os.ReadFile(d.rebootLog)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(d.t, err)
	return strings.Fields(string(b))
}

// waitRebootRequests waits until the agent asked for the n-th reboot.
func (d *otaDevice) waitRebootRequests(n int) {
	d.t.Helper()
	want := strings.Fields(strings.Repeat("pre-reboot reboot ", n))
	d.waitFor(fmt.Sprintf("reboot request %d", n), func() bool { return len(d.rebootRequests()) >= 2*n })
	assert.Equal(d.t, want, d.rebootRequests(), "the pre-reboot hook runs before each reboot command, one reboot per request")
}

func (d *otaDevice) waitFor(what string, cond func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		select {
		case err := <-d.exited:
			d.t.Fatalf("agent exited while waiting for %s: %v", what, err)
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// menderOps lists the fake mender's operations (without the read-only
// --version and show-artifact probes).
func (d *otaDevice) menderOps() []string {
	f, err := os.Open(filepath.Join(d.menderDir, "calls.log"))
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(d.t, err)
	defer f.Close()
	var ops []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var c struct {
			Prog string   `json:"prog"`
			Args []string `json:"args"`
		}
		require.NoError(d.t, json.Unmarshal(sc.Bytes(), &c))
		if len(c.Args) == 0 || strings.HasPrefix(c.Args[0], "-") || c.Args[0] == "show-artifact" {
			continue
		}
		ops = append(ops, c.Prog+" "+c.Args[0])
	}
	return ops
}

type partitions struct {
	Active  string `json:"active"`
	Pending string `json:"pending"`
}

func (d *otaDevice) partitions() partitions {
	p := partitions{Active: "A"}
	b, err := os.ReadFile(filepath.Join(d.menderDir, "partitions.json"))
	if os.IsNotExist(err) {
		return p
	}
	require.NoError(d.t, err)
	require.NoError(d.t, json.Unmarshal(b, &p))
	return p
}

// otaJob is one device's OTA job on the local IoT Core's Jobs service:
// its execution and the service's answers to the device.
type otaJob struct {
	c            *localCloud
	jobID, thing string
	answers      *jobAnswers
}

// startOTAJob creates jobID with doc for the thing serial provisions as
// (a continuous job on the thing group it joins) and observes the
// service's answers to it.
func startOTAJob(t *testing.T, c *localCloud, serial, jobID string, doc map[string]any) *otaJob {
	t.Helper()
	j := &otaJob{c: c, jobID: jobID, thing: c.Core.Names().ThingNamePrefix + serial}
	j.answers = c.observeJobs(t, j.thing)
	c.groupJob(t, jobID, doc)
	return j
}

// execution returns the device's execution of the job.
func (j *otaJob) execution(t *testing.T) simjobs.Execution {
	t.Helper()
	ex, found := j.c.execution(t, j.jobID, j.thing)
	require.True(t, found, "%s has an execution of %s", j.thing, j.jobID)
	return ex
}

// waitTerminal waits until the job execution is terminal on the service.
func waitTerminal(t *testing.T, d *otaDevice, svc *otaJob) simjobs.Execution {
	t.Helper()
	var ex simjobs.Execution
	d.waitFor("a terminal job status", func() bool {
		var found bool
		ex, found = svc.c.execution(t, svc.jobID, svc.thing)
		return found && ex.Status.Terminal()
	})
	return ex
}

// steps lists the distinct OTA steps in the order the service accepted
// them.
func steps(updates []simjobs.Answer) []string {
	var out []string
	for _, u := range updates {
		s := u.StatusDetails["step"]
		if s != "" && (len(out) == 0 || out[len(out)-1] != s) {
			out = append(out, s)
		}
	}
	return out
}

func TestOTA(t *testing.T) {
	agentBin := buildAgent(t)
	fakeMender := buildFakeMender(t)
	const jobID = "rpi-2024-06-dev-1"
	mender := map[string]any{"operation": "mender_install", "url": otaURL}

	// start runs one device against its own local IoT Core, where the
	// job waits for it.
	start := func(t *testing.T, serial string, doc map[string]any, o otaOptions) (*otaDevice, *otaJob, <-chan core.Message) {
		c := startLocalCloud(t, serial)
		progress, stop, err := c.Core.Watch(protocol.DataTopic("+", protocol.KindOTAProgress))
		require.NoError(t, err)
		t.Cleanup(stop)
		svc := startOTAJob(t, c, serial, jobID, doc)
		d := newOTADevice(t, agentBin, fakeMender, c, serial, o)
		d.start()
		return d, svc, progress
	}
	noSecrets := func(t *testing.T, d *otaDevice, svc *otaJob) {
		assert.Empty(t, svc.answers.invalid(), "every request met the AWS statusDetails constraints")
		// Accepted or rejected, no request carries the signature.
		for _, a := range svc.answers.answers() {
			for k, v := range a.StatusDetails {
				assert.NotContains(t, v, otaSecret, "%s (accepted %v): statusDetails[%s] leaks the presigned URL", a.Op, a.Accepted, k)
			}
		}
		assert.NotContains(t, d.logs.String(), otaSecret, "the log leaks the presigned URL")
	}

	t.Run("success: install, reboot, commit", func(t *testing.T) {
		t.Parallel()
		d, svc, progress := start(t, "20000000feed0001", mender, otaOptions{
			healthChecks: `[{"name":"app","command":["/bin/sh","-c","exit 0"],"timeout":"10s"}]`,
		})
		d.waitRebootRequests(1)
		// The reboot is asked for only once the Jobs service accepted the
		// rebooting step.
		ex := svc.execution(t)
		assert.Equal(t, protocol.JobInProgress, ex.Status)
		assert.Equal(t, "rebooting", ex.StatusDetails["step"])
		assert.Equal(t, "1", ex.StatusDetails["attempt"])
		assert.Equal(t, []string{"mender-update install"}, d.menderOps())
		assert.Equal(t, partitions{Active: "A", Pending: "B"}, d.partitions(), "installed, not committed")

		d.reboot()
		ex = waitTerminal(t, d, svc)
		assert.Equal(t, protocol.JobSucceeded, ex.Status, "%v", ex.StatusDetails)
		assert.Equal(t, "committed", ex.StatusDetails["step"])
		assert.Equal(t, "1", ex.StatusDetails["attempt"])
		assert.Equal(t, "mender4", ex.StatusDetails["mender"])
		assert.Equal(t, []string{"mender-update install", "mender-update commit"}, d.menderOps())
		assert.Equal(t, partitions{Active: "B"}, d.partitions())
		assert.Len(t, d.rebootRequests(), 2, "one reboot only")

		updates := svc.answers.updates()
		assert.Equal(t, []string{"downloading", "installing", "rebooting", "verifying", "committed"}, steps(updates))
		noSecrets(t, d, svc)

		// Progress went out through the outbox on dt/fleet/<thing>/ota/progress.
		var last struct {
			JobID   string `json:"jobId"`
			Percent *int   `json:"percent"`
			TS      int64  `json:"ts"`
		}
		// They were queued before the rebooting update (one ordered
		// outbox), so they are all in by now.
		n := 0
	drain:
		for {
			select {
			case m := <-progress:
				assert.Equal(t, protocol.DataTopic(svc.thing, protocol.KindOTAProgress), m.Topic)
				require.NoError(t, json.Unmarshal(m.Payload, &last))
				n++
			case <-time.After(500 * time.Millisecond):
				break drain
			}
		}
		assert.Equal(t, jobID, last.JobID)
		require.NotNil(t, last.Percent, "%d progress messages", n)
		assert.Equal(t, 100, *last.Percent)
		assert.Positive(t, last.TS)
		// 24 progress lines; with progressInterval 1h only the first and
		// the 10% crossings go out.
		assert.GreaterOrEqual(t, n, 2)
		assert.LessOrEqual(t, n, 11, "progress is rate-limited, not one message per mender line")
	})

	t.Run("rollback: the device came back on the old partition", func(t *testing.T) {
		t.Parallel()
		d, svc, _ := start(t, "20000000feed0002", mender, otaOptions{})
		d.waitRebootRequests(1)
		// The new partition did not boot: the bootloader fell back.
		d.setScenario(map[string]any{"artifactSizeMiB": 24, "bootedOld": true})
		d.reboot()
		ex := waitTerminal(t, d, svc)
		assert.Equal(t, protocol.JobFailed, ex.Status)
		assert.Equal(t, "rolled_back", ex.StatusDetails["step"])
		assert.Contains(t, ex.StatusDetails["reason"], "commit failed")
		assert.Contains(t, ex.StatusDetails["reason"], "upgrade_available", "mender's own error line is in the reason")
		assert.Equal(t, []string{"mender-update install", "mender-update commit", "mender-update rollback"}, d.menderOps())
		assert.Equal(t, partitions{Active: "A"}, d.partitions())
		assert.Len(t, d.rebootRequests(), 2, "no reboot after a failed commit: the device already runs the old partition")
		updates := svc.answers.updates()
		assert.Equal(t, []string{"downloading", "installing", "rebooting", "verifying", "rolled_back"}, steps(updates))
		noSecrets(t, d, svc)
	})

	t.Run("health check failure: rollback and reboot into the old partition", func(t *testing.T) {
		t.Parallel()
		d, svc, _ := start(t, "20000000feed0003", mender, otaOptions{
			healthChecks: `[{"name":"connectivity-ok","command":["/bin/sh","-c","exit 0"]},
				{"name":"app-running","command":["/bin/sh","-c","echo app is down >&2; exit 3"],"timeout":"10s"}]`,
		})
		d.waitRebootRequests(1)
		d.reboot()
		// Rolled back on the new partition; the agent reboots into the
		// old one before it reports the failure.
		d.waitRebootRequests(2)
		assert.Equal(t, []string{"mender-update install", "mender-update rollback"}, d.menderOps(), "never committed")
		assert.Equal(t, partitions{Active: "A"}, d.partitions())
		ex := svc.execution(t)
		assert.Equal(t, protocol.JobInProgress, ex.Status)
		d.reboot()
		ex = waitTerminal(t, d, svc)
		assert.Equal(t, protocol.JobFailed, ex.Status)
		assert.Equal(t, "rolled_back", ex.StatusDetails["step"])
		assert.Contains(t, ex.StatusDetails["reason"], "health check failed: app-running")
		assert.Contains(t, ex.StatusDetails["reason"], "app is down")
		assert.Equal(t, []string{"mender-update install", "mender-update rollback"}, d.menderOps())
		assert.Len(t, d.rebootRequests(), 4, "exactly two reboots")
		noSecrets(t, d, svc)
	})

	t.Run("download failure: retried, then committed", func(t *testing.T) {
		t.Parallel()
		d, svc, _ := start(t, "20000000feed0006", mender, otaOptions{
			scenario: map[string]any{"artifactSizeMiB": 24, "installFailures": 1, "failAtPercent": 40},
		})
		d.waitRebootRequests(1)
		updates := svc.answers.updates()
		var retry *simjobs.Answer
		for i := range updates {
			if updates[i].StatusDetails["step"] == "downloading" && updates[i].StatusDetails["attempt"] == "2" {
				retry = &updates[i]
				break
			}
		}
		require.NotNil(t, retry, "attempt 2 was reported: %+v", updates)
		assert.Contains(t, retry.StatusDetails["reason"], "install attempt 1/3 failed")
		assert.Contains(t, retry.StatusDetails["reason"], "Download connection broken")
		d.reboot()
		ex := waitTerminal(t, d, svc)
		assert.Equal(t, protocol.JobSucceeded, ex.Status, "%v", ex.StatusDetails)
		assert.Equal(t, "2", ex.StatusDetails["attempt"])
		// Before each retry a rollback clears whatever the failed attempt
		// left (here nothing: mender exits 2, "no update in progress").
		assert.Equal(t, []string{"mender-update install", "mender-update rollback", "mender-update install", "mender-update commit"}, d.menderOps())
		noSecrets(t, d, svc)
	})

	t.Run("power cut mid-download: the install is retried", func(t *testing.T) {
		t.Parallel()
		d, svc, _ := start(t, "20000000feed0007", mender, otaOptions{
			scenario: map[string]any{"artifactSizeMiB": 24, "hangAtPercent": 50},
		})
		d.waitFor("mender install to hang at 50%", func() bool {
			_, err := os.Stat(filepath.Join(d.menderDir, "install.hanging"))
			return err == nil
		})
		d.setScenario(map[string]any{"artifactSizeMiB": 24})
		d.reboot()
		d.waitRebootRequests(1)
		ex := svc.execution(t)
		assert.Equal(t, "rebooting", ex.StatusDetails["step"])
		assert.Equal(t, "2", ex.StatusDetails["attempt"], "the interrupted install counts as an attempt")
		d.reboot()
		ex = waitTerminal(t, d, svc)
		assert.Equal(t, protocol.JobSucceeded, ex.Status, "%v", ex.StatusDetails)
		assert.Equal(t, "committed", ex.StatusDetails["step"])
		// The half-done installation is rolled back before the new attempt.
		assert.Equal(t, []string{"mender-update install", "mender-update rollback", "mender-update install", "mender-update commit"}, d.menderOps())
		assert.Equal(t, partitions{Active: "B"}, d.partitions())
		noSecrets(t, d, svc)
	})

	t.Run("agent updated mid-OTA: the previous version's state files are taken over", func(t *testing.T) {
		t.Parallel()
		d, svc, _ := start(t, "20000000feed0008", mender, otaOptions{})
		d.waitRebootRequests(1)
		d.powerCut()
		// Rewrite the state as the agent before the one job engine left
		// it: the jobs engine's file without the operation's state, and
		// the OTA state in <stateDir>/ota-state.json.
		stateDir := filepath.Join(d.dir, "state")
		jobsFile := filepath.Join(stateDir, "jobs", "jobs-state.json")
		raw, err := os.ReadFile(jobsFile)
		require.NoError(t, err)
		var st map[string]any
		require.NoError(t, json.Unmarshal(raw, &st))
		ops, _ := st["lastOperations"].(map[string]any)
		rec, _ := ops["mender_install"].(map[string]any)
		require.NotNil(t, rec, "the OTA state is in the jobs engine's state: %s", raw)
		otaState, err := json.MarshalIndent(rec["state"], "", "  ")
		require.NoError(t, err)
		delete(st, "lastOperations")
		job, _ := st["job"].(map[string]any)
		require.NotNil(t, job)
		require.Equal(t, true, job["stepStarted"])
		delete(job, "opState")
		raw, err = json.Marshal(st)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(jobsFile, raw, 0o600))
		legacy := filepath.Join(stateDir, "ota-state.json")
		require.NoError(t, os.WriteFile(legacy, append(otaState, '\n'), 0o600))

		d.setBootID()
		d.start()
		ex := waitTerminal(t, d, svc)
		assert.Equal(t, protocol.JobSucceeded, ex.Status, "%v", ex.StatusDetails)
		assert.Equal(t, "committed", ex.StatusDetails["step"])
		assert.Equal(t, []string{"mender-update install", "mender-update commit"}, d.menderOps(), "not installed again")
		assert.Equal(t, partitions{Active: "B"}, d.partitions())
		updates := svc.answers.updates()
		assert.Equal(t, []string{"downloading", "installing", "rebooting", "verifying", "committed"}, steps(updates))
		assert.NoFileExists(t, legacy, "taken over into the jobs engine's state")
		noSecrets(t, d, svc)
	})

	t.Run("missing url: REJECTED with a reason", func(t *testing.T) {
		t.Parallel()
		d, svc, _ := start(t, "20000000feed0004", map[string]any{"operation": "mender_install"}, otaOptions{})
		ex := waitTerminal(t, d, svc)
		assert.Equal(t, protocol.JobRejected, ex.Status)
		reason := strings.Join(mapValues(ex.StatusDetails), " ")
		assert.Contains(t, reason, "url")
		assert.Contains(t, reason, "missing")
		assert.Empty(t, d.menderOps(), "mender never ran")
		assert.Empty(t, d.rebootRequests())
		assert.Empty(t, svc.answers.invalid())
	})

	t.Run("ota disabled: mender_install is rejected as unknown", func(t *testing.T) {
		t.Parallel()
		d, svc, _ := start(t, "20000000feed0005", mender, otaOptions{disabled: true})
		ex := waitTerminal(t, d, svc)
		assert.Equal(t, protocol.JobRejected, ex.Status)
		assert.Contains(t, strings.Join(mapValues(ex.StatusDetails), " "), "mender_install")
		assert.Empty(t, d.menderOps())
	})
}

func mapValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func TestCheckJobAcceptsMenderInstall(t *testing.T) {
	bin := buildAgent(t)
	td := "../../ota/testdata/"
	// check-job checks hosts against the agent configuration's
	// ota.allowedHosts (the image's: the artifacts bucket host, virtual-
	// hosted and path-style).
	cfgFile := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(cfgFile, []byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t"},
		"ota":{"allowedHosts":["iot-fleet-dev-artifacts.s3.amazonaws.com","s3.amazonaws.com/iot-fleet-dev-artifacts"]}}`), 0o600))
	checkJob := func(files ...string) *exec.Cmd {
		return exec.Command(bin, append([]string{"check-job", "--config", cfgFile}, files...)...)
	}
	for _, file := range []string{"mender-job-substituted.json", "mender-job-template.json", "mender-job-sha256.json"} {
		out, err := checkJob(td + file).CombinedOutput()
		require.NoError(t, err, "%s: %s", file, out)
		assert.Contains(t, string(out), "mender_install")
		assert.NotContains(t, string(out), "0123456789abcdef", "the plan does not print the presigned URL's signature")
	}

	for file, want := range map[string]string{
		"mender-job-invalid-no-url.json":   "url",
		"mender-job-invalid-host.json":     `host "iot-fleet-dev-artifacts.s3.amazonaws.com.evil.example" is not allowed`,
		"mender-job-invalid-sha256.json":   "sha256",
		"mender-job-invalid-template.json": `path "/evil-bucket/rpi-2024.06.mender" is not in the allowed bucket`,
	} {
		out, err := checkJob(td + file).CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%s: %s", file, out)
		assert.Equal(t, 1, ee.ExitCode())
		assert.Contains(t, string(out), "INVALID", file)
		assert.Contains(t, string(out), want, file)
	}

	// A configuration that cannot be read is an error, not a fallback.
	missing := filepath.Join(t.TempDir(), "missing.json")
	out, err := exec.Command(bin, "check-job", "--config", missing, td+"mender-job-substituted.json").CombinedOutput()
	require.Error(t, err, "%s", out)
	assert.Contains(t, string(out), missing)

	// OTA turned off in the configuration: the device would refuse the job.
	offFile := filepath.Join(t.TempDir(), "off.json")
	require.NoError(t, os.WriteFile(offFile, []byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t"},"ota":{"enabled":false}}`), 0o600))
	out, err = exec.Command(bin, "check-job", "--config", offFile, td+"mender-job-substituted.json").CombinedOutput()
	require.Error(t, err, "%s", out)
	assert.Contains(t, string(out), "INVALID")

	schema1 := filepath.Join(t.TempDir(), "steps.json")
	require.NoError(t, os.WriteFile(schema1, []byte(`{"version":"1.0","steps":[
		{"action":{"name":"Check","type":"runCommand","input":{"command":"df,-h"}}},
		{"action":{"name":"Install rootfs","type":"mender_install","input":{"url":"https://iot-fleet-dev-artifacts.s3.amazonaws.com/a.mender","sha256":"`+strings.Repeat("ab", 32)+`"}}}]}`), 0o600))
	out, err = checkJob(schema1).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "Install rootfs")
}
