// Package e2e runs real fleet-agent processes against the local IoT Core
// (sim/stack: the broker enforcing the stack's IoT policies, fleet
// provisioning with the real pre-provisioning hook, the Jobs service, and
// the allowlist sync revoking devices).
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// agentBin is the fleet-agent binary built once by TestMain.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "e2e-agent-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	agentBin, err = harness.BuildAgent(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	serialA   = "10000000000000a1"
	serialB   = "10000000000000b2"
	serialC   = "10000000000000c3"
	unknownSN = "10000000000000ff"
)

func allowlistOf(serials ...string) string {
	return "# e2e allowlist\n" + strings.Join(serials, "\n") + "\n"
}

// startFleet starts the local stack with serials allowlisted.
func startFleet(t *testing.T, serials ...string) *harness.Fleet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := harness.Start(ctx, harness.Options{
		Dir: t.TempDir(), AgentBin: agentBin, Allowlist: allowlistOf(serials...),
		JobMinute: time.Second,
	})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// startAgent starts an agent and stops it at cleanup (showing its log tail
// when the test failed).
func startAgent(t *testing.T, f *harness.Fleet, name, serial string) *harness.Agent {
	t.Helper()
	a, err := f.NewAgent(name, harness.AgentOptions{Serial: serial})
	require.NoError(t, err)
	keepRunning(t, name, a, 40)
	return a
}

// keepRunning starts a prepared agent and stops it when the test ends,
// showing the last tail lines of its log if the test failed.
func keepRunning(t *testing.T, name string, a *harness.Agent, tail int) {
	t.Helper()
	require.NoError(t, a.Start())
	t.Cleanup(func() {
		_ = a.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("agent %s log tail:\n%s", name, a.LogTail(tail))
		}
	})
}

func waitCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestProvisioningAdmitsAllowlistedSerialsOnly(t *testing.T) {
	f := startFleet(t, serialA, serialB)
	a := startAgent(t, f, "a", serialA)
	b := startAgent(t, f, "b", serialB)
	stranger := startAgent(t, f, "stranger", unknownSN)

	ctx := waitCtx(t, 90*time.Second)
	for _, ag := range []*harness.Agent{a, b} {
		require.NoError(t, ag.WaitConnected(ctx), ag.LogTail(30))

		id, found, err := ag.Identity()
		require.NoError(t, err)
		require.True(t, found)
		require.Equal(t, ag.ThingName(), id.ThingName)
		fi, err := os.Stat(filepath.Join(ag.StateDir, id.KeyFile))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "device key is owner-only")

		// The cloud side agrees: thing in the group, certificate recorded
		// in the device registry by the real hook.
		th, err := f.Stack.Core.Registry().Thing(ag.ThingName())
		require.NoError(t, err)
		require.Contains(t, th.Groups, f.Stack.Core.Names().ThingGroup)
		require.Equal(t, []string{id.CertificateID}, th.Principals)
		rec, err := f.Stack.Registry.Get(ctx, ag.Serial)
		require.NoError(t, err)
		require.Equal(t, "provisioned", string(rec.State))
		require.Equal(t, id.CertificateID, rec.CertificateID)

		// The private key never appears in the agent's output.
		key, err := os.ReadFile(filepath.Join(ag.StateDir, id.KeyFile))
		require.NoError(t, err)
		require.NotContains(t, ag.Log(), strings.TrimSpace(strings.Split(string(key), "\n")[1]))
	}

	// The unknown serial is denied by the hook, backs off and retries, and
	// never gets a thing or a connection as a device.
	require.NoError(t, harness.Poll(ctx, "two denials", func() bool {
		return strings.Count(stranger.Log(), "AccessDenied") >= 2
	}), stranger.LogTail(30))
	_, err := f.Stack.Core.Registry().Thing(stranger.ThingName())
	require.Error(t, err, "no thing for a denied serial")
	require.False(t, f.Connected(stranger.ThingName()))
	_, found, err := stranger.Identity()
	require.NoError(t, err)
	require.False(t, found)
}

