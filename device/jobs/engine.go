// Package jobs is the device agent's AWS IoT Jobs engine: it talks to the
// Jobs MQTT API (notify-next, start-next, update, describe), runs the steps
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
	"sort"
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
	cfg    Config
	log    *slog.Logger
	prefix string

	qmu    sync.Mutex
	queue  []event
	wakeup chan struct{}

	// Everything below is owned by the Run goroutine.
	st       *persistedState
	doc      *jobdoc.Document
	active   *activeStep
	backoff  time.Duration
	resendAt time.Time
	flushers []flushWaiter
	stepDone chan stepOutcome
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
		prefix:   "$aws/things/" + cfg.ThingName + "/jobs/",
		wakeup:   make(chan struct{}, 1),
		st:       st,
		backoff:  cfg.ResponseTimeout,
		stepDone: make(chan stepOutcome, 1),
	}
	if st.Job != nil {
		e.doc = e.parseDoc(st.Job)
	}
	return e, nil
}

// Subscriptions returns the topic filters the agent must subscribe to
// (QoS 1) before calling OnConnect.
func (e *Engine) Subscriptions() []string {
	t := e.cfg.ThingName
	wild := func(op, suffix string) string { return e.prefix + "+/" + op + "/" + suffix }
	return []string{
		protocol.JobsNotifyNextTopic(t),
		protocol.Accepted(protocol.JobsStartNextTopic(t)),
		protocol.Rejected(protocol.JobsStartNextTopic(t)),
		wild("update", "accepted"),
		wild("update", "rejected"),
		wild("get", "accepted"),
		wild("get", "rejected"),
	}
}

// HandleMessage queues an incoming message for the engine. It never blocks
// on the engine and ignores topics that are not the thing's Jobs topics.
func (e *Engine) HandleMessage(topic string, payload []byte) {
	if !strings.HasPrefix(topic, e.prefix) {
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
		e.armResend(resend)
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
			e.heartbeat(ctx)
		case <-resend.C:
			e.resendAt = time.Time{}
			e.resendDue(ctx)
		}
		e.advance(stepCtx)
	}
}

func (e *Engine) armResend(t *time.Timer) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	if e.resendAt.IsZero() {
		return
	}
	t.Reset(max(time.Until(e.resendAt), 0))
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
		e.onConnect(ctx)
		close(ev.connect)
	case ev.opProg != nil:
		e.onOpProgress(ctx, ev.opProg)
	case ev.opFlush != nil:
		e.onOpFlush(*ev.opFlush)
	case ev.snapshot != nil:
		ev.snapshot <- snapshotOf(e.st)
	default:
		e.onMessage(ctx, ev.topic, ev.payload)
	}
}

func (e *Engine) onConnect(ctx context.Context) {
	e.backoff = e.cfg.ResponseTimeout
	switch {
	case e.st.InFlight != nil:
		e.publishInFlight(ctx)
	case e.st.Job == nil:
		e.startNext(ctx)
	default:
		// Confirm the current job is still live (it may have been
		// canceled while the agent was offline); the update pipeline
		// takes over afterwards.
		e.describe(ctx, nil)
	}
}

func (e *Engine) nextToken() string {
	e.st.TokenSeq++
	return e.cfg.ThingName + "-" + strconv.FormatInt(e.st.TokenSeq, 10)
}

// send records req as the request in flight, persists, and publishes it.
func (e *Engine) send(ctx context.Context, req *request) {
	e.st.InFlight = req
	e.save()
	e.backoff = e.cfg.ResponseTimeout
	e.publishInFlight(ctx)
}

func (e *Engine) publishInFlight(ctx context.Context) {
	req := e.st.InFlight
	if req == nil {
		return
	}
	if err := e.cfg.Publisher.Publish(ctx, req.Topic, req.Payload); err != nil {
		e.log.Warn("publish failed; will retry", "topic", req.Topic, "err", err)
	}
	e.resendAt = time.Now().Add(e.backoff)
}

// resendDue resends the request in flight after its response timeout or a
// retryable rejection, with exponential backoff.
func (e *Engine) resendDue(ctx context.Context) {
	if e.st.InFlight == nil {
		return
	}
	e.backoff = min(e.backoff*2, e.cfg.MaxBackoff)
	e.log.Info("resending request", "kind", e.st.InFlight.Kind, "token", e.st.InFlight.Token)
	e.publishInFlight(ctx)
}

func (e *Engine) retryLater() {
	e.backoff = min(e.backoff*2, e.cfg.MaxBackoff)
	e.resendAt = time.Now().Add(e.backoff)
}

