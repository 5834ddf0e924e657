package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	simjobs "github.com/iot-fleet/iot-fleet/sim/jobs"
)

// fakeJobs is an in-memory AWS IoT Jobs service for one thing, speaking the
// Jobs MQTT API: start-next, update (expectedVersion, state transitions,
// statusDetails limits), describe, notify-next. It is the engine's partner
// in the tests, not a stand-in for the engine.
type fakeJobs struct {
	mu    sync.Mutex
	thing string
	execs []*fakeExec
	// out delivers a message to the device (set by the transport).
	out func(topic string, payload []byte)
	// omitExecutionState leaves executionState out of VersionMismatch
	// rejections, so the device must describe.
	omitExecutionState bool
	lastNotified       string
	startNexts         int
	describeNexts      int
	// invalidDetails are the reasons of updates rejected for their
	// statusDetails.
	invalidDetails []string
}

type fakeExec struct {
	JobID string
	// Doc is the document's text, sent verbatim (it need not be valid:
	// the tests send what a broken or hostile service could).
	Doc         json.RawMessage
	Status      protocol.JobStatus
	Details     map[string]string
	Version     int64
	ExecNum     int64
	StepTimeout int64
	// History is every accepted update, in order.
	History []protocol.UpdateJobRequest
	// Terminal counts transitions into a terminal status.
	Terminal int
}

func newFakeJobs(thing string) *fakeJobs { return &fakeJobs{thing: thing} }

func (f *fakeJobs) addJob(t *testing.T, id, doc string) {
	t.Helper()
	f.mu.Lock()
	f.execs = append(f.execs, &fakeExec{JobID: id, Doc: json.RawMessage(doc), Status: protocol.JobQueued, Version: 1, ExecNum: 1})
	msgs := f.notifyLocked()
	f.mu.Unlock()
	f.emit(msgs)
}

type outMsg struct {
	topic   string
	payload []byte
}

func (f *fakeJobs) emit(msgs []outMsg) {
	for _, m := range msgs {
		f.out(m.topic, m.payload)
	}
}

func (f *fakeJobs) find(id string) *fakeExec {
	for _, e := range f.execs {
		if e.JobID == id {
			return e
		}
	}
	return nil
}

// get returns a copy of the execution.
func (f *fakeJobs) get(id string) fakeExec {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.find(id)
	if e == nil {
		return fakeExec{}
	}
	c := *e
	c.History = append([]protocol.UpdateJobRequest(nil), e.History...)
	return c
}

func (f *fakeJobs) startNextCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.startNexts
}

func (f *fakeJobs) next() *fakeExec {
	for _, e := range f.execs {
		if e.Status == protocol.JobInProgress {
			return e
		}
	}
	for _, e := range f.execs {
		if e.Status == protocol.JobQueued {
			return e
		}
	}
	return nil
}

func (e *fakeExec) execution(thing string, withDoc bool) *protocol.JobExecution {
	x := &protocol.JobExecution{JobID: e.JobID, ThingName: thing, Status: e.Status, StatusDetails: copyMap(e.Details),
		VersionNumber: e.Version, ExecutionNumber: e.ExecNum}
	if withDoc {
		x.JobDocument = json.RawMessage(docPlaceholder)
	}
	return x
}

// docPlaceholder stands for the document in a marshaled response until
// withDoc splices the document's exact text in (encoding/json would
// reformat it, and refuse text that is not JSON).
const docPlaceholder = `"@@jobDocument@@"`

func (e *fakeExec) withDoc(b []byte) []byte {
	return bytes.Replace(b, []byte(docPlaceholder), e.Doc, 1)
}