func TestRemovedFromAllowlistIsRevokedAndRefused(t *testing.T) {
	f := startFleet(t, serialA, serialB)
	a := startAgent(t, f, "a", serialA)
	b := startAgent(t, f, "b", serialB)
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	require.NoError(t, b.WaitConnected(ctx), b.LogTail(30))
	idB, _, err := b.Identity()
	require.NoError(t, err)

	// The operator removes B from allowlist.txt and deploys.
	res, err := f.Stack.DeployAllowlist(ctx, []byte(allowlistOf(serialA)))
	require.NoError(t, err)
	require.Equal(t, 1, res.Revoked)

	cert, err := f.Stack.Core.Registry().Certificate(idB.CertificateID)
	require.NoError(t, err)
	require.Equal(t, "REVOKED", string(cert.Status))
	_, err = f.Stack.Core.Registry().Thing(b.ThingName())
	require.Error(t, err, "the thing is deleted")
	rec, err := f.Stack.Registry.Get(ctx, serialB)
	require.NoError(t, err)
	require.Equal(t, "revoked", string(rec.State))

	// B is disconnected and stays out; A is untouched.
	require.NoError(t, harness.Poll(ctx, "B disconnected", func() bool { return !f.Connected(b.ThingName()) }))
	time.Sleep(2 * time.Second) // several reconnect attempts at the 1 s max backoff
	require.False(t, f.Connected(b.ThingName()), "a revoked certificate must not connect again")
	require.True(t, f.Connected(a.ThingName()))
}

// createJob creates a job for things and waits for every execution to end.
func runJob(t *testing.T, f *harness.Fleet, ctx context.Context, jobID string, doc string, things ...string) map[string]jobs.Execution {
	t.Helper()
	in := jobs.CreateJobInput{JobID: jobID, Document: json.RawMessage(doc)}
	if len(things) == 0 {
		in.Groups = []string{f.Stack.Core.Names().ThingGroup}
	} else {
		in.Things = things
	}
	_, err := f.Stack.Core.CreateJob(ctx, in)
	require.NoError(t, err)
	execs, err := f.Stack.Core.WaitForExecutions(ctx, jobID)
	require.NoError(t, err)
	out := map[string]jobs.Execution{}
	for _, e := range execs {
		out[e.ThingName] = e
	}
	return out
}

const multiStepJob = `{
  "version": "1.0",
  "includeStdOut": "true",
  "steps": [
    {"action": {"name": "greet", "type": "runCommand",
                "input": {"command": "/bin/echo,hello\\, fleet"}}},
    {"action": {"name": "optional-check", "type": "runHandler", "ignoreStepFailure": "true",
                "input": {"handler": "fail.sh", "args": ["x"]}}}
  ],
  "finalStep": {"action": {"name": "report", "type": "runHandler",
                           "input": {"handler": "report.sh", "args": ["done"]}}}
}`

func TestJobAcrossGroupWithIgnoredFailureAndFinalStep(t *testing.T) {
	f := startFleet(t, serialA, serialB, serialC)
	var agents []*harness.Agent
	for i, sn := range []string{serialA, serialB, serialC} {
		a, err := f.NewAgent(fmt.Sprintf("d%d", i), harness.AgentOptions{Serial: sn})
		require.NoError(t, err)
		require.NoError(t, a.InstallHandler("fail.sh", "#!/bin/sh\necho 'check failed' >&2\nexit 3\n"))
		require.NoError(t, a.InstallHandler("report.sh", "#!/bin/sh\necho \"report user=[$1] arg=$2\"\n"))
		require.NoError(t, a.Start())
		t.Cleanup(func() { _ = a.Stop(10 * time.Second) })
		agents = append(agents, a)
	}
	ctx := waitCtx(t, 2*time.Minute)
	for _, a := range agents {
		require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))
	}

	execs := runJob(t, f, ctx, "multi-step", multiStepJob)
	require.Len(t, execs, 3)
	for _, a := range agents {
		e := execs[a.ThingName()]
		require.Equal(t, protocol.JobSucceeded, e.Status, "%s: %v\n%s", a.ThingName(), e.StatusDetails, a.LogTail(30))
		require.Contains(t, e.StatusDetails["reason"], "1 step failure(s) ignored")
		require.Contains(t, e.StatusDetails["reason"], "optional-check")
		// The final step ran, with the Device Client's argument convention
		// (runAsUser first, empty here).
		require.Contains(t, e.StatusDetails["stdout"], "report user=[] arg=done")
	}
}

func TestHandlerWithWrongPermissionsFailsTheJob(t *testing.T) {
	f := startFleet(t, serialA)
	a, err := f.NewAgent("a", harness.AgentOptions{Serial: serialA})
	require.NoError(t, err)
	require.NoError(t, a.InstallHandler("open.sh", "#!/bin/sh\necho should-not-run\n"))
	require.NoError(t, os.Chmod(filepath.Join(a.HandlerDir(), "open.sh"), 0o755))
	require.NoError(t, a.Start())
	t.Cleanup(func() { _ = a.Stop(10 * time.Second) })
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))

	execs := runJob(t, f, ctx, "bad-perms", `{"version":"1.0","steps":[{"action":{"name":"open","type":"runHandler","input":{"handler":"open.sh"}}}]}`, a.ThingName())
	e := execs[a.ThingName()]
	require.Equal(t, protocol.JobFailed, e.Status)
	require.Contains(t, e.StatusDetails["reason"], "0755")
	require.NotContains(t, a.Log(), "should-not-run")
}

