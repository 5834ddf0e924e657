package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/device/jobs/runner"
	"github.com/iot-fleet/iot-fleet/internal/mqtttopic"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

const thing = "dev-0123456789abcdef"

type harness struct {
	t          *testing.T
	svc        *service
	tr         *transport
	stateDir   string
	handlerDir string
	work       string // scratch dir for handler side effects
	ops        *Registry
	cfg        func(*Config)
	engine     *Engine
	stop       func()
	// bootIDFile is the engine's boot id; reboot() changes it.
	bootIDFile string
	boots      int
}

// reboot plays a reboot of the device while the engine is stopped: a new
// boot id.
func (h *harness) reboot() {
	h.t.Helper()
	h.boots++
	require.NoError(h.t, os.WriteFile(h.bootIDFile, []byte(fmt.Sprintf("b00710d0-0000-4000-8000-%012d\n", h.boots)), 0o600))
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	tr := newTransport()
	h := &harness{t: t, svc: newService(t, tr), tr: tr, stateDir: t.TempDir(), work: t.TempDir(), ops: NewRegistry()}
	h.handlerDir = filepath.Join(t.TempDir(), "handlers")
	require.NoError(t, os.Mkdir(h.handlerDir, 0o700))
	h.bootIDFile = filepath.Join(t.TempDir(), "boot_id")
	h.reboot()
	t.Cleanup(func() {
		if h.stop != nil {
			h.stop()
		}
		assert.Empty(t, h.svc.rejectedForDetails(), "requests the service rejected for their statusDetails (every resend would be rejected too)")
	})
	return h
}

func (h *harness) handler(name, body string, mode os.FileMode) {
	h.t.Helper()
	p := filepath.Join(h.handlerDir, name)
	require.NoError(h.t, os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o600))
	require.NoError(h.t, os.Chmod(p, mode))
}

