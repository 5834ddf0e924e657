package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// dcExpect is what the AWS IoT Device Client reports for a job, written
// down from its documentation (the Jobs README: "the last 1024 characters
// ... of standard error", includeStdOut for stdout) and its source
// (JobsFeature::publishUpdateJobExecutionStatus: "reason" always, "stdout"
// only with includeStdOut and non-empty output, "stderr" only when
// non-empty, each the raw tail with its line breaks). A nil stdout or
// stderr means the key is absent. reasonHas is what the Device Client's
// reason says in its words ("Job exited with status: 1"), which the
// agent's reason must say too.
type dcExpect struct {
	status         protocol.JobStatus
	stdout, stderr *string
	reasonHas      string
}

func strp(s string) *string { return &s }

// checkDC compares an execution's statusDetails with what the Device
// Client reports: the same status, the same stdout and stderr (present or
// absent, byte for byte), a reason with the same meaning; the agent's own
// step keys beside them.
func checkDC(t *testing.T, name string, e jobs.Execution, want dcExpect) {
	t.Helper()
	d := e.StatusDetails
	require.Equal(t, want.status, e.Status, "%s: %v", name, d)
	require.NotEmpty(t, d["reason"], "%s: the Device Client always reports a reason", name)
	if want.reasonHas != "" {
		assert.Contains(t, d["reason"], want.reasonHas, name)
	}
	for key, w := range map[string]*string{"stdout": want.stdout, "stderr": want.stderr} {
		got, ok := d[key]
		if w == nil {
			assert.False(t, ok, "%s: the Device Client reports no %s here, got %q", name, key, got)
		} else {
			assert.Equal(t, *w, got, "%s: %s", name, key)
		}
	}
	for _, key := range []string{"stepName", "stepIndex", "stepCount", "stepState"} {
		assert.NotEmpty(t, d[key], "%s: the agent's own key %s", name, key)
	}
	require.NoError(t, jobs.ValidateStatusDetails(d), name)
}

// dcDoc reads one of AWS's sample job documents, unchanged, from the
// project's reference material: shared/reference beside the repository,
// where CI and every developer machine have it (it is not copied into the
// repository). Outside CI, a checkout without it skips the test.
func dcDoc(t *testing.T, name string) string {
	t.Helper()
	root, err := harness.RepoRoot()
	require.NoError(t, err)
	dir := filepath.Join(root, "..", "shared", "reference", "aws-iot-device-client-sample-job-docs")
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) && os.Getenv("CI") == "" {
		t.Skipf("AWS's sample job documents are not at %s (shared/reference beside the repository)", dir)
	}
	require.NoError(t, err)
	return string(b)
}

// installDCHandlers installs the stand-ins for the Device Client's sample
// handlers (e2e/testdata/dc-handlers) into the agent's handler directory,
// with a mirror of the file download-file.json fetches.
func installDCHandlers(t *testing.T, a *harness.Agent) (tarball []byte) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join("testdata", "dc-handlers"))
	require.NoError(t, err)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("testdata", "dc-handlers", e.Name()))
		require.NoError(t, err)
		require.NoError(t, a.InstallHandler(e.Name(), string(b)))
	}
	mirror := filepath.Join(a.HandlerDir(), "mirror")
	require.NoError(t, os.MkdirAll(mirror, 0o700))
	tarball = []byte("stand-in for aws-iot-device-client v1.3.tar.gz\n")
	require.NoError(t, os.WriteFile(filepath.Join(mirror, "v1.3.tar.gz"), tarball, 0o600))
	return tarball
}