func TestMalformedJobIsRejectedAndTheAgentGoesOn(t *testing.T) {
	f := startFleet(t, serialA)
	a := startAgent(t, f, "a", serialA)
	ctx := waitCtx(t, 90*time.Second)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))

	execs := runJob(t, f, ctx, "malformed", `{"version":"1.0","steps":[{"action":{"name":"x","type":"runCommand","ignoreStepFailure":true,"input":{"command":"/bin/true"}}}]}`, a.ThingName())
	e := execs[a.ThingName()]
	require.Equal(t, protocol.JobRejected, e.Status)
	require.Contains(t, e.StatusDetails["reason"], "ignoreStepFailure")

	execs = runJob(t, f, ctx, "after-malformed", `{"version":"1.0","steps":[{"action":{"name":"ok","type":"runCommand","input":{"command":"/bin/true"}}}]}`, a.ThingName())
	require.Equal(t, protocol.JobSucceeded, execs[a.ThingName()].Status)
	require.True(t, a.Running())
}

func TestKill9MidStepThenRestart(t *testing.T) {
	f := startFleet(t, serialA)
	a, err := f.NewAgent("a", harness.AgentOptions{Serial: serialA})
	require.NoError(t, err)
	marker := filepath.Join(a.Dir, "step-started")
	require.NoError(t, a.InstallHandler("slow.sh", "#!/bin/sh\ntouch "+marker+"\nsleep 60\n"))
	require.NoError(t, a.Start())
	t.Cleanup(func() { _ = a.Stop(10 * time.Second) })
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))

	_, err = f.Stack.Core.CreateJob(ctx, jobs.CreateJobInput{JobID: "killed", Things: []string{a.ThingName()},
		Document: json.RawMessage(`{"version":"1.0","steps":[{"action":{"name":"slow","type":"runHandler","input":{"handler":"slow.sh"}}}]}`)})
	require.NoError(t, err)
	require.NoError(t, harness.Poll(ctx, "step started", func() bool { _, err := os.Stat(marker); return err == nil }))

	require.NoError(t, a.Kill())
	require.NoError(t, a.Start())

	execs, err := f.Stack.Core.WaitForExecutions(ctx, "killed")
	require.NoError(t, err)
	require.Equal(t, protocol.JobFailed, execs[0].Status)
	require.Contains(t, execs[0].StatusDetails["reason"], "agent restarted during step")

	// The agent is healthy afterwards and takes the next job.
	next := runJob(t, f, ctx, "after-kill", `{"version":"1.0","steps":[{"action":{"name":"ok","type":"runCommand","input":{"command":"/bin/true"}}}]}`, a.ThingName())
	require.Equal(t, protocol.JobSucceeded, next[a.ThingName()].Status)
}

func TestBrokerRestartMidJob(t *testing.T) {
	f := startFleet(t, serialA)
	a, err := f.NewAgent("a", harness.AgentOptions{Serial: serialA})
	require.NoError(t, err)
	marker := filepath.Join(a.Dir, "step-started")
	require.NoError(t, a.InstallHandler("wait.sh", "#!/bin/sh\ntouch "+marker+"\nsleep 3\necho finished\n"))
	require.NoError(t, a.Start())
	t.Cleanup(func() { _ = a.Stop(10 * time.Second) })
	ctx := waitCtx(t, 2*time.Minute)
	require.NoError(t, a.WaitConnected(ctx), a.LogTail(30))

	_, err = f.Stack.Core.CreateJob(ctx, jobs.CreateJobInput{JobID: "restart", Things: []string{a.ThingName()},
		Document: json.RawMessage(`{"version":"1.0","includeStdOut":true,"steps":[{"action":{"name":"wait","type":"runHandler","input":{"handler":"wait.sh"}}}]}`)})
	require.NoError(t, err)
	require.NoError(t, harness.Poll(ctx, "step started", func() bool { _, err := os.Stat(marker); return err == nil }))

	require.NoError(t, f.Stack.Core.RestartBroker())

	execs, err := f.Stack.Core.WaitForExecutions(ctx, "restart")
	require.NoError(t, err)
	require.Equal(t, protocol.JobSucceeded, execs[0].Status, "%v\n%s", execs[0].StatusDetails, a.LogTail(30))
	require.Contains(t, execs[0].StatusDetails["stdout"], "finished")
	require.NoError(t, a.WaitConnected(ctx))
}