func (e *fakeExec) state() *protocol.JobExecutionState {
	return &protocol.JobExecutionState{Status: e.Status, StatusDetails: copyMap(e.Details), VersionNumber: e.Version}
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// notifyLocked emits notify-next when the next pending execution changed.
func (f *fakeJobs) notifyLocked() []outMsg {
	n := f.next()
	id := ""
	if n != nil {
		id = n.JobID
	}
	if id == f.lastNotified {
		return nil
	}
	f.lastNotified = id
	msg := protocol.NextJobMessage{Timestamp: time.Now().Unix()}
	payload := mustJSON(msg)
	if n != nil {
		msg.Execution = n.execution(f.thing, true)
		payload = n.withDoc(mustJSON(msg))
	}
	return []outMsg{{protocol.JobsNotifyNextTopic(f.thing), payload}}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func (f *fakeJobs) reject(topic, code, token string, st *protocol.JobExecutionState) outMsg {
	return outMsg{protocol.Rejected(topic), mustJSON(protocol.JobsErrorResponse{Code: code, Message: code, ClientToken: token,
		Timestamp: time.Now().Unix(), ExecutionState: st})}
}

// handle processes a request published by the device.
func (f *fakeJobs) handle(topic string, payload []byte) {
	f.mu.Lock()
	msgs := f.handleLocked(topic, payload)
	f.mu.Unlock()
	f.emit(msgs)
}

func (f *fakeJobs) handleLocked(topic string, payload []byte) []outMsg {
	prefix := "$aws/things/" + f.thing + "/jobs/"
	rest := strings.TrimPrefix(topic, prefix)
	if rest == "start-next" {
		var req protocol.StartNextRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			return []outMsg{f.reject(topic, protocol.ErrCodeInvalidJSON, "", nil)}
		}
		f.startNexts++
		resp := protocol.NextJobMessage{Timestamp: time.Now().Unix(), ClientToken: req.ClientToken}
		payload := mustJSON(resp)
		if n := f.next(); n != nil {
			if n.Status == protocol.JobQueued {
				n.Status = protocol.JobInProgress
				n.Version++
			}
			if req.StepTimeoutInMinutes > 0 {
				n.StepTimeout = req.StepTimeoutInMinutes
			}
			resp.Execution = n.execution(f.thing, true)
			payload = n.withDoc(mustJSON(resp))
		}
		return append([]outMsg{{protocol.Accepted(topic), payload}}, f.notifyLocked()...)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 2 {
		return nil
	}
	e := f.find(parts[0])
	if parts[0] == "$next" && parts[1] == "get" {
		var req describeRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			return []outMsg{f.reject(topic, protocol.ErrCodeInvalidJSON, "", nil)}
		}
		f.describeNexts++
		resp := describeAccepted{Timestamp: time.Now().Unix(), ClientToken: req.ClientToken}
		n := f.next()
		if n != nil {
			resp.Execution = n.execution(f.thing, req.IncludeJobDocument)
			return []outMsg{{protocol.Accepted(topic), n.withDoc(mustJSON(resp))}}
		}
		return []outMsg{{protocol.Accepted(topic), mustJSON(resp)}}
	}
	switch parts[1] {
	case "get":
		var req describeRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			return []outMsg{f.reject(topic, protocol.ErrCodeInvalidJSON, "", nil)}
		}
		if e == nil {
			return []outMsg{f.reject(topic, protocol.ErrCodeResourceNotFound, req.ClientToken, nil)}
		}
		if e.Status.Terminal() {
			return []outMsg{f.reject(topic, protocol.ErrCodeTerminalStateReached, req.ClientToken, nil)}
		}
		return []outMsg{{protocol.Accepted(topic), e.withDoc(mustJSON(describeAccepted{Execution: e.execution(f.thing, req.IncludeJobDocument),
			Timestamp: time.Now().Unix(), ClientToken: req.ClientToken}))}}
	case "update":
		var req protocol.UpdateJobRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			return []outMsg{f.reject(topic, protocol.ErrCodeInvalidJSON, "", nil)}
		}
		if e == nil {
			return []outMsg{f.reject(topic, protocol.ErrCodeResourceNotFound, req.ClientToken, nil)}
		}
		// The local IoT Core's check of AWS's documented limits.
		if err := simjobs.ValidateStatusDetails(req.StatusDetails); err != nil {
			f.invalidDetails = append(f.invalidDetails, err.Error())
			return []outMsg{f.reject(topic, protocol.ErrCodeInvalidRequest, req.ClientToken, nil)}
		}
		switch req.Status {
		case protocol.JobInProgress, protocol.JobSucceeded, protocol.JobFailed, protocol.JobRejected:
		default:
			return []outMsg{f.reject(topic, protocol.ErrCodeInvalidRequest, req.ClientToken, nil)}
		}
		if e.Status.Terminal() {
			return []outMsg{f.reject(topic, protocol.ErrCodeInvalidStateTransition, req.ClientToken, e.state())}
		}
		if req.ExpectedVersion != 0 && req.ExpectedVersion != e.Version {
			var st *protocol.JobExecutionState
			if !f.omitExecutionState {
				st = e.state()
			}
			return []outMsg{f.reject(topic, protocol.ErrCodeVersionMismatch, req.ClientToken, st)}
		}
		e.Status = req.Status
		if req.StatusDetails != nil {
			e.Details = copyMap(req.StatusDetails)
		}
		if req.StepTimeoutInMinutes > 0 {
			e.StepTimeout = req.StepTimeoutInMinutes
		}
		e.Version++
		e.History = append(e.History, req)
		if e.Status.Terminal() {
			e.Terminal++
		}
		resp := protocol.UpdateJobAccepted{Timestamp: time.Now().Unix(), ClientToken: req.ClientToken}
		if req.IncludeJobExecutionState {
			resp.ExecutionState = e.state()
		}
		return append([]outMsg{{protocol.Accepted(topic), mustJSON(resp)}}, f.notifyLocked()...)
	}
	return nil
}

