package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/device/jobs/runner"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// statusDetails keys written by the engine. Operations may add their own
// keys (OTA adds "step", "attempt"); a job execution holds at most 10.
const (
	DetailReason    = "reason"
	DetailStepName  = "stepName"
	DetailStepIndex = "stepIndex" // 1-based, counting the final step
	DetailStepCount = "stepCount"
	DetailStepState = "stepState" // running | succeeded | failed | failed-ignored
	DetailExitCode  = "exitCode"
	DetailStderr    = "stderr"
	DetailStdout    = "stdout"
)

// ReasonRestartedDuringStep starts the reason of a process step that was
// running when the agent stopped while the device did not reboot (or
// whether it did is unknown); it is reported as the step's failure.
const ReasonRestartedDuringStep = "agent restarted during step"

// ReasonRebootedDuringStep is the reason of a process step that was
// running when the device rebooted: it is reported as the step's success,
// because a step that reboots the device (AWS's sample reboot.json) cannot
// report anything else before the reboot. This is the fix of the AWS IoT
// Device Client's issue #338 (reboot jobs reported FAILED).
const ReasonRebootedDuringStep = "the device rebooted during the step (boot id changed): the step counts as succeeded"

// DefaultBootIDFile is the kernel's boot id, new at every boot.
const DefaultBootIDFile = "/proc/sys/kernel/random/boot_id"

// DetailBootID is the statusDetails key of the boot id a step that was
// interrupted by a reboot started under.
const DetailBootID = "bootIdAtStepStart"

// readBootID reads the boot id from the configured file.
func (e *Engine) readBootID() (string, error) {
	b, err := os.ReadFile(e.cfg.BootIDFile)
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("read boot id: %s is empty", e.cfg.BootIDFile)
	}
	return id, nil
}

// engineKeys are kept first when details exceed the service's limit.
var engineKeys = []string{DetailReason, DetailStepName, DetailStepIndex, DetailStepCount, DetailStepState, DetailExitCode, DetailStderr, DetailStdout}

// clampDetails enforces the AWS limits: at most 10 entries, values at most
// 1024 bytes (the end of the value is kept: the end of stderr is what
// matters). Engine keys win over operation keys.
func clampDetails(in map[string]string) map[string]string {
	out := make(map[string]string, len(in))
	add := func(k string) {
		if len(out) >= protocol.MaxStatusDetailsEntries {
			return
		}
		if v, ok := in[k]; ok {
			if v = detailValue(v); v != "" {
				out[k] = v
			}
		}
	}
	for _, k := range engineKeys {
		add(k)
	}
	for _, k := range slices.Sorted(maps.Keys(in)) {
		if _, done := out[k]; !done && k != "" {
			add(k)
		}
	}
	return out
}

// detailValue makes v a statusDetails value as the AWS IoT Device Client
// reports it: line feeds and tabs are kept (the Device Client's output
// filter keeps exactly these two control characters, and AWS IoT Jobs
// stores them: the Device Client's documentation shows describe-job-execution
// returning "stderr": "...No such file or directory\n"); every other
// control, format or invalid character (Unicode category C: carriage
// return, escape, NUL, U+200B, ...) becomes a space, as the Device Client
// does; and the last 1024 characters are kept (AWS's limit, counted in
// characters). An empty result means the entry is left out.
func detailValue(v string) string {
	v = strings.ToValidUTF8(v, "\uFFFD")
	v = strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\t':
			return r
		case unicode.Is(unicode.C, r) || !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z):
			// Category C, and code points Unicode has not assigned yet
			// (Cn: in no other category).
			return ' '
		}
		return r
	}, v)
	return runner.TailChars(v, protocol.MaxStatusDetailsValueBytes)
}

// recover turns the persisted state into a consistent one at start-up: a
// process step that was started but has no recorded outcome was running
// when the agent stopped and is failed with ReasonRestartedDuringStep.
func (e *Engine) recover() {
	job := e.st.Job
	p := phaseOf(job)
	if p != phaseReady && p != phaseStepRunning {
		return
	}
	if e.doc == nil {
		e.fire(evDecide)
		_, perr := jobdoc.Parse(job.Document, e.parseOptions())
		e.c.report(protocol.JobFailed, map[string]string{DetailReason: fmt.Sprintf("job document no longer valid for this agent after restart: %v", perr)}, false)
		e.save()
		return
	}
	if p != phaseStepRunning {
		return
	}
	a, ok := e.doc.Step(job.Step)
	if !ok || a.Type == jobdoc.TypeOperation {
		return
	}
	out := e.interruptedOutcome(job.StepBootID)
	out.jobID, out.step = job.JobID, job.Step
	e.log.Warn("step was running when the agent stopped", "job_id", job.JobID, "step", a.Name, "outcome", out.reason)
	e.applyOutcome(out)
}