func (e *Engine) clearInFlight() {
	e.st.InFlight = nil
	e.resendAt = time.Time{}
	e.backoff = e.cfg.ResponseTimeout
}

func (e *Engine) startNext(ctx context.Context) {
	if e.st.Job != nil {
		return
	}
	if e.st.InFlight != nil && e.st.InFlight.Kind == kindStartNext {
		e.publishInFlight(ctx)
		return
	}
	token := e.nextToken()
	payload, _ := json.Marshal(protocol.StartNextRequest{StepTimeoutInMinutes: e.cfg.ProgressTimeoutMinutes, ClientToken: token})
	e.send(ctx, &request{Kind: kindStartNext, Token: token, Topic: protocol.JobsStartNextTopic(e.cfg.ThingName), Payload: payload})
}

// describeRequest is DescribeJobExecution's payload.
type describeRequest struct {
	ExecutionNumber    int64  `json:"executionNumber,omitempty"`
	IncludeJobDocument bool   `json:"includeJobDocument"`
	ClientToken        string `json:"clientToken"`
}

// describeAccepted is DescribeJobExecution's accepted payload.
type describeAccepted struct {
	Execution   *protocol.JobExecution `json:"execution,omitempty"`
	Timestamp   int64                  `json:"timestamp"`
	ClientToken string                 `json:"clientToken,omitempty"`
}

// describe asks for the execution's state; conflicted is the update whose
// rejection prompted it (nil otherwise), kept for reconcile.
func (e *Engine) describe(ctx context.Context, conflicted *request) {
	job := e.st.Job
	if job == nil {
		return
	}
	token := e.nextToken()
	payload, _ := json.Marshal(describeRequest{ExecutionNumber: job.ExecutionNumber, ClientToken: token})
	req := &request{Kind: kindDescribe, Token: token, JobID: job.JobID, Topic: protocol.JobsDescribeTopic(e.cfg.ThingName, job.JobID), Payload: payload}
	if conflicted != nil {
		req.Seq, req.Status, req.Details = conflicted.Seq, conflicted.Status, conflicted.Details
	}
	e.send(ctx, req)
}

// pump sends the oldest pending update if nothing is in flight.
func (e *Engine) pump(ctx context.Context) {
	job := e.st.Job
	if job == nil || e.st.InFlight != nil || len(job.Pending) == 0 {
		return
	}
	u := job.Pending[0]
	token := e.nextToken()
	req := protocol.UpdateJobRequest{
		Status:                   u.Status,
		StatusDetails:            u.Details,
		ExpectedVersion:          job.Version,
		IncludeJobExecutionState: true,
		ExecutionNumber:          job.ExecutionNumber,
		ClientToken:              token,
	}
	if u.Status == protocol.JobInProgress {
		req.StepTimeoutInMinutes = e.cfg.ProgressTimeoutMinutes
	}
	payload, _ := json.Marshal(req)
	e.send(ctx, &request{
		Kind: kindUpdate, Token: token, JobID: job.JobID, Topic: protocol.JobsUpdateTopic(e.cfg.ThingName, job.JobID),
		Payload: payload, Seq: u.Seq, Status: u.Status, Details: u.Details,
	})
}

// change records a new status and details for the service; the caller
// persists. With coalesce, the update may be replaced by the next change
// while it is still unsent.
func (e *Engine) change(status protocol.JobStatus, details map[string]string, coalesce bool) {
	job := e.st.Job
	job.Status = status
	job.Details = clampDetails(details)
	job.ChangeSeq++
	e.queueUpdate(coalesce)
}

func (e *Engine) queueUpdate(coalesce bool) {
	job := e.st.Job
	u := pendingUpdate{Seq: job.ChangeSeq, Status: job.Status, Details: job.Details, Coalesce: coalesce}
	if n := len(job.Pending); n > 0 {
		last := job.Pending[n-1]
		inFlight := e.st.InFlight != nil && e.st.InFlight.Kind == kindUpdate && e.st.InFlight.Seq == last.Seq
		if last.Coalesce && !inFlight {
			job.Pending[n-1] = u
			return
		}
	}
	job.Pending = append(job.Pending, u)
}

// confirm records that the service holds the update with sequence seq
// (and therefore everything queued before it).
func (e *Engine) confirm(seq int64) {
	job := e.st.Job
	job.ConfirmedSeq = max(job.ConfirmedSeq, seq)
	kept := job.Pending[:0]
	for _, u := range job.Pending {
		if u.Seq > seq {
			kept = append(kept, u)
		}
	}
	job.Pending = kept
}