// AWS's sample job documents (shared/reference, unchanged from the
// AWS IoT Device Client's repository) run on a real fleet-agent against
// the local IoT Core with stand-ins for its sample handlers, and the
// statusDetails are what the Device Client reports. A reboot step is
// SUCCEEDED once the device is back under a new boot id (the Device
// Client's issue #338 reports it FAILED); an agent restart without a
// reboot during that step fails it with the reason.
func TestDeviceClientSampleJobs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the sample documents run as runAsUser root: run as root")
	}
	f := startFleet(t, serialA, serialB)
	bootID := filepath.Join(t.TempDir(), "boot_id")
	boots := 0
	newBoot := func() {
		boots++
		require.NoError(t, os.WriteFile(bootID, []byte(fmt.Sprintf("dc000000-0000-4000-8000-%012d\n", boots)), 0o600))
	}
	newBoot()
	a, err := f.NewAgent("dc", harness.AgentOptions{Serial: serialA, Configure: func(c *config.Config) {
		c.OTA.BootIDFile = bootID
		// The device is silent while it reboots; the local Jobs minute
		// is a second.
		c.Jobs.ProgressTimeoutMinutes = 60
	}})
	require.NoError(t, err)
	noPath, err := f.NewAgent("no-path", harness.AgentOptions{Serial: serialB, Configure: func(c *config.Config) {
		c.Jobs.PathExecutables = false
	}})
	require.NoError(t, err)
	tarball := installDCHandlers(t, a)
	for _, ag := range []*harness.Agent{a, noPath} {
		keepRunning(t, ag.Serial, ag, 60)
	}
	ctx := waitCtx(t, 3*time.Minute)
	for _, ag := range []*harness.Agent{a, noPath} {
		require.NoError(t, ag.WaitConnected(ctx), ag.LogTail(30))
	}
	// download-file.json writes where it says; the agent's working
	// directory is the test's, where run-shellcommand.json makes newDir.
	downloaded := "/tmp/Downloaded_File.tar.gz"
	_ = os.Remove(downloaded)
	require.NoDirExists(t, "newDir", "left over from an earlier run")
	t.Cleanup(func() {
		_ = os.Remove(downloaded)
		_ = os.Remove("newDir")
	})
	thing := a.ThingName()
	run := func(id, doc string) jobs.Execution {
		t.Helper()
		return runJob(t, f, ctx, id, doc, thing)[thing]
	}

	ok := dcExpect{status: protocol.JobSucceeded}
	checkDC(t, "download-file.json", run("dc-download-file", dcDoc(t, "download-file.json")), ok)
	got, err := os.ReadFile(downloaded)
	require.NoError(t, err)
	require.Equal(t, tarball, got)
	require.NoError(t, os.Remove(downloaded))

	// echo is not in the handler directory: it runs from PATH, as the
	// Device Client runs it.
	checkDC(t, "echo.json", run("dc-echo", dcDoc(t, "echo.json")), ok)

	checkDC(t, "run-shellcommand.json", run("dc-run-shellcommand", dcDoc(t, "run-shellcommand.json")), ok)
	require.DirExists(t, "newDir")

	checkDC(t, "install-packages.json", run("dc-install-packages", dcDoc(t, "install-packages.json")), ok)
	db, err := os.ReadFile(filepath.Join(a.HandlerDir(), "installed-packages"))
	require.NoError(t, err)
	require.Equal(t, "lftp\ndos2unix\n", string(db))
	checkDC(t, "remove-packages.json", run("dc-remove-packages", dcDoc(t, "remove-packages.json")), ok)
	db, err = os.ReadFile(filepath.Join(a.HandlerDir(), "installed-packages"))
	require.NoError(t, err)
	require.Empty(t, string(db))

	checkDC(t, "old-schema/echo.json", run("dc-old-echo", dcDoc(t, "old-schema/echo.json")), ok)
	checkDC(t, "old-schema/download-file.json", run("dc-old-download-file", dcDoc(t, "old-schema/download-file.json")), ok)
	got, err = os.ReadFile(downloaded)
	require.NoError(t, err)
	require.Equal(t, tarball, got)
	checkDC(t, "old-schema/install-packages.json", run("dc-old-install-packages", dcDoc(t, "old-schema/install-packages.json")), ok)

	// Output as the Device Client reports it. echo.json with includeStdOut:
	// the handler's first argument is runAsUser (empty), so echo prints a
	// leading space; the line break is kept.
	var echo map[string]any
	require.NoError(t, json.Unmarshal([]byte(dcDoc(t, "echo.json")), &echo))
	echo["includeStdOut"] = true
	echoOut, err := json.Marshal(echo)
	require.NoError(t, err)
	checkDC(t, "echo.json with includeStdOut", run("dc-echo-stdout", string(echoOut)),
		dcExpect{status: protocol.JobSucceeded, stdout: strp(" Hello IoT World!\n")})
	// The failure the Device Client's Jobs README shows from
	// describe-job-execution: "reason": "Exited with status: 1",
	// "stderr": "mv: cannot stat '/sbin/reboot-invalid': No such file or directory\n".
	mvDoc := `{"version":"1.0","steps":[{"action":{"name":"Move","type":"runCommand","input":{"command":"mv,/sbin/reboot-invalid,` + filepath.Join(t.TempDir(), "reboot") + `"}}}]}`
	checkDC(t, "mv failure", run("dc-mv", mvDoc), dcExpect{status: protocol.JobFailed,
		stderr: strp("mv: cannot stat '/sbin/reboot-invalid': No such file or directory\n"), reasonHas: "exited with status 1"})
	// More than 1024 characters of output: the last 1024, raw.
	var seq strings.Builder
	for i := 1; i <= 400; i++ {
		fmt.Fprintf(&seq, "%d\n", i)
	}
	seqDoc := `{"version":"1.0","includeStdOut":true,"steps":[{"action":{"name":"Count","type":"runCommand","input":{"command":"seq,1,400"}}}]}`
	checkDC(t, "seq 1 400", run("dc-seq", seqDoc), dcExpect{status: protocol.JobSucceeded, stdout: strp(seq.String()[seq.Len()-1024:])})

	// With jobs.pathExecutables false, echo.json fails naming the setting;
	// nothing from PATH runs.
	e := runJob(t, f, ctx, "dc-echo-no-path", dcDoc(t, "echo.json"), noPath.ThingName())[noPath.ThingName()]
	require.Equal(t, protocol.JobFailed, e.Status, "%v", e.StatusDetails)
	require.Equal(t, `step 1/1 "Echo Messages" failed: handler "echo" is not in the handler directory, and executables from PATH are disabled on this device (agent configuration jobs.pathExecutables is false)`, e.StatusDetails["reason"])

	// reboot.json: the step asks for a reboot and never returns; the
	// reboot is played (the agent killed with the step, a new boot id, the
	// agent started again).
	reboot := func(id string, changeBootID bool) jobs.Execution {
		t.Helper()
		requested := filepath.Join(a.HandlerDir(), "reboot-requested")
		_ = os.Remove(requested)
		_, err := f.Stack.Core.CreateJob(ctx, jobs.CreateJobInput{JobID: id, Things: []string{thing}, Document: json.RawMessage(dcDoc(t, "reboot.json"))})
		require.NoError(t, err)
		var pid int
		require.NoError(t, harness.Poll(ctx, "reboot requested", func() bool {
			b, err := os.ReadFile(requested)
			if err != nil || !strings.HasSuffix(string(b), "\n") {
				return false
			}
			pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil
		}))
		// The step was recorded as started (and reported) before the
		// reboot.
		require.NoError(t, harness.Poll(ctx, "reboot step reported running", func() bool {
			e, err := f.Stack.Core.Jobs().Execution(id, thing)
			return err == nil && e.StatusDetails["stepName"] == "Reboot Device" && e.StatusDetails["stepState"] == "running"
		}))
		// A reboot ends every process: the agent's group and the step's
		// own group (the handler, by the PID it wrote).
		require.NoError(t, a.Kill())
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if changeBootID {
			newBoot()
		}
		require.NoError(t, a.Start())
		execs, err := f.Stack.Core.WaitForExecutions(ctx, id)
		require.NoError(t, err)
		return execs[0]
	}
	e = reboot("dc-reboot", true)
	checkDC(t, "reboot.json", e, ok)
	assert.Equal(t, "all 1 step(s) succeeded", e.StatusDetails["reason"])
	assert.Equal(t, "succeeded", e.StatusDetails["stepState"])

	e = reboot("dc-restart-without-reboot", false)
	checkDC(t, "reboot.json, agent restarted without a reboot", e, dcExpect{status: protocol.JobFailed})
	assert.Equal(t, `step 1/1 "Reboot Device" failed: agent restarted during step (no reboot: the boot id is unchanged)`, e.StatusDetails["reason"])
	require.NoError(t, a.WaitConnected(ctx))
}