// interruptedOutcome is the outcome of a process step that was running
// when the agent stopped, given the boot id recorded when it started: a
// changed boot id means the device rebooted during the step, which
// succeeds it; the same boot id means only the agent restarted, which
// fails it; an unknown boot id fails it too (a failure is never reported
// as a success on a guess).
func (e *Engine) interruptedOutcome(startBootID string) stepOutcome {
	fail := func(why string) stepOutcome {
		r := ReasonRestartedDuringStep + " (" + why + ")"
		return stepOutcome{reason: r, details: map[string]string{DetailReason: r}}
	}
	if startBootID == "" {
		return fail("the boot id was not known when the step started, so a reboot cannot be told from a restart")
	}
	cur, err := e.readBootID()
	switch {
	case err != nil:
		return fail(fmt.Sprintf("the boot id cannot be read now: %v", err))
	case cur == startBootID:
		return fail("no reboot: the boot id is unchanged")
	}
	return stepOutcome{ok: true, reason: ReasonRebootedDuringStep,
		details: map[string]string{DetailReason: ReasonRebootedDuringStep, DetailBootID: startBootID}}
}

// advance starts the current step if nothing runs.
func (e *Engine) advance(stepCtx context.Context) {
	job := e.st.Job
	p := phaseOf(job)
	if (p != phaseReady && p != phaseStepRunning) || e.active != nil || e.doc == nil || stepCtx.Err() != nil {
		return
	}
	a, ok := e.doc.Step(job.Step)
	if !ok {
		e.finish(protocol.JobSucceeded, e.successDetails(nil))
		e.save()
		e.c.pump(stepCtx)
		return
	}
	resumed := p == phaseStepRunning
	if !resumed {
		// Persist "started" before the step can have any effect; if that
		// is impossible the step does not start (retried shortly).
		e.fire(evStartStep)
		job.StepBootID = ""
		if a.Type != jobdoc.TypeOperation {
			id, err := e.readBootID()
			if err != nil {
				e.log.Warn("boot id unreadable: a reboot during this step will be reported as a failure", "err", err)
			}
			job.StepBootID = id
		}
		if !e.save() {
			e.fire(evStartAborted)
			time.AfterFunc(5*time.Second, func() { e.enqueue(event{}) })
			return
		}
		e.c.report(protocol.JobInProgress, e.stepBase(job.Step, "running"), true)
		e.save()
		e.c.pump(stepCtx)
	}
	ctx, cancel := context.WithCancel(stepCtx)
	e.active = &activeStep{jobID: job.JobID, step: job.Step, cancel: cancel}
	jobID, idx, includeStdOut := job.JobID, job.Step, e.doc.IncludeStdOut
	var op *OperationStep
	if a.Type == jobdoc.TypeOperation {
		op = &OperationStep{
			JobID: jobID, StepName: a.Name, StepIndex: idx, RunAsUser: a.RunAsUser, Input: a.Input, Value: a.Value,
			Resumed: resumed, State: job.OpState, ServiceDetails: job.ServiceDetails,
		}
		op.progress = func(pctx context.Context, details map[string]string, state json.RawMessage) error {
			done := make(chan error, 1)
			e.enqueue(event{opProg: &opProgress{jobID: jobID, step: idx, details: details, state: state, done: done}})
			return waitErr(pctx, ctx, done)
		}
		op.flush = func(fctx context.Context) error {
			done := make(chan error, 1)
			e.enqueue(event{opFlush: &flushWaiter{jobID: jobID, done: done}})
			return waitErr(fctx, ctx, done)
		}
	}
	e.log.Info("starting step", "job_id", jobID, "step", a.Name, "index", idx+1, "resumed", resumed)
	go func() {
		var out stepOutcome
		if op != nil {
			out = e.runOperation(ctx, a, op)
		} else {
			out = e.runProcess(ctx, a, includeStdOut)
		}
		out.jobID, out.step = jobID, idx
		if ctx.Err() != nil {
			out.aborted = true
		}
		e.stepDone <- out
	}()
}

func waitErr(callerCtx, stepCtx context.Context, done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-callerCtx.Done():
		return callerCtx.Err()
	case <-stepCtx.Done():
		return ErrJobEnded
	}
}

func (e *Engine) runProcess(ctx context.Context, a jobdoc.Action, includeStdOut bool) stepOutcome {
	res := e.cfg.Runner.Run(ctx, runner.Step{Action: a, IncludeStdOut: includeStdOut, Timeout: e.cfg.StepTimeout})
	d := map[string]string{DetailReason: res.Reason, DetailExitCode: strconv.Itoa(res.ExitCode)}
	if res.Stderr != "" {
		d[DetailStderr] = res.Stderr
	}
	if includeStdOut && res.Stdout != "" {
		d[DetailStdout] = res.Stdout
	}
	return stepOutcome{ok: res.OK, reason: res.Reason, details: d}
}