// start constructs an engine on the harness's state dir, runs it and
// connects it.
func (h *harness) start() *Engine {
	h.t.Helper()
	logger := slog.New(slog.NewTextHandler(testWriter{h.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := runner.New(runner.Config{HandlerDir: h.handlerDir, KillGrace: 200 * time.Millisecond,
		Env: []string{"WORK=" + h.work, "PATH=" + os.Getenv("PATH")}, Logger: logger})
	require.NoError(h.t, err)
	cfg := Config{ThingName: thing, StateDir: h.stateDir, Publisher: h.tr, Runner: r, Operations: h.ops,
		HandlerDir: h.handlerDir, BootIDFile: h.bootIDFile, ProgressTimeoutMinutes: 3, HeartbeatInterval: time.Hour, ResponseTimeout: 2 * time.Second,
		Logger: logger}
	if h.cfg != nil {
		h.cfg(&cfg)
	}
	e, err := New(cfg)
	require.NoError(h.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.Run(ctx)
	}()
	h.tr.setEngine(e)
	h.engine = e
	h.stop = func() {
		cancel()
		<-done
		// Run has returned: its fields can be read.
		assert.Zero(h.t, e.badTransitions, "transitions the executor's table refused (see the log)")
		h.tr.setEngine(nil)
		h.stop = nil
	}
	h.connect()
	return e
}

func (h *harness) connect() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(h.t, h.engine.OnConnect(ctx))
}

// kill stops the engine as a crash would: the Run loop ends, the running
// step's process group is killed and nothing more is recorded.
func (h *harness) kill() {
	h.stop()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) waitStatus(jobID string, status protocol.JobStatus) execRecord {
	h.t.Helper()
	waitFor(h.t, jobID+" "+string(status), func() bool { return h.svc.get(jobID).Status == status })
	return h.svc.get(jobID)
}

// waitIdle waits until the engine has no job and has asked for the next.
func (h *harness) waitIdle() {
	h.t.Helper()
	waitFor(h.t, "engine idle", func() bool {
		st, err := loadState(h.stateDir)
		return err == nil && st.Job == nil
	})
}

func (h *harness) waitFile(name string) {
	h.t.Helper()
	waitFor(h.t, "file "+name, func() bool {
		_, err := os.Stat(filepath.Join(h.work, name))
		return err == nil
	})
}

func (h *harness) touchWork(name string) {
	require.NoError(h.t, os.WriteFile(filepath.Join(h.work, name), nil, 0o600))
}

func (h *harness) readWork(name string) string {
	data, _ := os.ReadFile(filepath.Join(h.work, name))
	return string(data)
}

func TestSubscriptionsCoverResponses(t *testing.T) {
	e, err := New(Config{ThingName: thing, StateDir: t.TempDir(), Publisher: newTransport(), Runner: &runner.Runner{}})
	require.NoError(t, err)
	subs := e.Subscriptions()
	for _, topic := range []string{
		protocol.JobsNotifyNextTopic(thing),
		protocol.Accepted(protocol.JobsStartNextTopic(thing)),
		protocol.Rejected(protocol.JobsStartNextTopic(thing)),
		protocol.Accepted(protocol.JobsUpdateTopic(thing, "job-1")),
		protocol.Rejected(protocol.JobsUpdateTopic(thing, "job-1")),
		protocol.Accepted(protocol.JobsDescribeTopic(thing, "job-1")),
		protocol.Rejected(protocol.JobsDescribeTopic(thing, "job-1")),
	} {
		matched := false
		for _, f := range subs {
			matched = matched || mqtttopic.Match(f, topic)
		}
		assert.True(t, matched, topic)
	}
	// GetPendingJobExecutions' responses are not ours.
	for _, f := range subs {
		assert.False(t, mqtttopic.Match(f, protocol.Accepted(protocol.JobsGetPendingTopic(thing))), f)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	_, err := New(Config{})
	assert.ErrorContains(t, err, "ThingName")
	_, err = New(Config{ThingName: "x"})
	assert.ErrorContains(t, err, "StateDir")
	_, err = New(Config{ThingName: "x", StateDir: t.TempDir()})
	assert.ErrorContains(t, err, "Publisher")
}

func TestMultiStepJobWithIgnoredFailureAndFinalStep(t *testing.T) {
	h := newHarness(t)
	h.handler("first.sh", `echo "first user=[$1] args=$2" >> "$WORK/log"; echo "first done"`, 0o700)
	h.handler("final.sh", `echo "final" >> "$WORK/log"`, 0o700)
	h.start()
	h.svc.addJob(t, "job-1", `{"version":"1.0","includeStdOut":true,"steps":[
		{"action":{"name":"first","type":"runHandler","input":{"handler":"first.sh","args":["a1"]}}},
		{"action":{"name":"breaks","type":"runCommand","ignoreStepFailure":"true","input":{"command":"sh,-c,echo boom >&2; exit 4"}}}],
		"finalStep":{"action":{"name":"cleanup","type":"runHandler","input":{"handler":"final.sh"}}}}`)

	ex := h.waitStatus("job-1", protocol.JobSucceeded)
	assert.Equal(t, "first user=[] args=a1\nfinal\n", h.readWork("log"))
	assert.Equal(t, 1, ex.Terminal)
	assert.Equal(t, "succeeded; 1 step failure(s) ignored: breaks (exited with status 4)", ex.StatusDetails[DetailReason])
	assert.Equal(t, "cleanup", ex.StatusDetails[DetailStepName])
	assert.Equal(t, "3", ex.StatusDetails[DetailStepIndex])

	// Every step was reported IN_PROGRESS with stepTimeoutInMinutes and
	// an expectedVersion the service accepted.
	sent := h.tr.sentUpdates(t, "job-1")
	require.NotEmpty(t, sent)
	for _, u := range sent {
		if u.Status == protocol.JobInProgress {
			assert.Equal(t, int64(3), u.StepTimeoutInMinutes)
		}
	}
	var sawBreaks, sawFirst bool
	for _, u := range ex.Updates {
		if u.Status == protocol.JobInProgress {
			assert.NotZero(t, u.ExpectedVersion)
		}
		if u.StatusDetails[DetailStepName] == "breaks" && u.StatusDetails[DetailStepState] == "failed-ignored" {
			sawBreaks = true
			assert.Equal(t, "boom\n", u.StatusDetails[DetailStderr])
			assert.Equal(t, "4", u.StatusDetails[DetailExitCode])
			assert.Equal(t, "exited with status 4", u.StatusDetails[DetailReason])
		}
		if u.StatusDetails[DetailStepName] == "first" && u.StatusDetails[DetailStepState] == "succeeded" {
			sawFirst = true
			assert.Equal(t, "first done\n", u.StatusDetails[DetailStdout])
		}
	}
	assert.True(t, sawBreaks, "no update for the ignored failure: %+v", ex.Updates)
	assert.True(t, sawFirst, "no update for the first step: %+v", ex.Updates)
	assert.Equal(t, protocol.JobSucceeded, ex.Updates[len(ex.Updates)-1].Status)

	// After the job the engine asks for the next one.
	h.waitIdle()
	waitFor(t, "start-next after the job", func() bool { return h.svc.startNextCount() >= 2 })
}

func TestFailedStepSkipsFinalStep(t *testing.T) {
	h := newHarness(t)
	h.handler("final.sh", `touch "$WORK/final-ran"`, 0o700)
	h.start()
	h.svc.addJob(t, "job-f", `{"version":"1.0","steps":[
		{"action":{"name":"fails","type":"runCommand","input":{"command":"sh,-c,echo 'E: Unable to locate package nope' >&2; exit 100"}}},
		{"action":{"name":"never","type":"runCommand","input":{"command":"touch,`+filepath.Join(h.work, "never-ran")+`"}}}],
		"finalStep":{"action":{"name":"cleanup","type":"runHandler","input":{"handler":"final.sh"}}}}`)
	ex := h.waitStatus("job-f", protocol.JobFailed)
	assert.Equal(t, `step 1/3 "fails" failed: exited with status 100`, ex.StatusDetails[DetailReason])
	assert.Equal(t, "E: Unable to locate package nope\n", ex.StatusDetails[DetailStderr])
	assert.Equal(t, "100", ex.StatusDetails[DetailExitCode])
	assert.Equal(t, 1, ex.Terminal)
	h.waitIdle()
	assert.NoFileExists(t, filepath.Join(h.work, "final-ran"))
	assert.NoFileExists(t, filepath.Join(h.work, "never-ran"))
}

func TestHandlerWithWrongPermissionsFails(t *testing.T) {
	h := newHarness(t)
	h.handler("open.sh", `touch "$WORK/ran"`, 0o755)
	h.start()
	h.svc.addJob(t, "job-p", `{"operation":"open.sh"}`)
	ex := h.waitStatus("job-p", protocol.JobFailed)
	assert.Contains(t, ex.StatusDetails[DetailReason], `step 1/1 "open.sh" failed: handler refused:`)
	assert.Contains(t, ex.StatusDetails[DetailReason], "has mode 0755, must be 0700")
	assert.NoFileExists(t, filepath.Join(h.work, "ran"))
}

func TestMalformedDocumentRejectedAndAgentContinues(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.svc.addJob(t, "bad", `{"version":"1.0","steps":[{"action":{"name":"x","type":"runCommand","ignoreStepFailure":true,"input":{"command":"true"}}}]}`)
	h.svc.addJob(t, "bad-schema", `{"version":"2.0","steps":[]}`)
	h.svc.addJob(t, "good", `{"version":"1.0","steps":[{"action":{"name":"ok","type":"runCommand","input":{"command":"touch,`+filepath.Join(h.work, "good")+`"}}}]}`)
	ex := h.waitStatus("bad", protocol.JobRejected)
	assert.Equal(t, `invalid job document: steps[0].action.ignoreStepFailure: must be the string "true" or "false", got a boolean (the schema passes it as a string)`, ex.StatusDetails[DetailReason])
	ex = h.waitStatus("bad-schema", protocol.JobRejected)
	assert.Equal(t, `invalid job document: version: unsupported schema version "2.0" (only "1.0" is supported)`, ex.StatusDetails[DetailReason])
	h.waitStatus("good", protocol.JobSucceeded)
	assert.FileExists(t, filepath.Join(h.work, "good"))
}

// Another writer of the execution (the HTTPS jobs data plane, an
// operator's client) updates it while a step runs: the device's next
// update is rejected with VersionMismatch, and the device reconciles with
// the rejection's executionState, or, when a forged rejection leaves it
// out, by describing the execution, and finishes the job.
func TestVersionMismatchIsReconciled(t *testing.T) {
	for _, withState := range []bool{true, false} {
		name := "rejection-with-execution-state"
		if !withState {
			name = "forged-rejection-without-execution-state"
		}
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			if !withState {
				h.forgeVersionMismatchWithoutState(t)
			}
			h.handler("wait.sh", `touch "$WORK/started"; while [ ! -e "$WORK/go" ]; do sleep 0.02; done`, 0o700)
			h.start()
			h.svc.addJob(t, "job-v", `{"version":"1.0","steps":[
				{"action":{"name":"wait","type":"runHandler","input":{"handler":"wait.sh"}}},
				{"action":{"name":"after","type":"runCommand","input":{"command":"true"}}}]}`)
			h.waitFile("started")
			// Wait until the device holds the service's answer to the
			// "running" update, then change the execution behind its back.
			waitFor(t, "running update confirmed", func() bool {
				st, err := loadState(h.stateDir)
				return err == nil && st.Job != nil && st.Job.Details[DetailStepState] == "running" && st.InFlight == nil && len(st.Job.Pending) == 0
			})
			h.svc.touch("job-v")
			h.touchWork("go")
			ex := h.waitStatus("job-v", protocol.JobSucceeded)
			assert.Equal(t, 1, ex.Terminal)
			assert.Equal(t, "all 2 step(s) succeeded", ex.StatusDetails[DetailReason])
			assert.NotEmpty(t, h.svc.rejectedUpdates("job-v", protocol.ErrCodeVersionMismatch), "the other writer's update made the device's next one mismatch")
			described := len(h.tr.sentTo(protocol.JobsDescribeTopic(thing, "job-v")))
			if withState {
				assert.Zero(t, described, "describe requests: the rejection's executionState is enough to reconcile")
			} else {
				assert.NotZero(t, described, "describe requests: without executionState the device must describe the execution")
			}
		})
	}
}

func TestCanceledJobIsDropped(t *testing.T) {
	h := newHarness(t)
	h.handler("hang.sh", `echo $$ > "$WORK/pid"; exec sleep 300`, 0o700)
	h.start()
	h.svc.addJob(t, "job-c", `{"version":"1.0","steps":[{"action":{"name":"hang","type":"runHandler","input":{"handler":"hang.sh"}}}]}`)
	h.svc.addJob(t, "job-next", `{"version":"1.0","steps":[{"action":{"name":"ok","type":"runCommand","input":{"command":"true"}}}]}`)
	h.waitFile("pid")
	h.svc.cancel("job-c")
	h.waitStatus("job-next", protocol.JobSucceeded)
	ex := h.svc.get("job-c")
	assert.Equal(t, protocol.JobCanceled, ex.Status)
	assert.Zero(t, ex.Terminal, "the device must not overwrite the cancellation")
	for _, u := range h.tr.sentUpdates(t, "job-c") {
		assert.False(t, u.Status.Terminal(), "the device tried to overwrite the cancellation with %s", u.Status)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(h.readWork("pid")))
	require.NoError(t, err)
	waitFor(t, "hanging step killed", func() bool { return processGone(pid) })
}

func TestKillMidStepFailsTheStep(t *testing.T) {
	h := newHarness(t)
	h.handler("hang.sh", `echo $$ > "$WORK/pid"; exec sleep 300`, 0o700)
	h.start()
	h.svc.addJob(t, "job-k", `{"version":"1.0","steps":[
		{"action":{"name":"hang","type":"runHandler","input":{"handler":"hang.sh"}}},
		{"action":{"name":"second","type":"runCommand","input":{"command":"touch,`+filepath.Join(h.work, "second")+`"}}}]}`)
	h.waitFile("pid")
	h.kill()
	st, err := loadState(h.stateDir)
	require.NoError(t, err)
	require.NotNil(t, st.Job)
	assert.True(t, st.Job.StepStarted)
	assert.Equal(t, 0, st.Job.Step)

	h.start()
	ex := h.waitStatus("job-k", protocol.JobFailed)
	assert.Equal(t, `step 1/2 "hang" failed: agent restarted during step (no reboot: the boot id is unchanged)`, ex.StatusDetails[DetailReason])
	assert.Equal(t, "failed", ex.StatusDetails[DetailStepState])
	assert.Equal(t, 1, ex.Terminal)
	h.waitIdle()
	assert.NoFileExists(t, filepath.Join(h.work, "second"))
	pid, _ := strconv.Atoi(strings.TrimSpace(h.readWork("pid")))
	waitFor(t, "killed step's process gone", func() bool { return processGone(pid) })
}

func TestKillMidIgnoredStepContinues(t *testing.T) {
	h := newHarness(t)
	h.handler("hang.sh", `touch "$WORK/started"; exec sleep 300`, 0o700)
	h.start()
	h.svc.addJob(t, "job-i", `{"version":"1.0","steps":[
		{"action":{"name":"hang","type":"runHandler","ignoreStepFailure":"true","input":{"handler":"hang.sh"}}},
		{"action":{"name":"second","type":"runCommand","input":{"command":"touch,`+filepath.Join(h.work, "second")+`"}}}]}`)
	h.waitFile("started")
	h.kill()
	h.start()
	ex := h.waitStatus("job-i", protocol.JobSucceeded)
	assert.Equal(t, "succeeded; 1 step failure(s) ignored: hang (agent restarted during step (no reboot: the boot id is unchanged))", ex.StatusDetails[DetailReason])
	assert.FileExists(t, filepath.Join(h.work, "second"))
	assert.Equal(t, 1, ex.Terminal)
}

// The terminal update is decided while offline; the agent is killed; the
// outbox delivers the update while no engine listens; the new engine
// resends it, and the service's answer (terminal already) ends the job
// without a second terminal transition.
func TestTerminalStatusNeitherLostNorRepeated(t *testing.T) {
	for _, mode := range []string{"delivered-while-dead", "never-delivered", "responses-lost"} {
		t.Run(mode, func(t *testing.T) {
			h := newHarness(t)
			h.handler("wait.sh", `touch "$WORK/started"; while [ ! -e "$WORK/go" ]; do sleep 0.02; done`, 0o700)
			h.start()
			h.svc.addJob(t, "job-t", `{"version":"1.0","steps":[{"action":{"name":"wait","type":"runHandler","input":{"handler":"wait.sh"}}}]}`)
			h.waitFile("started")
			waitFor(t, "running update confirmed", func() bool {
				st, err := loadState(h.stateDir)
				return err == nil && st.Job != nil && st.Job.Details[DetailStepState] == "running" && st.InFlight == nil && len(st.Job.Pending) == 0
			})
			switch mode {
			case "responses-lost":
				h.tr.setDropResponses(true)
			default:
				h.tr.setOnline(false)
			}
			h.touchWork("go")
			waitFor(t, "terminal status persisted", func() bool {
				st, err := loadState(h.stateDir)
				return err == nil && st.Job != nil && st.InFlight != nil && st.InFlight.Status == protocol.JobSucceeded
			})
			if mode == "responses-lost" {
				waitFor(t, "terminal update reached the service", func() bool { return h.svc.get("job-t").Status == protocol.JobSucceeded })
			} else {
				// The engine persists the terminal status before it hands
				// the update to the outbox; the kill comes after both.
				waitFor(t, "terminal update queued in the outbox", func() bool { return h.tr.pendingCount() > 0 })
			}
			h.kill()
			switch mode {
			case "delivered-while-dead":
				h.tr.setOnline(true)
				assert.Equal(t, protocol.JobSucceeded, h.svc.get("job-t").Status)
			case "responses-lost":
				h.tr.setDropResponses(false)
			}
			h.start()
			if mode == "never-delivered" {
				// Reconnect: the outbox delivers, then OnConnect resends.
				h.tr.setOnline(true)
				h.connect()
			}
			h.waitStatus("job-t", protocol.JobSucceeded)
			h.waitIdle()
			assert.Equal(t, 1, h.svc.get("job-t").Terminal, "accepted terminal updates")
			assert.Zero(t, h.tr.pendingCount())
		})
	}
}

func TestHeartbeatRenewsStepTimeout(t *testing.T) {
	h := newHarness(t)
	h.cfg = func(c *Config) { c.HeartbeatInterval = 30 * time.Millisecond }
	h.handler("wait.sh", `while [ ! -e "$WORK/go" ]; do sleep 0.02; done`, 0o700)
	h.start()
	h.svc.addJob(t, "job-h", `{"version":"1.0","steps":[{"action":{"name":"wait","type":"runHandler","input":{"handler":"wait.sh"}}}]}`)
	waitFor(t, "three heartbeats during the step", func() bool {
		n := 0
		for _, u := range h.svc.get("job-h").Updates {
			if u.Status == protocol.JobInProgress && u.StatusDetails[DetailStepState] == "running" {
				n++
			}
		}
		return n >= 4
	})
	h.touchWork("go")
	h.waitStatus("job-h", protocol.JobSucceeded)
	sent := h.tr.sentUpdates(t, "job-h")
	require.NotEmpty(t, sent)
	for _, u := range sent[:len(sent)-1] {
		assert.Equal(t, protocol.JobInProgress, u.Status)
		assert.Equal(t, int64(3), u.StepTimeoutInMinutes, "every heartbeat renews the step timeout")
	}
	last := sent[len(sent)-1]
	assert.Equal(t, protocol.JobSucceeded, last.Status)
	assert.Zero(t, last.StepTimeoutInMinutes, "terminal updates carry no step timeout")
}

// rebootOp is an operation like OTA's: it reports "rebooting", waits for
// the report to be accepted, then "reboots" (blocks until the agent is
// killed); resumed, it commits.
type rebootOp struct {
	runs chan *OperationStep
}

// rebootInput is rebootOp's typed input.
type rebootInput struct{ URL string }

func (o *rebootOp) Parse(input map[string]json.RawMessage) (any, error) {
	raw, ok := input["url"]
	if !ok {
		return nil, &jobdoc.Error{Field: "url", Problem: "required field is missing"}
	}
	var in rebootInput
	if err := json.Unmarshal(raw, &in.URL); err != nil {
		return nil, &jobdoc.Error{Field: "url", Problem: "must be a string"}
	}
	return in, nil
}

func (o *rebootOp) Run(ctx context.Context, s *OperationStep) OperationResult {
	o.runs <- s
	if in, ok := s.Value.(rebootInput); !ok || in.URL == "" {
		return OperationResult{Reason: fmt.Sprintf("the step did not get the parsed input: %#v", s.Value)}
	}
	if s.Resumed {
		var st struct{ Phase string }
		if err := json.Unmarshal(s.State, &st); err != nil || st.Phase != "rebooting" {
			return OperationResult{Reason: "lost the phase"}
		}
		return OperationResult{OK: true, Reason: "committed", Details: map[string]string{"step": "committed"}}
	}
	if err := s.Progress(ctx, map[string]string{"step": "rebooting", "attempt": "1"}, json.RawMessage(`{"Phase":"rebooting"}`)); err != nil {
		return OperationResult{Reason: err.Error()}
	}
	if err := s.Flush(ctx); err != nil {
		return OperationResult{Reason: err.Error()}
	}
	<-ctx.Done()
	return OperationResult{Reason: "interrupted"}
}

func TestOperationResumesAfterRestart(t *testing.T) {
	h := newHarness(t)
	op := &rebootOp{runs: make(chan *OperationStep, 4)}
	require.NoError(t, h.ops.Register("mender_install", op))
	h.start()
	h.svc.addJob(t, "ota-1", `{"operation":"mender_install","url":"https://bucket/a.mender"}`)
	first := <-op.runs
	assert.False(t, first.Resumed)
	assert.JSONEq(t, `"https://bucket/a.mender"`, string(first.Input["url"]))
	// Flush returned only after the service accepted "rebooting".
	waitFor(t, "rebooting reported", func() bool { return h.svc.get("ota-1").StatusDetails["step"] == "rebooting" })
	h.kill()

	h.start()
	second := <-op.runs
	assert.True(t, second.Resumed)
	ex := h.waitStatus("ota-1", protocol.JobSucceeded)
	assert.Equal(t, "committed", ex.StatusDetails["step"])
	assert.Equal(t, "all 1 step(s) succeeded", ex.StatusDetails[DetailReason])
	assert.Equal(t, 1, ex.Terminal)

	// Without url the document is rejected with the operation's reason.
	h.svc.addJob(t, "ota-2", `{"operation":"mender_install"}`)
	ex = h.waitStatus("ota-2", protocol.JobRejected)
	assert.Equal(t, "invalid job document: url: required field is missing", ex.StatusDetails[DetailReason])
}

func TestLostLocalStateFailsProcessJob(t *testing.T) {
	h := newHarness(t)
	h.handler("hang.sh", `touch "$WORK/started"; exec sleep 300`, 0o700)
	h.start()
	h.svc.addJob(t, "job-l", `{"version":"1.0","steps":[{"action":{"name":"hang","type":"runHandler","input":{"handler":"hang.sh"}}}]}`)
	h.waitFile("started")
	waitFor(t, "running update", func() bool { return h.svc.get("job-l").StatusDetails[DetailStepState] == "running" })
	h.kill()
	require.NoError(t, os.Remove(statePath(h.stateDir)))
	h.start()
	ex := h.waitStatus("job-l", protocol.JobFailed)
	assert.Contains(t, ex.StatusDetails[DetailReason], "agent lost its local job state while step 1 was in progress")
}

func TestCorruptStateIsMovedAside(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, os.WriteFile(statePath(h.stateDir), []byte("{not json"), 0o600))
	h.start()
	h.svc.addJob(t, "job-ok", `{"version":"1.0","steps":[{"action":{"name":"ok","type":"runCommand","input":{"command":"true"}}}]}`)
	h.waitStatus("job-ok", protocol.JobSucceeded)
	matches, err := filepath.Glob(statePath(h.stateDir) + ".corrupt-*")
	require.NoError(t, err)
	assert.Len(t, matches, 1)
}

