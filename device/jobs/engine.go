// Package jobs is the device agent's AWS IoT Jobs engine: a protocol client
// (client.go) talks to the Jobs MQTT API (notify-next, start-next, update,
// describe), and the engine's step executor (exec.go, phase.go) runs the steps
// of job documents (device/jobs/jobdoc) as processes (device/jobs/runner)
// or as operations registered by other parts of the agent (OTA), and keeps
// an explicit state machine in a state file that is written before every
// transition, so that an agent killed at any point resumes or fails the job
// with a reason and never loses or repeats a terminal status.
//
// Wiring (done by the agent): construct with New, run Run in a goroutine,
// subscribe to Subscriptions() and feed every message on them to
// HandleMessage, and call OnConnect after every (re)connect.
package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/device/jobs/runner"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Publisher is the engine's transport. Publish returns nil once the message
// is durably accepted for in-order, at-least-once delivery (the agent's
// outbox), whether or not the connection is up. It may deliver responses
// through HandleMessage from any goroutine, including its own call stack:
// HandleMessage only queues.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// StepRunner runs a process step; *runner.Runner implements it.
type StepRunner interface {
	Run(ctx context.Context, s runner.Step) runner.Result
}

// Defaults.
const (
	DefaultStepTimeout            = time.Hour
	DefaultProgressTimeoutMinutes = 10
	DefaultResponseTimeout        = 30 * time.Second
	DefaultMaxBackoff             = 5 * time.Minute
)

