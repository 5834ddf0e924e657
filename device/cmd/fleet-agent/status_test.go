package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/store"
)

// fleet-agent status against the state directory of a real agent: before
// it ever ran, while it runs in the middle of an OTA job (waiting for the
// reboot it asked for), and after it was killed (-9, the power cut).
func TestStatus(t *testing.T) {
	agentBin := buildAgent(t)
	fakeMender := buildFakeMender(t)
	const serial, jobID = "20000000feed0a51", "ota-status-1"
	c := startLocalCloud(t, serial)
	thing := startOTAJob(t, c, serial, jobID, map[string]any{"operation": "mender_install", "url": otaURL}).thing
	d := newOTADevice(t, agentBin, fakeMender, c, serial, otaOptions{})

	status := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(agentBin, append([]string{"status", "--config", d.cfgFile}, args...)...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		return string(out)
	}
	statusJSON := func() statusReport {
		t.Helper()
		var r statusReport
		out := status("-o", "json")
		require.NoError(t, json.Unmarshal([]byte(out), &r), out)
		return r
	}

	// Before the first start: the state directory is empty.
	require.NoError(t, os.MkdirAll(filepath.Join(d.dir, "state"), 0o700))
	r := statusJSON()
	assert.False(t, r.Agent.Running)
	assert.Zero(t, r.Agent.PID)
	assert.Nil(t, r.Identity)
	require.NotNil(t, r.Provisioning)
	assert.Equal(t, "unknown", r.Connection.State)
	assert.Contains(t, status(), "agent               never ran with this state directory")

	d.start()
	d.waitRebootRequests(1)
	st, err := store.Open(filepath.Join(d.dir, "state"))
	require.NoError(t, err)
	id, found, err := st.Identity()
	require.NoError(t, err)
	require.True(t, found)

	// Running, mid-OTA: the job's step and the OTA step.
	var text string
	d.waitFor("status showing the connection and the OTA step", func() bool {
		r = statusJSON()
		return r.Connection.State == "connected" && r.Job != nil && r.Job.Details["step"] == "rebooting"
	})
	assert.True(t, r.Agent.Running)
	assert.Equal(t, d.cmd.Process.Pid, r.Agent.PID)
	assert.Equal(t, "running", r.Agent.Phase)
	require.NotNil(t, r.Identity)
	assert.Equal(t, thing, r.Identity.ThingName)
	assert.Equal(t, serial, r.Identity.Serial)
	assert.Equal(t, id.CertificateID, r.Identity.CertificateID)
	assert.True(t, r.Identity.CertNotAfter.After(time.Now()), "%v", r.Identity.CertNotAfter)
	assert.Empty(t, r.Identity.CertError)
	assert.Nil(t, r.Provisioning, "provisioned: no provisioning state left")
	assert.Positive(t, r.Connection.Connections)
	require.NotNil(t, r.Job)
	assert.Equal(t, jobID, r.Job.JobID)
	assert.Equal(t, 1, r.Job.StepIndex)
	require.NotNil(t, r.OTA)
	assert.Equal(t, jobID, r.OTA.JobID)
	assert.Equal(t, "rebooting", r.OTA.Step)
	assert.GreaterOrEqual(t, r.Outbox.Pending, 0)
	names := map[string]bool{}
	for _, l := range r.Agent.Loops {
		names[l.Name] = true
		assert.False(t, l.Overdue, l.Name)
	}
	assert.Equal(t, map[string]bool{"outbox": true, "connection": true, "shadow": true, "jobs": true, "ssm": true, "rotation": true}, names)

	text = status()
	t.Logf("fleet-agent status:\n%s", text)
	for _, want := range []string{
		"running (pid " + strconv.Itoa(d.cmd.Process.Pid) + ", version v9.8.7-test, running, since ",
		"loops               outbox ok, connection ok, shadow ok, jobs ok, ssm ok, rotation ok",
		"thing               " + thing,
		"serial              " + serial,
		"certificate         " + id.CertificateID,
		"connected since ",
		"job                 job " + jobID + " step 1/1",
		"step=rebooting",
		"ota                 job " + jobID + " step rebooting (IN_PROGRESS), attempt 1",
		"outbox              ",
	} {
		assert.Contains(t, text, want)
	}
	assert.Regexp(t, regexp.MustCompile(`certificate expiry  \d{4}-\d\d-\d\dT\S+Z \(\S+ left\)`), text)

	// Killed: the files still tell the job and the OTA step; the agent
	// and its connection are reported as not running / unknown.
	d.powerCut()
	r = statusJSON()
	assert.False(t, r.Agent.Running)
	assert.Equal(t, "unknown", r.Connection.State)
	require.NotNil(t, r.OTA)
	assert.Equal(t, "rebooting", r.OTA.Step)
	require.NotNil(t, r.Job)
	assert.Equal(t, jobID, r.Job.JobID)
	text = status()
	assert.Contains(t, text, "not running (last: running, pid ")
	assert.Contains(t, text, "unknown (the agent does not run)")

	// Bad invocations say what is wrong.
	out, err := exec.Command(agentBin, "status", "--state-dir", filepath.Join(d.dir, "missing")).CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 1, ee.ExitCode())
	assert.Contains(t, string(out), "state directory: stat ")
	out, err = exec.Command(agentBin, "status", "--config", d.cfgFile, "-o", "yaml").CombinedOutput()
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 2, ee.ExitCode())
	assert.Contains(t, string(out), `-o "yaml": want text or json`)
}