func TestStatusDetailsClamped(t *testing.T) {
	in := map[string]string{DetailReason: strings.Repeat("r", 3000) + "END", DetailStderr: "e"}
	for i := 0; i < 20; i++ {
		in["op"+strconv.Itoa(i)] = "v"
	}
	out := clampDetails(in)
	assert.Len(t, out, protocol.MaxStatusDetailsEntries)
	assert.Len(t, out[DetailReason], protocol.MaxStatusDetailsValueBytes)
	assert.True(t, strings.HasSuffix(out[DetailReason], "END"))
	assert.Equal(t, "e", out[DetailStderr])
}

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	op := &rebootOp{}
	require.NoError(t, r.Register("mender_install", op))
	assert.ErrorContains(t, r.Register("mender_install", op), "already registered")
	assert.ErrorContains(t, r.Register("runCommand", op), "reserved")
	assert.ErrorContains(t, r.Register("bad name", op), "invalid name")
	assert.Equal(t, []string{"mender_install"}, r.OperationNames())
	assert.True(t, r.HasOperation("mender_install"))
	assert.False(t, r.HasOperation("x"))
	var nilReg *Registry
	assert.False(t, nilReg.HasOperation("x"))
	_, err := r.ParseOperation("mender_install", map[string]json.RawMessage{})
	var de *jobdoc.Error
	require.True(t, errors.As(err, &de))
	assert.Equal(t, "url", de.Field)
}

