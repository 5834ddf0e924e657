package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// Job documents a broken or malicious operator could send: one that cannot
// be decoded (a number beyond float64) and one with a key given twice (a
// reviewer reads the first "command", encoding/json would run the last).
// The real agent rejects each at once with the problem named, runs neither,
// and goes on to the next queued job.
func TestAdversaryJobsUndecodableAndDuplicateKeyDocuments(t *testing.T) {
	f := startFleet(t, serialA)
	a := startAgent(t, f, "a", serialA)
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))

	hidden := filepath.Join(a.Dir, "hidden-command-ran")
	number := filepath.Join(a.Dir, "number-job-ran")
	after := filepath.Join(a.Dir, "next-job-ran")
	docs := []struct{ id, doc string }{
		{"huge-number", `{"version":"1.0","steps":[{"action":{"name":"touch","type":"runCommand","input":{"command":"/usr/bin/touch,` + number + `"}}}], "x": 1e999}`},
		{"duplicate-key", `{"version":"1.0","steps":[{"action":{"name":"harmless","type":"runCommand",
			"input":{"command":"/bin/true","command":"/usr/bin/touch,` + hidden + `"}}}]}`},
		{"next", `{"version":"1.0","steps":[{"action":{"name":"touch","type":"runCommand","input":{"command":"/usr/bin/touch,` + after + `"}}}]}`},
	}
	// All three are queued before the agent takes the first one.
	for _, d := range docs {
		_, err := f.Stack.Core.CreateJob(ctx, jobs.CreateJobInput{JobID: d.id, Things: []string{a.ThingName()}, Document: json.RawMessage(d.doc)})
		require.NoError(t, err)
	}
	status := map[string]jobs.Execution{}
	for _, d := range docs {
		execs, err := f.Stack.Core.WaitForExecutions(ctx, d.id)
		require.NoError(t, err, a.LogTail(40))
		status[d.id] = execs[0]
	}

	e := status["huge-number"]
	require.Equal(t, protocol.JobRejected, e.Status, "%v", e.StatusDetails)
	require.Equal(t, "invalid job document: x: the number 1e999 cannot be decoded: it is outside the range of a 64-bit floating-point number", e.StatusDetails["reason"])
	e = status["duplicate-key"]
	require.Equal(t, protocol.JobRejected, e.Status, "%v", e.StatusDetails)
	require.Contains(t, e.StatusDetails["reason"], `invalid job document: steps[0].action.input.command: duplicate key "command"`)
	e = status["next"]
	require.Equal(t, protocol.JobSucceeded, e.Status, "%v\n%s", e.StatusDetails, a.LogTail(40))

	require.NoFileExists(t, number)
	require.NoFileExists(t, hidden)
	require.FileExists(t, after)
	require.True(t, a.Running())
}

// With jobs.runCommand.enabled false in the agent's configuration a
// runCommand step is refused before any step of its job runs; with
// jobs.runCommand.allowedExecutables only the listed programs run.
func TestAdversaryJobsRunCommandSwitch(t *testing.T) {
	f := startFleet(t, serialA, serialB)
	off, err := f.NewAgent("off", harness.AgentOptions{Serial: serialA, Configure: func(c *config.Config) {
		c.Jobs.RunCommand.Enabled = false
	}})
	require.NoError(t, err)
	only, err := f.NewAgent("only", harness.AgentOptions{Serial: serialB, Configure: func(c *config.Config) {
		c.Jobs.RunCommand.AllowedExecutables = []string{"/usr/bin/touch"}
	}})
	require.NoError(t, err)
	firstStep := filepath.Join(off.Dir, "first-step-ran")
	require.NoError(t, off.InstallHandler("first.sh", "#!/bin/sh\ntouch "+firstStep+"\n"))
	require.NoError(t, off.InstallHandler("ok.sh", "#!/bin/sh\necho handler-ok\n"))
	for _, a := range []*harness.Agent{off, only} {
		keepRunning(t, a.Serial, a, 40)
	}
	ctx := waitCtx(t, 2*time.Minute)
	for _, a := range []*harness.Agent{off, only} {
		require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	}

	// runCommand disabled: the job is rejected naming the setting, and its
	// runHandler first step never ran; runHandler jobs still run.
	cmdRan := filepath.Join(off.Dir, "command-ran")
	execs := runJob(t, f, ctx, "disabled", `{"version":"1.0","steps":[
		{"action":{"name":"first","type":"runHandler","input":{"handler":"first.sh"}}},
		{"action":{"name":"cmd","type":"runCommand","input":{"command":"/usr/bin/touch,`+cmdRan+`"}}}]}`, off.ThingName())
	e := execs[off.ThingName()]
	require.Equal(t, protocol.JobRejected, e.Status, "%v", e.StatusDetails)
	require.Equal(t, "invalid job document: steps[1].action.type: runCommand steps are disabled on this device (agent configuration jobs.runCommand.enabled is false)", e.StatusDetails["reason"])
	require.NoFileExists(t, firstStep)
	require.NoFileExists(t, cmdRan)
	execs = runJob(t, f, ctx, "handler", `{"version":"1.0","includeStdOut":true,"steps":[{"action":{"name":"ok","type":"runHandler","input":{"handler":"ok.sh"}}}]}`, off.ThingName())
	require.Equal(t, protocol.JobSucceeded, execs[off.ThingName()].Status, "%v", execs[off.ThingName()].StatusDetails)
	require.Contains(t, execs[off.ThingName()].StatusDetails["stdout"], "handler-ok")

	// Allowlist: another program is refused, naming it; the listed one runs.
	removed := filepath.Join(only.Dir, "keep")
	require.NoError(t, os.WriteFile(removed, nil, 0o600))
	execs = runJob(t, f, ctx, "not-listed", `{"version":"1.0","steps":[{"action":{"name":"rm","type":"runCommand","input":{"command":"/bin/rm,-f,`+removed+`"}}}]}`, only.ThingName())
	e = execs[only.ThingName()]
	require.Equal(t, protocol.JobRejected, e.Status, "%v", e.StatusDetails)
	require.Equal(t, `invalid job document: steps[0].action.input.command: executable "/bin/rm" is not in jobs.runCommand.allowedExecutables of this device (allowed: /usr/bin/touch)`, e.StatusDetails["reason"])
	require.FileExists(t, removed)
	listed := filepath.Join(only.Dir, "listed-ran")
	execs = runJob(t, f, ctx, "listed", `{"version":"1.0","steps":[{"action":{"name":"touch","type":"runCommand","input":{"command":"/usr/bin/touch,`+listed+`"}}}]}`, only.ThingName())
	require.Equal(t, protocol.JobSucceeded, execs[only.ThingName()].Status, "%v", execs[only.ThingName()].StatusDetails)
	require.FileExists(t, listed)
}