func (e *Engine) heartbeat(ctx context.Context) {
	job := e.st.Job
	if job == nil || job.Status != protocol.JobInProgress || e.cfg.ProgressTimeoutMinutes <= 0 || e.active == nil {
		return
	}
	// Same details, new update: renews stepTimeoutInMinutes. Not needed
	// while other updates are waiting to be sent.
	if len(job.Pending) > 0 {
		return
	}
	job.ChangeSeq++
	e.queueUpdate(true)
	e.save()
	e.pump(ctx)
}

// onMessage dispatches a Jobs API message.
func (e *Engine) onMessage(ctx context.Context, topic string, payload []byte) {
	rest := strings.TrimPrefix(topic, e.prefix)
	switch rest {
	case "notify-next":
		e.onNotifyNext(ctx, payload)
		return
	case "start-next/accepted":
		e.onStartNextAccepted(ctx, payload)
		return
	case "start-next/rejected":
		e.onRejected(ctx, kindStartNext, "", payload)
		return
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return
	}
	jobID, op, result := parts[0], parts[1], parts[2]
	kind := map[string]string{"update": kindUpdate, "get": kindDescribe}[op]
	if kind == "" {
		return
	}
	if jobID == "$next" {
		if op != "get" {
			return
		}
		kind = kindDescribeNext
	}
	switch result {
	case "accepted":
		switch kind {
		case kindUpdate:
			e.onUpdateAccepted(ctx, jobID, payload)
		case kindDescribeNext:
			e.onDescribeNextAccepted(ctx, payload)
		default:
			e.onDescribeAccepted(ctx, jobID, payload)
		}
	case "rejected":
		e.onRejected(ctx, kind, jobID, payload)
	}
}

// inFlightMatches reports whether a response with token answers the
// request in flight of kind for jobID. Responses to older requests (resent
// duplicates, answers that arrive after a restart) are ignored.
func (e *Engine) inFlightMatches(kind, jobID, token string) bool {
	req := e.st.InFlight
	return req != nil && req.Kind == kind && req.JobID == jobID && req.Token == token
}

func (e *Engine) onNotifyNext(ctx context.Context, payload []byte) {
	var msg protocol.NextJobMessage
	if err := json.Unmarshal(payload, &msg); err != nil {
		// notify-next is only a hint; one that cannot be decoded (for
		// example because of the document it carries) still says that
		// something is pending.
		e.log.Warn("notify-next could not be decoded", "err", err)
		if e.st.Job == nil {
			e.startNext(ctx)
		}
		return
	}
	job := e.st.Job
	switch {
	case job == nil && msg.Execution != nil:
		e.log.Info("job pending", "job_id", msg.Execution.JobID)
		e.startNext(ctx)
	case job != nil && (msg.Execution == nil || msg.Execution.JobID != job.JobID) && e.st.InFlight == nil:
		// Our job is no longer the next one: it may have been canceled.
		e.describe(ctx, nil)
	}
}

func (e *Engine) onStartNextAccepted(ctx context.Context, payload []byte) {
	var msg protocol.NextJobMessage
	err := json.Unmarshal(payload, &msg)
	if e.st.Job != nil {
		return
	}
	if e.st.InFlight != nil && e.st.InFlight.Kind != kindStartNext {
		return
	}
	if err != nil {
		// The job document travels as raw JSON, so only a response that
		// is not JSON at all (a document nested beyond the decoder's depth
		// limit) or has a field of the wrong type gets here. Reject the
		// execution it carries instead of asking again forever.
		if msg.Execution != nil && msg.Execution.JobID != "" {
			e.clearInFlight()
			e.adopt(ctx, msg.Execution, err.Error())
			return
		}
		e.log.Warn("start-next response could not be decoded; describing the next execution without its document", "err", err)
		e.describeNext(ctx, err.Error())
		return
	}
	e.clearInFlight()
	if msg.Execution == nil {
		e.log.Info("no pending jobs")
		e.save()
		return
	}
	e.adopt(ctx, msg.Execution, "")
}

// describeNext asks for the next execution without its document, after a
// start-next response that could not be decoded (why).
func (e *Engine) describeNext(ctx context.Context, why string) {
	token := e.nextToken()
	payload, _ := json.Marshal(describeRequest{ClientToken: token})
	e.send(ctx, &request{Kind: kindDescribeNext, Token: token, JobID: "$next", Topic: protocol.JobsDescribeTopic(e.cfg.ThingName, "$next"),
		Payload: payload, Details: map[string]string{DetailReason: why}})
}

