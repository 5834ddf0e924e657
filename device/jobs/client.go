package jobs

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// This file is the Jobs MQTT protocol client: start-next, update,
// describe, notify-next, client tokens, expectedVersion, resends with
// backoff, and what every rejection means. It knows nothing of job
// documents or steps; the step executor (exec.go) knows nothing of the
// protocol. They meet through two narrow surfaces:
//
//   - the executor tells the client what the service should hold for the
//     current job (report, heartbeat) and asks it to send (pump);
//   - the client hands the executor each execution it takes on (adopt),
//     tells it when the service has accepted updates (confirmed) and when
//     the current job is over (jobEnded).
//
// Both share the persisted state (state.go), each owning its own fields,
// so that one atomic write records a transition of either.

// executor is what the protocol client needs from the step executor.
type executor interface {
	// adopt takes on exec, which the service has just put IN_PROGRESS for
	// this device and which is already the current job (st.Job holds its
	// protocol fields). unreadable, when set, is why the Jobs response
	// carrying it could not be decoded: the job must be rejected with it.
	adopt(ctx context.Context, exec *protocol.JobExecution, unreadable string)
	// confirmed: the service accepted updates up to st.Job.ConfirmedSeq.
	confirmed()
	// jobEnded: the current job jobID is over, either because its terminal
	// status is on the service (dropped false) or because the service
	// ended it (canceled, removed, timed out: dropped true, why). A
	// running step must stop; the job is forgotten right after.
	jobEnded(jobID string, dropped bool, why string)
}

// clientConfig is the part of Config the protocol client uses.
type clientConfig struct {
	ProgressTimeoutMinutes int64
	ResponseTimeout        time.Duration
	MaxBackoff             time.Duration
}

// client is the Jobs protocol client. It runs on the engine's Run
// goroutine (no locking).
type client struct {
	thing  string
	prefix string
	cfg    clientConfig
	pub    Publisher
	log    *slog.Logger
	st     *persistedState
	save   func() bool
	exec   executor

	backoff  time.Duration
	resendAt time.Time
}

func newClient(thing string, cfg clientConfig, pub Publisher, log *slog.Logger, st *persistedState, save func() bool) *client {
	return &client{
		thing: thing, prefix: "$aws/things/" + thing + "/jobs/", cfg: cfg, pub: pub, log: log, st: st, save: save,
		backoff: cfg.ResponseTimeout,
	}
}

// subscriptions are the topic filters of the Jobs API responses.
func (c *client) subscriptions() []string {
	t := c.thing
	wild := func(op, suffix string) string { return c.prefix + "+/" + op + "/" + suffix }
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

// onConnect publishes start-next when idle, or resends the pending request
// of the current job.
func (c *client) onConnect(ctx context.Context) {
	c.backoff = c.cfg.ResponseTimeout
	switch {
	case c.st.InFlight != nil:
		c.publishInFlight(ctx)
	case c.st.Job == nil:
		c.startNext(ctx)
	default:
		// Confirm the current job is still live (it may have been
		// canceled while the agent was offline); the update pipeline
		// takes over afterwards.
		c.describe(ctx, nil)
	}
}

// takeOn makes exec the current job with the protocol's fields and hands
// it to the executor.
func (c *client) takeOn(ctx context.Context, exec *protocol.JobExecution, unreadable string) {
	c.st.Job = &jobState{
		JobID:           exec.JobID,
		ExecutionNumber: exec.ExecutionNumber,
		Version:         exec.VersionNumber,
		Status:          protocol.JobInProgress,
	}
	c.exec.adopt(ctx, exec, unreadable)
}

func (c *client) armResend(t *time.Timer) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	if c.resendAt.IsZero() {
		return
	}
	t.Reset(max(time.Until(c.resendAt), 0))
}

func (c *client) nextToken() string {
	c.st.TokenSeq++
	return c.thing + "-" + strconv.FormatInt(c.st.TokenSeq, 10)
}

// send records req as the request in flight, persists, and publishes it.
func (c *client) send(ctx context.Context, req *request) {
	c.st.InFlight = req
	c.save()
	c.backoff = c.cfg.ResponseTimeout
	c.publishInFlight(ctx)
}