// processGone reports whether pid has exited (absent or a zombie).
func processGone(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}

// AWS's sample reboot.json: the step reboots the device, so the agent is
// killed while the step runs and comes back under a new boot id. The step
// was recorded as started before the reboot, so it is reported SUCCEEDED,
// never FAILED with "agent restarted during step" (the AWS IoT Device
// Client's issue #338), and the next step runs.
func TestRebootDuringStepSucceeds(t *testing.T) {
	h := newHarness(t)
	h.handler("reboot.sh", `touch "$WORK/rebooting"; exec sleep 300`, 0o700)
	h.start()
	h.svc.addJob(t, "job-r", `{"version":"1.0","steps":[
		{"action":{"name":"Reboot Device","type":"runHandler","input":{"handler":"reboot.sh"},"runAsUser":"root"}},
		{"action":{"name":"after","type":"runCommand","input":{"command":"touch,`+filepath.Join(h.work, "after")+`"}}}]}`)
	h.waitFile("rebooting")
	h.kill()
	st, err := loadState(h.stateDir)
	require.NoError(t, err)
	require.True(t, st.Job.StepStarted, "recorded as started before the reboot")
	require.Equal(t, "b00710d0-0000-4000-8000-000000000001", st.Job.StepBootID)
	h.reboot()
	h.start()
	ex := h.waitStatus("job-r", protocol.JobSucceeded)
	assert.Equal(t, "all 2 step(s) succeeded", ex.StatusDetails[DetailReason])
	assert.FileExists(t, filepath.Join(h.work, "after"))
	var rebootStep map[string]string
	for _, u := range h.svc.get("job-r").Updates {
		if u.StatusDetails[DetailStepName] == "Reboot Device" && u.StatusDetails[DetailStepState] != "running" {
			rebootStep = u.StatusDetails
		}
	}
	require.NotNil(t, rebootStep, "the reboot step's outcome was reported")
	assert.Equal(t, "succeeded", rebootStep[DetailStepState])
	assert.Equal(t, ReasonRebootedDuringStep, rebootStep[DetailReason])
	assert.Equal(t, "b00710d0-0000-4000-8000-000000000001", rebootStep[DetailBootID])
}