// startNextLater makes a start-next the request in flight, sent when the
// (doubled) backoff elapses.
func (e *Engine) startNextLater() {
	token := e.nextToken()
	payload, _ := json.Marshal(protocol.StartNextRequest{StepTimeoutInMinutes: e.cfg.ProgressTimeoutMinutes, ClientToken: token})
	e.st.InFlight = &request{Kind: kindStartNext, Token: token, Topic: protocol.JobsStartNextTopic(e.cfg.ThingName), Payload: payload}
	e.save()
	e.retryLater()
}

// onDescribeNextAccepted rejects the execution whose start-next response
// could not be decoded. Start-next puts the execution it returns
// IN_PROGRESS, and this device has no job, so an IN_PROGRESS next
// execution is that one; anything else means the undecodable response was
// stale, and start-next is asked again after a backoff.
func (e *Engine) onDescribeNextAccepted(ctx context.Context, payload []byte) {
	var msg describeAccepted
	err := json.Unmarshal(payload, &msg)
	if !e.inFlightMatches(kindDescribeNext, "$next", msg.ClientToken) || e.st.Job != nil {
		return
	}
	why := e.st.InFlight.Details[DetailReason]
	x := msg.Execution
	if x == nil || x.JobID == "" || x.Status != protocol.JobInProgress {
		if err != nil {
			e.log.Warn("describe $next response could not be decoded", "err", err)
		}
		e.startNextLater()
		return
	}
	e.clearInFlight()
	e.adopt(ctx, x, why)
}

// adopt makes exec the current job, or rejects it if its document is
// invalid. unreadable, when set, is why the Jobs response carrying the
// execution could not be decoded: the job is rejected with it.
func (e *Engine) adopt(ctx context.Context, exec *protocol.JobExecution, unreadable string) {
	job := &jobState{
		JobID:           exec.JobID,
		ExecutionNumber: exec.ExecutionNumber,
		Document:        append(json.RawMessage(nil), exec.JobDocument...),
		Version:         exec.VersionNumber,
		Phase:           phaseRunning,
		Status:          protocol.JobInProgress,
		ConfirmedSeq:    0,
	}
	e.st.Job = job
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
		job.Phase = phaseFinishing
		e.change(protocol.JobRejected, map[string]string{DetailReason: reason}, false)
		e.save()
		e.pump(ctx)
		return
	}
	e.doc = doc
	log.Info("job adopted", "steps", doc.StepCount(), "plan", jobdoc.Explain(doc, e.cfg.HandlerDir))
	if _, ours := exec.StatusDetails[DetailStepIndex]; ours && exec.Status == protocol.JobInProgress {
		// The service says we were already running this job, but there
		// is no local record of it (state lost).
		job.ServiceDetails = exec.StatusDetails
		idx, _ := strconv.Atoi(exec.StatusDetails[DetailStepIndex])
		if a, ok := doc.Step(idx - 1); ok && a.Type == jobdoc.TypeOperation {
			job.Step, job.StepStarted = idx-1, true
			log.Warn("resuming operation step without local state", "step", a.Name)
		} else {
			job.Phase = phaseFinishing
			reason := fmt.Sprintf("agent lost its local job state while step %s was in progress; the job cannot be resumed safely", exec.StatusDetails[DetailStepIndex])
			e.change(protocol.JobFailed, map[string]string{DetailReason: reason}, false)
		}
	}
	e.save()
	e.pump(ctx)
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

func (e *Engine) onUpdateAccepted(ctx context.Context, jobID string, payload []byte) {
	var msg protocol.UpdateJobAccepted
	if err := json.Unmarshal(payload, &msg); err != nil {
		e.log.Warn("malformed update response", "err", err)
		return
	}
	if !e.inFlightMatches(kindUpdate, jobID, msg.ClientToken) {
		return
	}
	req := e.st.InFlight
	job := e.st.Job
	e.clearInFlight()
	if msg.ExecutionState != nil {
		job.Version = msg.ExecutionState.VersionNumber
	} else {
		job.Version++
	}
	e.confirm(req.Seq)
	if req.Status.Terminal() && job.Phase == phaseFinishing {
		e.log.Info("job finished", "job_id", job.JobID, "status", req.Status)
		e.endJob(ctx)
		return
	}
	e.save()
	e.notifyFlushers()
	e.pump(ctx)
}

func (e *Engine) onDescribeAccepted(ctx context.Context, jobID string, payload []byte) {
	var msg describeAccepted
	if err := json.Unmarshal(payload, &msg); err != nil {
		e.log.Warn("malformed describe response", "err", err)
		return
	}
	if !e.inFlightMatches(kindDescribe, jobID, msg.ClientToken) {
		return
	}
	req := e.st.InFlight
	e.clearInFlight()
	if msg.Execution == nil {
		e.dropJob(ctx, "the Jobs service no longer has the execution")
		return
	}
	var conflicted *request
	if req.Seq != 0 {
		conflicted = req
	}
	e.reconcile(ctx, &protocol.JobExecutionState{Status: msg.Execution.Status, StatusDetails: msg.Execution.StatusDetails, VersionNumber: msg.Execution.VersionNumber}, conflicted)
}