func (c *client) publishInFlight(ctx context.Context) {
	req := c.st.InFlight
	if req == nil {
		return
	}
	if err := c.pub.Publish(ctx, req.Topic, req.Payload); err != nil {
		c.log.Warn("publish failed; will retry", "topic", req.Topic, "err", err)
	}
	c.resendAt = time.Now().Add(c.backoff)
}

// resendDue resends the request in flight after its response timeout or a
// retryable rejection, with exponential backoff.
func (c *client) resendDue(ctx context.Context) {
	if c.st.InFlight == nil {
		return
	}
	c.backoff = min(c.backoff*2, c.cfg.MaxBackoff)
	c.log.Info("resending request", "kind", c.st.InFlight.Kind, "token", c.st.InFlight.Token)
	c.publishInFlight(ctx)
}

func (c *client) retryLater() {
	c.backoff = min(c.backoff*2, c.cfg.MaxBackoff)
	c.resendAt = time.Now().Add(c.backoff)
}

func (c *client) clearInFlight() {
	c.st.InFlight = nil
	c.resendAt = time.Time{}
	c.backoff = c.cfg.ResponseTimeout
}

func (c *client) startNext(ctx context.Context) {
	if c.st.Job != nil {
		return
	}
	if c.st.InFlight != nil && c.st.InFlight.Kind == kindStartNext {
		c.publishInFlight(ctx)
		return
	}
	token := c.nextToken()
	payload, _ := json.Marshal(protocol.StartNextRequest{StepTimeoutInMinutes: c.cfg.ProgressTimeoutMinutes, ClientToken: token})
	c.send(ctx, &request{Kind: kindStartNext, Token: token, Topic: protocol.JobsStartNextTopic(c.thing), Payload: payload})
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
func (c *client) describe(ctx context.Context, conflicted *request) {
	job := c.st.Job
	if job == nil {
		return
	}
	token := c.nextToken()
	payload, _ := json.Marshal(describeRequest{ExecutionNumber: job.ExecutionNumber, ClientToken: token})
	req := &request{Kind: kindDescribe, Token: token, JobID: job.JobID, Topic: protocol.JobsDescribeTopic(c.thing, job.JobID), Payload: payload}
	if conflicted != nil {
		req.Seq, req.Status, req.Details = conflicted.Seq, conflicted.Status, conflicted.Details
	}
	c.send(ctx, req)
}

// pump sends the oldest pending update if nothing is in flight.
func (c *client) pump(ctx context.Context) {
	job := c.st.Job
	if job == nil || c.st.InFlight != nil || len(job.Pending) == 0 {
		return
	}
	u := job.Pending[0]
	token := c.nextToken()
	req := protocol.UpdateJobRequest{
		Status:                   u.Status,
		StatusDetails:            u.Details,
		ExpectedVersion:          job.Version,
		IncludeJobExecutionState: true,
		ExecutionNumber:          job.ExecutionNumber,
		ClientToken:              token,
	}
	if u.Status == protocol.JobInProgress {
		req.StepTimeoutInMinutes = c.cfg.ProgressTimeoutMinutes
	}
	payload, _ := json.Marshal(req)
	c.send(ctx, &request{
		Kind: kindUpdate, Token: token, JobID: job.JobID, Topic: protocol.JobsUpdateTopic(c.thing, job.JobID),
		Payload: payload, Seq: u.Seq, Status: u.Status, Details: u.Details,
	})
}

// report records a new status and details for the service; the caller
// persists. With coalesce, the update may be replaced by the next change
// while it is still unsent.
func (c *client) report(status protocol.JobStatus, details map[string]string, coalesce bool) {
	job := c.st.Job
	job.Status = status
	job.Details = clampDetails(details)
	job.ChangeSeq++
	c.queueUpdate(coalesce)
}

func (c *client) queueUpdate(coalesce bool) {
	job := c.st.Job
	u := pendingUpdate{Seq: job.ChangeSeq, Status: job.Status, Details: job.Details, Coalesce: coalesce}
	if n := len(job.Pending); n > 0 {
		last := job.Pending[n-1]
		inFlight := c.st.InFlight != nil && c.st.InFlight.Kind == kindUpdate && c.st.InFlight.Seq == last.Seq
		if last.Coalesce && !inFlight {
			job.Pending[n-1] = u
			return
		}
	}
	job.Pending = append(job.Pending, u)
}

// confirm records that the service holds the update with sequence seq
// (and therefore everything queued before it).
func (c *client) confirm(seq int64) {
	job := c.st.Job
	job.ConfirmedSeq = max(job.ConfirmedSeq, seq)
	kept := job.Pending[:0]
	for _, u := range job.Pending {
		if u.Seq > seq {
			kept = append(kept, u)
		}
	}
	job.Pending = kept
}

// heartbeat renews the service's step timeout while a step runs (the
// executor calls it only then).
func (c *client) heartbeat(ctx context.Context) {
	job := c.st.Job
	if job == nil || job.Status != protocol.JobInProgress || c.cfg.ProgressTimeoutMinutes <= 0 {
		return
	}
	// Same details, new update: renews stepTimeoutInMinutes. Not needed
	// while other updates are waiting to be sent.
	if len(job.Pending) > 0 {
		return
	}
	job.ChangeSeq++
	c.queueUpdate(true)
	c.save()
	c.pump(ctx)
}

// onMessage dispatches a Jobs API message.
func (c *client) onMessage(ctx context.Context, topic string, payload []byte) {
	rest := strings.TrimPrefix(topic, c.prefix)
	switch rest {
	case "notify-next":
		c.onNotifyNext(ctx, payload)
		return
	case "start-next/accepted":
		c.onStartNextAccepted(ctx, payload)
		return
	case "start-next/rejected":
		c.onRejected(ctx, kindStartNext, "", payload)
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
			c.onUpdateAccepted(ctx, jobID, payload)
		case kindDescribeNext:
			c.onDescribeNextAccepted(ctx, payload)
		default:
			c.onDescribeAccepted(ctx, jobID, payload)
		}
	case "rejected":
		c.onRejected(ctx, kind, jobID, payload)
	}
}