func (e *Engine) runOperation(ctx context.Context, a jobdoc.Action, step *OperationStep) (out stepOutcome) {
	op, ok := e.cfg.Operations.Lookup(a.Operation)
	if !ok {
		return stepOutcome{reason: fmt.Sprintf("operation %q is not registered", a.Operation)}
	}
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("operation panicked", "operation", a.Operation, "panic", r)
			out = stepOutcome{reason: fmt.Sprintf("operation %s failed: internal error: %v", a.Operation, r)}
		}
	}()
	res := op.Run(ctx, step)
	d := make(map[string]string, len(res.Details)+1)
	for k, v := range res.Details {
		d[k] = v
	}
	reason := res.Reason
	if reason == "" {
		reason = "operation " + a.Operation + " finished"
		if !res.OK {
			reason = "operation " + a.Operation + " failed"
		}
	}
	d[DetailReason] = reason
	return stepOutcome{ok: res.OK, reason: reason, details: d}
}

// stepFinished records the outcome of the step that just ended.
func (e *Engine) stepFinished(ctx context.Context, out stepOutcome) {
	job := e.st.Job
	if out.aborted || job == nil || job.JobID != out.jobID || job.Step != out.step || phaseOf(job) != phaseStepRunning {
		return
	}
	e.applyOutcome(out)
	e.c.pump(ctx)
}

func (e *Engine) applyOutcome(out stepOutcome) {
	job := e.st.Job
	a, _ := e.doc.Step(job.Step)
	state := "succeeded"
	if !out.ok {
		state = "failed"
		if a.IgnoreStepFailure {
			state = "failed-ignored"
		}
	}
	details := e.stepBase(job.Step, state)
	for k, v := range out.details {
		details[k] = v
	}
	log := e.log.With("job_id", job.JobID, "step", a.Name, "index", job.Step+1)
	job.StepBootID = ""
	job.OpState = nil
	switch {
	case !out.ok && !a.IgnoreStepFailure:
		log.Warn("step failed", "reason", out.reason)
		details[DetailReason] = fmt.Sprintf("step %d/%d %q failed: %s", job.Step+1, e.doc.StepCount(), a.Name, out.reason)
		e.finish(protocol.JobFailed, details)
	default:
		if !out.ok {
			log.Warn("step failed, failure ignored", "reason", out.reason)
			job.IgnoredFailures = append(job.IgnoredFailures, fmt.Sprintf("%s (%s)", a.Name, out.reason))
		} else {
			log.Info("step succeeded")
		}
		e.fire(evStepDone)
		job.Step++
		if job.Step >= e.doc.StepCount() {
			e.finish(protocol.JobSucceeded, e.successDetails(details))
		} else {
			e.c.report(protocol.JobInProgress, details, false)
		}
	}
	e.save()
}

func (e *Engine) stepBase(idx int, state string) map[string]string {
	a, _ := e.doc.Step(idx)
	return map[string]string{
		DetailStepName:  a.Name,
		DetailStepIndex: strconv.Itoa(idx + 1),
		DetailStepCount: strconv.Itoa(e.doc.StepCount()),
		DetailStepState: state,
	}
}

func (e *Engine) successDetails(last map[string]string) map[string]string {
	d := map[string]string{}
	for k, v := range last {
		d[k] = v
	}
	reason := fmt.Sprintf("all %d step(s) succeeded", e.doc.StepCount())
	if n := len(e.st.Job.IgnoredFailures); n > 0 {
		reason = fmt.Sprintf("succeeded; %d step failure(s) ignored: %s", n, strings.Join(e.st.Job.IgnoredFailures, ", "))
	}
	d[DetailReason] = reason
	return d
}

// finish decides the terminal status; it is persisted by the caller before
// anything is sent.
func (e *Engine) finish(status protocol.JobStatus, details map[string]string) {
	job := e.st.Job
	e.fire(evDecide)
	e.c.report(status, details, false)
	e.log.Info("job outcome decided", "job_id", job.JobID, "status", status, "reason", details[DetailReason])
}

func (e *Engine) onOpProgress(ctx context.Context, p *opProgress) {
	job := e.st.Job
	if job == nil || job.JobID != p.jobID || job.Step != p.step || phaseOf(job) != phaseStepRunning {
		p.done <- ErrJobEnded
		return
	}
	if p.state != nil {
		job.OpState = append(json.RawMessage(nil), p.state...)
		if a, ok := e.doc.Step(job.Step); ok && a.Type == jobdoc.TypeOperation {
			if e.st.LastOperations == nil {
				e.st.LastOperations = map[string]OperationRecord{}
			}
			e.st.LastOperations[a.Operation] = OperationRecord{JobID: job.JobID, State: job.OpState}
		}
	}
	if p.details != nil {
		// Progress: the update goes with the state, in the same write.
		details := e.stepBase(job.Step, "running")
		for k, v := range p.details {
			details[k] = v
		}
		e.c.report(protocol.JobInProgress, details, true)
	}
	if !e.save() {
		p.done <- fmt.Errorf("jobs state could not be saved")
		return
	}
	p.done <- nil
	e.c.pump(ctx)
}

func (e *Engine) onOpFlush(f flushWaiter) {
	job := e.st.Job
	if job == nil || job.JobID != f.jobID {
		f.done <- ErrJobEnded
		return
	}
	f.seq = job.ChangeSeq
	if job.ConfirmedSeq >= f.seq {
		f.done <- nil
		return
	}
	e.flushers = append(e.flushers, f)
}