// Without a readable boot id when the step started, a restart cannot be
// told from a reboot: the step fails, saying why.
func TestInterruptedStepWithoutBootIDFails(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, os.Remove(h.bootIDFile))
	h.handler("reboot.sh", `touch "$WORK/rebooting"; exec sleep 300`, 0o700)
	h.start()
	h.svc.addJob(t, "job-u", `{"version":"1.0","steps":[{"action":{"name":"Reboot Device","type":"runHandler","input":{"handler":"reboot.sh"}}}]}`)
	h.waitFile("rebooting")
	h.kill()
	h.reboot()
	h.start()
	ex := h.waitStatus("job-u", protocol.JobFailed)
	assert.Equal(t, `step 1/1 "Reboot Device" failed: agent restarted during step (the boot id was not known when the step started, so a reboot cannot be told from a restart)`, ex.StatusDetails[DetailReason])
}

// savingOp saves its own state without reporting, then blocks until the
// agent stops; resumed, it finishes with what it saved.
type savingOp struct {
	runs chan *OperationStep
}

func (o *savingOp) Parse(map[string]json.RawMessage) (any, error) { return nil, nil }

func (o *savingOp) Run(ctx context.Context, s *OperationStep) OperationResult {
	o.runs <- s
	if s.Resumed {
		return OperationResult{OK: true, Reason: "resumed with " + string(s.State)}
	}
	if err := s.SaveState(ctx, json.RawMessage(`{"n":1}`)); err != nil {
		return OperationResult{Reason: err.Error()}
	}
	if err := s.SaveState(ctx, json.RawMessage(`{"n":2}`)); err != nil {
		return OperationResult{Reason: err.Error()}
	}
	<-ctx.Done()
	return OperationResult{Reason: "interrupted"}
}