// inFlightMatches reports whether a response with token answers the
// request in flight of kind for jobID. Responses to older requests (resent
// duplicates, answers that arrive after a restart) are ignored.
func (c *client) inFlightMatches(kind, jobID, token string) bool {
	req := c.st.InFlight
	return req != nil && req.Kind == kind && req.JobID == jobID && req.Token == token
}

func (c *client) onNotifyNext(ctx context.Context, payload []byte) {
	var msg protocol.NextJobMessage
	if err := json.Unmarshal(payload, &msg); err != nil {
		// notify-next is only a hint; one that cannot be decoded (for
		// example because of the document it carries) still says that
		// something is pending.
		c.log.Warn("notify-next could not be decoded", "err", err)
		if c.st.Job == nil {
			c.startNext(ctx)
		}
		return
	}
	job := c.st.Job
	switch {
	case job == nil && msg.Execution != nil:
		c.log.Info("job pending", "job_id", msg.Execution.JobID)
		c.startNext(ctx)
	case job != nil && (msg.Execution == nil || msg.Execution.JobID != job.JobID) && c.st.InFlight == nil:
		// Our job is no longer the next one: it may have been canceled.
		c.describe(ctx, nil)
	}
}

func (c *client) onStartNextAccepted(ctx context.Context, payload []byte) {
	var msg protocol.NextJobMessage
	err := json.Unmarshal(payload, &msg)
	if c.st.Job != nil {
		return
	}
	if c.st.InFlight != nil && c.st.InFlight.Kind != kindStartNext {
		return
	}
	if err != nil {
		// The job document travels as raw JSON, so only a response that
		// is not JSON at all (a document nested beyond the decoder's depth
		// limit) or has a field of the wrong type gets here. Reject the
		// execution it carries instead of asking again forever.
		if msg.Execution != nil && msg.Execution.JobID != "" {
			c.clearInFlight()
			c.takeOn(ctx, msg.Execution, err.Error())
			return
		}
		c.log.Warn("start-next response could not be decoded; describing the next execution without its document", "err", err)
		c.describeNext(ctx, err.Error())
		return
	}
	c.clearInFlight()
	if msg.Execution == nil {
		c.log.Info("no pending jobs")
		c.save()
		return
	}
	c.takeOn(ctx, msg.Execution, "")
}