// reconcile aligns the local job with the execution state the service
// reported (after a describe or a VersionMismatch/InvalidStateTransition).
// conflicted is the update that was refused (nil after a plain describe).
// The device is authoritative for its own progress: unless the service has
// ended the execution, pending updates are (re)sent with the service's
// version.
func (e *Engine) reconcile(ctx context.Context, svc *protocol.JobExecutionState, conflicted *request) {
	job := e.st.Job
	if job == nil {
		return
	}
	if svc.Status.Terminal() {
		if job.Phase == phaseFinishing && svc.Status == job.Status {
			e.log.Info("terminal status already recorded by the service", "job_id", job.JobID, "status", svc.Status)
			e.endJob(ctx)
			return
		}
		e.dropJob(ctx, "the Jobs service reports the execution as "+string(svc.Status))
		return
	}
	job.Version = svc.VersionNumber
	switch {
	case conflicted != nil && conflicted.Status == svc.Status && mapsEqual(conflicted.Details, svc.StatusDetails):
		// The refused update was a duplicate of one the service had
		// already applied (its response was lost).
		e.confirm(conflicted.Seq)
	case len(job.Pending) == 0 && (svc.Status != job.Status || !mapsEqual(svc.StatusDetails, job.Details)):
		// The service holds something else: send the current state again.
		job.ChangeSeq++
		e.queueUpdate(true)
	}
	e.save()
	e.notifyFlushers()
	e.pump(ctx)
}

func (e *Engine) onRejected(ctx context.Context, kind, jobID string, payload []byte) {
	var msg protocol.JobsErrorResponse
	if err := json.Unmarshal(payload, &msg); err != nil {
		e.log.Warn("malformed rejection", "err", err)
		return
	}
	if !e.inFlightMatches(kind, jobID, msg.ClientToken) {
		return
	}
	log := e.log.With("kind", kind, "job_id", jobID, "error_code", msg.Code, "error_message", msg.Message)
	switch msg.Code {
	case protocol.ErrCodeThrottling, protocol.ErrCodeRequestThrottled, protocol.ErrCodeInternalError, protocol.ErrCodeServiceUnavailable:
		log.Warn("request rejected, retrying")
		e.retryLater()
		return
	}
	if kind == kindStartNext || kind == kindDescribeNext {
		log.Warn("request rejected, retrying later")
		e.retryLater()
		return
	}
	switch msg.Code {
	case protocol.ErrCodeVersionMismatch, protocol.ErrCodeInvalidStateTransition:
		log.Info("update conflicts with the service's state; reconciling")
		conflicted := e.st.InFlight
		e.clearInFlight()
		if msg.ExecutionState != nil {
			e.reconcile(ctx, msg.ExecutionState, conflicted)
		} else {
			e.describe(ctx, conflicted)
		}
	case protocol.ErrCodeTerminalStateReached:
		e.clearInFlight()
		if e.st.Job != nil && e.st.Job.Phase == phaseFinishing {
			log.Info("execution already terminal on the service")
			e.endJob(ctx)
		} else {
			e.dropJob(ctx, "the Jobs service reports the execution terminal")
		}
	case protocol.ErrCodeResourceNotFound:
		e.clearInFlight()
		e.dropJob(ctx, "the Jobs service does not know the execution")
	default:
		log.Error("request rejected; retrying with backoff")
		e.retryLater()
	}
}

// endJob forgets the finished job (its terminal status is on the service)
// and asks for the next one.
func (e *Engine) endJob(ctx context.Context) {
	jobID := e.st.Job.JobID
	e.st.Job = nil
	e.doc = nil
	e.clearInFlight()
	e.save()
	e.failFlushers(jobID)
	e.startNext(ctx)
}

// dropJob abandons the current job because the service ended it
// (canceled, removed, timed out): the running step is canceled and no
// status is sent.
func (e *Engine) dropJob(ctx context.Context, why string) {
	if e.st.Job == nil {
		return
	}
	e.log.Warn("dropping job", "job_id", e.st.Job.JobID, "reason", why)
	if e.active != nil && e.active.jobID == e.st.Job.JobID {
		e.active.cancel()
	}
	e.endJob(ctx)
}

func (e *Engine) notifyFlushers() {
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

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// sortedKeys is used for stable logs and clamping.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