// updates returns the accepted updates of job id, in order.
func (f *fakeJobs) updates(id string) []fakeUpdate {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeUpdate
	if e := f.find(id); e != nil {
		for _, u := range e.History {
			out = append(out, fakeUpdate{Status: u.Status, Details: copyMap(u.StatusDetails)})
		}
	}
	return out
}

// rejectedDetails returns the reasons of updates rejected for their
// statusDetails.
func (f *fakeJobs) rejectedDetails() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.invalidDetails...)
}

type fakeUpdate struct {
	Status  protocol.JobStatus
	Details map[string]string
}

// cancel cancels an execution as the operator would (CancelJobExecution).
func (f *fakeJobs) cancel(id string) {
	f.mu.Lock()
	e := f.find(id)
	e.Status = protocol.JobCanceled
	e.Version++
	e.Terminal++
	msgs := f.notifyLocked()
	f.mu.Unlock()
	f.emit(msgs)
}

// touch changes an execution's version behind the device's back (another
// writer of the execution), so the device's next update mismatches.
func (f *fakeJobs) touch(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.find(id)
	e.Version++
	e.Details = map[string]string{"touchedBy": "operator"}
}

// transport is the test Publisher: an in-order durable outbox in front of
// the fake service, and a broker that delivers the service's messages to
// the engine when they match one of its subscriptions.
type transport struct {
	mu            sync.Mutex
	svc           *fakeJobs
	online        bool
	pending       []outMsg
	engine        *Engine
	dropResponses bool
	published     []string
}

func newTransport(svc *fakeJobs) *transport {
	tr := &transport{svc: svc, online: true}
	svc.out = tr.deliver
	return tr
}

func (tr *transport) Publish(ctx context.Context, topic string, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tr.mu.Lock()
	tr.published = append(tr.published, topic)
	if !tr.online || len(tr.pending) > 0 {
		tr.pending = append(tr.pending, outMsg{topic, append([]byte(nil), payload...)})
		tr.mu.Unlock()
		return nil
	}
	tr.mu.Unlock()
	tr.svc.handle(topic, payload)
	return nil
}

func (tr *transport) deliver(topic string, payload []byte) {
	tr.mu.Lock()
	e, online, drop := tr.engine, tr.online, tr.dropResponses
	tr.mu.Unlock()
	if e == nil || !online || drop {
		return
	}
	for _, filter := range e.Subscriptions() {
		if topicMatches(filter, topic) {
			e.HandleMessage(topic, payload)
			return
		}
	}
	panic(fmt.Sprintf("service message on %s matches no subscription", topic))
}

func (tr *transport) setOnline(on bool) {
	tr.mu.Lock()
	tr.online = on
	tr.mu.Unlock()
	if on {
		tr.flush()
	}
}

// flush delivers the outbox in order.
func (tr *transport) flush() {
	for {
		tr.mu.Lock()
		if !tr.online || len(tr.pending) == 0 {
			tr.mu.Unlock()
			return
		}
		m := tr.pending[0]
		tr.pending = tr.pending[1:]
		tr.mu.Unlock()
		tr.svc.handle(m.topic, m.payload)
	}
}

func (tr *transport) setEngine(e *Engine) {
	tr.mu.Lock()
	tr.engine = e
	tr.mu.Unlock()
}

func (tr *transport) setDropResponses(d bool) {
	tr.mu.Lock()
	tr.dropResponses = d
	tr.mu.Unlock()
}

func (tr *transport) pendingCount() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.pending)
}

// topicMatches implements MQTT topic filter matching (+ and #).
func topicMatches(filter, topic string) bool {
	fp := strings.Split(filter, "/")
	tp := strings.Split(topic, "/")
	for i, f := range fp {
		if f == "#" {
			return true
		}
		if i >= len(tp) {
			return false
		}
		if f != "+" && f != tp[i] {
			return false
		}
	}
	return len(fp) == len(tp)
}