// describeNext asks for the next execution without its document, after a
// start-next response that could not be decoded (why).
func (c *client) describeNext(ctx context.Context, why string) {
	token := c.nextToken()
	payload, _ := json.Marshal(describeRequest{ClientToken: token})
	c.send(ctx, &request{Kind: kindDescribeNext, Token: token, JobID: "$next", Topic: protocol.JobsDescribeTopic(c.thing, "$next"),
		Payload: payload, Details: map[string]string{DetailReason: why}})
}

// startNextLater makes a start-next the request in flight, sent when the
// (doubled) backoff elapses.
func (c *client) startNextLater() {
	token := c.nextToken()
	payload, _ := json.Marshal(protocol.StartNextRequest{StepTimeoutInMinutes: c.cfg.ProgressTimeoutMinutes, ClientToken: token})
	c.st.InFlight = &request{Kind: kindStartNext, Token: token, Topic: protocol.JobsStartNextTopic(c.thing), Payload: payload}
	c.save()
	c.retryLater()
}

// onDescribeNextAccepted rejects the execution whose start-next response
// could not be decoded. Start-next puts the execution it returns
// IN_PROGRESS, and this device has no job, so an IN_PROGRESS next
// execution is that one; anything else means the undecodable response was
// stale, and start-next is asked again after a backoff.
func (c *client) onDescribeNextAccepted(ctx context.Context, payload []byte) {
	var msg describeAccepted
	err := json.Unmarshal(payload, &msg)
	if !c.inFlightMatches(kindDescribeNext, "$next", msg.ClientToken) || c.st.Job != nil {
		return
	}
	why := c.st.InFlight.Details[DetailReason]
	x := msg.Execution
	if x == nil || x.JobID == "" || x.Status != protocol.JobInProgress {
		if err != nil {
			c.log.Warn("describe $next response could not be decoded", "err", err)
		}
		c.startNextLater()
		return
	}
	c.clearInFlight()
	c.takeOn(ctx, x, why)
}

func (c *client) onUpdateAccepted(ctx context.Context, jobID string, payload []byte) {
	var msg protocol.UpdateJobAccepted
	if err := json.Unmarshal(payload, &msg); err != nil {
		c.log.Warn("malformed update response", "err", err)
		return
	}
	if !c.inFlightMatches(kindUpdate, jobID, msg.ClientToken) {
		return
	}
	req := c.st.InFlight
	job := c.st.Job
	c.clearInFlight()
	if msg.ExecutionState != nil {
		job.Version = msg.ExecutionState.VersionNumber
	} else {
		job.Version++
	}
	c.confirm(req.Seq)
	if req.Status.Terminal() && job.Status.Terminal() {
		c.log.Info("job finished", "job_id", job.JobID, "status", req.Status)
		c.endJob(ctx)
		return
	}
	c.save()
	c.exec.confirmed()
	c.pump(ctx)
}

func (c *client) onDescribeAccepted(ctx context.Context, jobID string, payload []byte) {
	var msg describeAccepted
	if err := json.Unmarshal(payload, &msg); err != nil {
		c.log.Warn("malformed describe response", "err", err)
		return
	}
	if !c.inFlightMatches(kindDescribe, jobID, msg.ClientToken) {
		return
	}
	req := c.st.InFlight
	c.clearInFlight()
	if msg.Execution == nil {
		c.dropJob(ctx, "the Jobs service no longer has the execution")
		return
	}
	var conflicted *request
	if req.Seq != 0 {
		conflicted = req
	}
	c.reconcile(ctx, &protocol.JobExecutionState{Status: msg.Execution.Status, StatusDetails: msg.Execution.StatusDetails, VersionNumber: msg.Execution.VersionNumber}, conflicted)
}