// Config configures an Engine.
type Config struct {
	// ThingName is the AWS IoT thing name (required).
	ThingName string
	// StateDir holds the engine's state file (required; the agent's
	// state directory).
	StateDir string
	// Publisher sends requests to the Jobs service (required).
	Publisher Publisher
	// Runner runs runHandler and runCommand steps (required).
	Runner StepRunner
	// Operations are the operations available to job documents
	// (optional; OTA registers mender_install).
	Operations *Registry
	// RunCommand is the device's rule for runCommand steps (agent
	// configuration jobs.runCommand): a document with a step it refuses
	// is rejected before any step runs. The zero value allows all.
	RunCommand jobdoc.RunCommandPolicy
	// HandlerDir is only used to display plans in logs.
	HandlerDir string
	// BootIDFile is where the kernel's boot id is read (default
	// DefaultBootIDFile; the agent passes ota.bootIdFile so that OTA and
	// jobs read the same source). It is recorded when a step starts: a
	// process step interrupted by a reboot of the device succeeded (a
	// reboot step), one interrupted by a restart of the agent alone
	// failed.
	BootIDFile string
	// StepTimeout bounds each process step (default 1h); the process
	// group is killed when it elapses and the step fails.
	StepTimeout time.Duration
	// ProgressTimeoutMinutes is sent as stepTimeoutInMinutes with
	// start-next and every IN_PROGRESS update, so the service times the
	// execution out if the device goes silent (default 10; negative
	// disables).
	ProgressTimeoutMinutes int64
	// HeartbeatInterval is how often an IN_PROGRESS update is sent while
	// a step runs, to renew stepTimeoutInMinutes (default half of
	// ProgressTimeoutMinutes).
	HeartbeatInterval time.Duration
	// ResponseTimeout is how long a request waits for its response before
	// it is resent (default 30s); the delay doubles up to MaxBackoff.
	ResponseTimeout time.Duration
	// MaxBackoff caps retry delays (default 5m).
	MaxBackoff time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Engine is the jobs state machine. Create it with New and drive it with
// Run; the other methods are safe to call from any goroutine.
type Engine struct {
	cfg Config
	log *slog.Logger

	qmu    sync.Mutex
	queue  []event
	wakeup chan struct{}

	// Everything below is owned by the Run goroutine.
	st       *persistedState
	c        *client
	doc      *jobdoc.Document
	active   *activeStep
	flushers []flushWaiter
	// badTransitions counts transitions the table refused (a bug; tests
	// assert none happen).
	badTransitions int
	stepDone       chan stepOutcome
}

type event struct {
	topic   string
	payload []byte
	connect chan struct{}
	opProg  *opProgress
	opFlush *flushWaiter
	// snapshot asks the loop for a Snapshot (see snapshot.go).
	snapshot chan Snapshot
}

type opProgress struct {
	jobID   string
	step    int
	details map[string]string
	state   json.RawMessage
	done    chan error
}

type flushWaiter struct {
	jobID string
	seq   int64
	done  chan error
}

type activeStep struct {
	jobID  string
	step   int
	cancel context.CancelFunc
}

type stepOutcome struct {
	jobID   string
	step    int
	ok      bool
	reason  string
	details map[string]string
	// aborted: the step was canceled because the engine is stopping or
	// the job was dropped; its outcome is not recorded.
	aborted bool
}

// New loads the state file (a corrupt one is moved aside and the engine
// starts empty) and returns an engine ready to Run.
func New(cfg Config) (*Engine, error) {
	switch {
	case cfg.ThingName == "":
		return nil, errors.New("jobs engine: ThingName is required")
	case cfg.StateDir == "":
		return nil, errors.New("jobs engine: StateDir is required")
	case cfg.Publisher == nil:
		return nil, errors.New("jobs engine: Publisher is required")
	case cfg.Runner == nil:
		return nil, errors.New("jobs engine: Runner is required")
	}
	if cfg.StepTimeout <= 0 {
		cfg.StepTimeout = DefaultStepTimeout
	}
	if cfg.ProgressTimeoutMinutes == 0 {
		cfg.ProgressTimeoutMinutes = DefaultProgressTimeoutMinutes
	}
	if cfg.ProgressTimeoutMinutes < 0 {
		cfg.ProgressTimeoutMinutes = 0
	}
	if cfg.HeartbeatInterval <= 0 && cfg.ProgressTimeoutMinutes > 0 {
		cfg.HeartbeatInterval = time.Duration(cfg.ProgressTimeoutMinutes) * time.Minute / 2
	}
	if cfg.ResponseTimeout <= 0 {
		cfg.ResponseTimeout = DefaultResponseTimeout
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.BootIDFile == "" {
		cfg.BootIDFile = DefaultBootIDFile
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "jobs")
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("jobs engine: state dir: %w", err)
	}
	st, err := loadState(cfg.StateDir)
	if err != nil {
		aside := statePath(cfg.StateDir) + ".corrupt-" + strconv.FormatInt(time.Now().Unix(), 10)
		if rerr := os.Rename(statePath(cfg.StateDir), aside); rerr != nil {
			return nil, fmt.Errorf("jobs engine: %w (and moving it aside failed: %v)", err, rerr)
		}
		log.Error("jobs state unreadable, moved aside; a job in progress will be failed when the service hands it back", "err", err, "moved_to", aside)
		st = &persistedState{Format: stateFormat}
	}
	e := &Engine{
		cfg:      cfg,
		log:      log,
		wakeup:   make(chan struct{}, 1),
		st:       st,
		stepDone: make(chan stepOutcome, 1),
	}
	e.c = newClient(cfg.ThingName, clientConfig{
		ProgressTimeoutMinutes: cfg.ProgressTimeoutMinutes, ResponseTimeout: cfg.ResponseTimeout, MaxBackoff: cfg.MaxBackoff,
	}, cfg.Publisher, log, st, e.save)
	e.c.exec = e
	if st.Job != nil {
		e.doc = e.parseDoc(st.Job)
	}
	return e, nil
}

// Subscriptions returns the topic filters the agent must subscribe to
// (QoS 1) before calling OnConnect.
func (e *Engine) Subscriptions() []string { return e.c.subscriptions() }

// HandleMessage queues an incoming message for the engine. It never blocks
// on the engine and ignores topics that are not the thing's Jobs topics.
func (e *Engine) HandleMessage(topic string, payload []byte) {
	if !strings.HasPrefix(topic, e.c.prefix) {
		return
	}
	e.enqueue(event{topic: topic, payload: append([]byte(nil), payload...)})
}

// OnConnect tells the engine the connection is (re)established and the
// subscriptions are in place: it publishes start-next when idle, or
// resends the pending request of the current job. It returns when the
// engine has handled it, or with ctx's error.
func (e *Engine) OnConnect(ctx context.Context) error {
	done := make(chan struct{})
	e.enqueue(event{connect: done})
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *Engine) enqueue(ev event) {
	e.qmu.Lock()
	e.queue = append(e.queue, ev)
	e.qmu.Unlock()
	select {
	case e.wakeup <- struct{}{}:
	default:
	}
}

// Run drives the engine until ctx is canceled. A step that is running when
// ctx is canceled is killed and its outcome is not recorded: on the next
// start it counts as interrupted, exactly as if the agent had been killed.
func (e *Engine) Run(ctx context.Context) error {
	stepCtx, cancelSteps := context.WithCancel(ctx)
	defer cancelSteps()
	e.recover()
	e.advance(stepCtx)

	var heartbeat <-chan time.Time
	if e.cfg.HeartbeatInterval > 0 {
		t := time.NewTicker(e.cfg.HeartbeatInterval)
		defer t.Stop()
		heartbeat = t.C
	}
	resend := time.NewTimer(time.Hour)
	defer resend.Stop()
	for {
		e.c.armResend(resend)
		select {
		case <-ctx.Done():
			if e.active != nil {
				e.active.cancel()
				<-e.stepDone
				e.active = nil
			}
			for _, f := range e.flushers {
				f.done <- ctx.Err()
			}
			e.flushers = nil
			return nil
		case <-e.wakeup:
			e.qmu.Lock()
			evs := e.queue
			e.queue = nil
			e.qmu.Unlock()
			for _, ev := range evs {
				e.handle(ctx, ev)
			}
		case out := <-e.stepDone:
			e.active = nil
			e.stepFinished(ctx, out)
		case <-heartbeat:
			if e.active != nil {
				e.c.heartbeat(ctx)
			}
		case <-resend.C:
			e.c.resendAt = time.Time{}
			e.c.resendDue(ctx)
		}
		e.advance(stepCtx)
	}
}

// save persists the state; a failure to persist is logged and the
// transition goes ahead in memory (the next successful save catches up).
func (e *Engine) save() bool {
	if err := saveState(e.cfg.StateDir, e.st); err != nil {
		e.log.Error("cannot persist jobs state", "err", err)
		return false
	}
	return true
}

func (e *Engine) handle(ctx context.Context, ev event) {
	switch {
	case ev.connect != nil:
		e.c.onConnect(ctx)
		close(ev.connect)
	case ev.opProg != nil:
		e.onOpProgress(ctx, ev.opProg)
	case ev.opFlush != nil:
		e.onOpFlush(*ev.opFlush)
	case ev.snapshot != nil:
		ev.snapshot <- snapshotOf(e.st)
	default:
		e.c.onMessage(ctx, ev.topic, ev.payload)
	}
}

// adopt implements executor: it takes on the execution the protocol
// client made the current job, or rejects it if its document is invalid.
// unreadable, when set, is why the Jobs response carrying the execution
// could not be decoded: the job is rejected with it.
func (e *Engine) adopt(ctx context.Context, exec *protocol.JobExecution, unreadable string) {
	job := e.st.Job
	job.Document = append(json.RawMessage(nil), exec.JobDocument...)
	e.doc = nil
	log := e.log.With("job_id", exec.JobID)
	var reason string
	var doc *jobdoc.Document
	switch {
	case unreadable != "":
		job.Document = nil
		reason = "invalid job document: the Jobs response carrying it could not be decoded: " + unreadable
	case len(exec.JobDocument) == 0:
		reason = "invalid job document: the execution has no job document"
	default:
		var perr error
		doc, perr = jobdoc.Parse(job.Document, e.parseOptions())
		if perr != nil {
			reason = "invalid job document: " + perr.Error()
			var de *jobdoc.Error
			if errors.As(perr, &de) {
				reason = "invalid job document: " + de.Reason()
			}
		}
	}
	if reason != "" {
		log.Warn("rejecting job", "reason", reason)
		e.fire(evRefuse)
		e.c.report(protocol.JobRejected, map[string]string{DetailReason: reason}, false)
		e.save()
		e.c.pump(ctx)
		return
	}
	e.doc = doc
	log.Info("job adopted", "steps", doc.StepCount(), "plan", jobdoc.Explain(doc, e.cfg.HandlerDir))
	if _, ours := exec.StatusDetails[DetailStepIndex]; !ours || exec.Status != protocol.JobInProgress {
		e.fire(evAdopt)
	} else {
		// The service says we were already running this job, but there
		// is no local record of it (state lost).
		job.ServiceDetails = exec.StatusDetails
		idx, _ := strconv.Atoi(exec.StatusDetails[DetailStepIndex])
		if a, ok := doc.Step(idx - 1); ok && a.Type == jobdoc.TypeOperation {
			job.Step = idx - 1
			e.fire(evResumeOperation)
			log.Warn("resuming operation step without local state", "step", a.Name)
		} else {
			e.fire(evRefuse)
			reason := fmt.Sprintf("agent lost its local job state while step %s was in progress; the job cannot be resumed safely", exec.StatusDetails[DetailStepIndex])
			e.c.report(protocol.JobFailed, map[string]string{DetailReason: reason}, false)
		}
	}
	e.save()
	e.c.pump(ctx)
}

// parseOptions are the parser options of this device: its operations and
// its runCommand rule.
func (e *Engine) parseOptions() jobdoc.Options {
	return jobdoc.Options{Operations: e.cfg.Operations, RunCommand: e.cfg.RunCommand}
}

func (e *Engine) parseDoc(job *jobState) *jobdoc.Document {
	doc, err := jobdoc.Parse(job.Document, e.parseOptions())
	if err != nil {
		return nil
	}
	return doc
}

// jobEnded implements executor: a step still running for the job is
// stopped (its outcome is not recorded) and operations waiting for a
// flush learn that the job is over.
func (e *Engine) jobEnded(jobID string, dropped bool, _ string) {
	e.fire(evEnd)
	if dropped && e.active != nil && e.active.jobID == jobID {
		e.active.cancel()
	}
	e.doc = nil
	e.failFlushers(jobID)
}

// confirmed implements executor: operations waiting for a flush are
// released once the service holds what they waited for.
func (e *Engine) confirmed() {
	job := e.st.Job
	kept := e.flushers[:0]
	for _, f := range e.flushers {
		if job != nil && f.jobID == job.JobID && job.ConfirmedSeq >= f.seq {
			f.done <- nil
			continue
		}
		kept = append(kept, f)
	}
	e.flushers = kept
}

func (e *Engine) failFlushers(jobID string) {
	kept := e.flushers[:0]
	for _, f := range e.flushers {
		if f.jobID == jobID {
			f.done <- ErrJobEnded
			continue
		}
		kept = append(kept, f)
	}
	e.flushers = kept
}