// TestOperationStateIsKeptPerJob: an operation's SaveState is durable
// before it returns and sends nothing; the step resumes with it after a
// restart; after the job ends the operation's last state stays readable
// (ReadLastOperation), the job's own copy is gone.
func TestOperationStateIsKeptPerJob(t *testing.T) {
	h := newHarness(t)
	op := &savingOp{runs: make(chan *OperationStep, 4)}
	require.NoError(t, h.ops.Register("saver", op))
	h.start()
	h.svc.addJob(t, "save-1", `{"version":"1.0","steps":[{"action":{"name":"s","type":"saver","input":{}}}]}`)
	first := <-op.runs
	assert.Nil(t, first.State)
	waitFor(t, "the state saved", func() bool {
		rec, found, err := ReadLastOperation(h.stateDir, "saver")
		return err == nil && found && string(rec.State) == `{"n":2}`
	})
	st, err := loadState(h.stateDir)
	require.NoError(t, err)
	require.NotNil(t, st.Job)
	assert.JSONEq(t, `{"n":2}`, string(st.Job.OpState))
	assert.Equal(t, protocol.JobInProgress, h.svc.get("save-1").Status)
	assert.NotContains(t, h.svc.get("save-1").StatusDetails, "n", "SaveState reports nothing")
	// The file holds operations' state (OTA's has the presigned URL, a
	// credential): private to the agent.
	fi, err := os.Stat(filepath.Join(h.stateDir, StateFileName))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	h.kill()

	h.start()
	second := <-op.runs
	assert.True(t, second.Resumed)
	assert.JSONEq(t, `{"n":2}`, string(second.State))
	ex := h.waitStatus("save-1", protocol.JobSucceeded)
	assert.Equal(t, `all 1 step(s) succeeded`, ex.StatusDetails[DetailReason])
	h.waitIdle()
	rec, found, err := ReadLastOperation(h.stateDir, "saver")
	require.NoError(t, err)
	require.True(t, found)
	assert.Equal(t, "save-1", rec.JobID)
	assert.JSONEq(t, `{"n":2}`, string(rec.State))
	st, err = loadState(h.stateDir)
	require.NoError(t, err)
	assert.Nil(t, st.Job, "the job's own state ends with the job")
}