// reconcile aligns the local job with the execution state the service
// reported (after a describe or a VersionMismatch/InvalidStateTransition).
// conflicted is the update that was refused (nil after a plain describe).
// The device is authoritative for its own progress: unless the service has
// ended the execution, pending updates are (re)sent with the service's
// version.
func (c *client) reconcile(ctx context.Context, svc *protocol.JobExecutionState, conflicted *request) {
	job := c.st.Job
	if job == nil {
		return
	}
	if svc.Status.Terminal() {
		if job.Status.Terminal() && svc.Status == job.Status {
			c.log.Info("terminal status already recorded by the service", "job_id", job.JobID, "status", svc.Status)
			c.endJob(ctx)
			return
		}
		c.dropJob(ctx, "the Jobs service reports the execution as "+string(svc.Status))
		return
	}
	job.Version = svc.VersionNumber
	switch {
	case conflicted != nil && conflicted.Status == svc.Status && maps.Equal(conflicted.Details, svc.StatusDetails):
		// The refused update was a duplicate of one the service had
		// already applied (its response was lost).
		c.confirm(conflicted.Seq)
	case len(job.Pending) == 0 && (svc.Status != job.Status || !maps.Equal(svc.StatusDetails, job.Details)):
		// The service holds something else: send the current state again.
		job.ChangeSeq++
		c.queueUpdate(true)
	}
	c.save()
	c.exec.confirmed()
	c.pump(ctx)
}

func (c *client) onRejected(ctx context.Context, kind, jobID string, payload []byte) {
	var msg protocol.JobsErrorResponse
	if err := json.Unmarshal(payload, &msg); err != nil {
		c.log.Warn("malformed rejection", "err", err)
		return
	}
	if !c.inFlightMatches(kind, jobID, msg.ClientToken) {
		return
	}
	log := c.log.With("kind", kind, "job_id", jobID, "error_code", msg.Code, "error_message", msg.Message)
	switch msg.Code {
	case protocol.ErrCodeThrottling, protocol.ErrCodeRequestThrottled, protocol.ErrCodeInternalError, protocol.ErrCodeServiceUnavailable:
		log.Warn("request rejected, retrying")
		c.retryLater()
		return
	}
	if kind == kindStartNext || kind == kindDescribeNext {
		log.Warn("request rejected, retrying later")
		c.retryLater()
		return
	}
	switch msg.Code {
	case protocol.ErrCodeVersionMismatch, protocol.ErrCodeInvalidStateTransition:
		log.Info("update conflicts with the service's state; reconciling")
		conflicted := c.st.InFlight
		c.clearInFlight()
		if msg.ExecutionState != nil {
			c.reconcile(ctx, msg.ExecutionState, conflicted)
		} else {
			c.describe(ctx, conflicted)
		}
	case protocol.ErrCodeTerminalStateReached:
		c.clearInFlight()
		if c.st.Job != nil && c.st.Job.Status.Terminal() {
			log.Info("execution already terminal on the service")
			c.endJob(ctx)
		} else {
			c.dropJob(ctx, "the Jobs service reports the execution terminal")
		}
	case protocol.ErrCodeResourceNotFound:
		c.clearInFlight()
		c.dropJob(ctx, "the Jobs service does not know the execution")
	default:
		log.Error("request rejected; retrying with backoff")
		c.retryLater()
	}
}

// endJob forgets the finished job (its terminal status is on the service)
// and asks for the next one.
func (c *client) endJob(ctx context.Context) { c.end(ctx, false, "") }

// dropJob abandons the current job because the service ended it
// (canceled, removed, timed out): the running step is canceled and no
// status is sent.
func (c *client) dropJob(ctx context.Context, why string) {
	if c.st.Job == nil {
		return
	}
	c.log.Warn("dropping job", "job_id", c.st.Job.JobID, "reason", why)
	c.end(ctx, true, why)
}

func (c *client) end(ctx context.Context, dropped bool, why string) {
	c.exec.jobEnded(c.st.Job.JobID, dropped, why)
	c.st.Job = nil
	c.clearInFlight()
	c.save()
	c.startNext(ctx)
}
