package agent

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/internal/testbroker"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// jobsService is a minimal AWS IoT Jobs MQTT API for one queued job: enough
// to check that the agent wires the engine to the connection (subscriptions
// with handlers, on-connect start-next) and to the outbox (updates).
type jobsService struct {
	b   *testbroker.Broker
	doc json.RawMessage

	mu       sync.Mutex
	exec     *protocol.JobExecution
	updates  []protocol.UpdateJobRequest
	terminal chan protocol.JobStatus
}

func newJobsService(t *testing.T, b *testbroker.Broker, doc map[string]any) *jobsService {
	rawDoc, err := json.Marshal(doc)
	require.NoError(t, err)
	s := &jobsService{b: b, doc: rawDoc, terminal: make(chan protocol.JobStatus, 4)}
	b.Serve(t, "$aws/things/+/jobs/start-next", s.startNext)
	b.Serve(t, "$aws/things/+/jobs/+/update", s.update)
	b.Serve(t, "$aws/things/+/jobs/+/get", s.describe)
	return s
}

func (s *jobsService) startNext(from, topic string, payload []byte) {
	var req protocol.StartNextRequest
	_ = json.Unmarshal(payload, &req)
	thing := strings.Split(topic, "/")[2]
	s.mu.Lock()
	if s.exec == nil {
		s.exec = &protocol.JobExecution{JobID: "job-1", ThingName: thing, JobDocument: s.doc, Status: protocol.JobInProgress, VersionNumber: 1, ExecutionNumber: 1}
	}
	var msg protocol.NextJobMessage
	msg.ClientToken, msg.Timestamp = req.ClientToken, time.Now().Unix()
	if !s.exec.Status.Terminal() {
		cp := *s.exec
		msg.Execution = &cp
	}
	s.mu.Unlock()
	s.b.Reply(from, protocol.Accepted(topic), msg)
}

func (s *jobsService) update(from, topic string, payload []byte) {
	var req protocol.UpdateJobRequest
	if err := json.Unmarshal(payload, &req); err != nil {
		return
	}
	s.mu.Lock()
	s.updates = append(s.updates, req)
	if s.exec == nil || s.exec.Status.Terminal() {
		st := protocol.JobExecutionState{}
		if s.exec != nil {
			st = protocol.JobExecutionState{Status: s.exec.Status, VersionNumber: s.exec.VersionNumber}
		}
		s.mu.Unlock()
		s.b.Reply(from, protocol.Rejected(topic), protocol.JobsErrorResponse{Code: protocol.ErrCodeTerminalStateReached, ClientToken: req.ClientToken, ExecutionState: &st})
		return
	}
	s.exec.Status = req.Status
	s.exec.StatusDetails = req.StatusDetails
	s.exec.VersionNumber++
	st := protocol.JobExecutionState{Status: s.exec.Status, StatusDetails: s.exec.StatusDetails, VersionNumber: s.exec.VersionNumber}
	s.mu.Unlock()
	s.b.Reply(from, protocol.Accepted(topic), protocol.UpdateJobAccepted{ExecutionState: &st, Timestamp: time.Now().Unix(), ClientToken: req.ClientToken})
	if req.Status.Terminal() {
		s.terminal <- req.Status
	}
}

func (s *jobsService) describe(from, topic string, payload []byte) {
	var req struct {
		ClientToken string `json:"clientToken"`
	}
	_ = json.Unmarshal(payload, &req)
	s.mu.Lock()
	var exec *protocol.JobExecution
	if s.exec != nil {
		cp := *s.exec
		exec = &cp
	}
	s.mu.Unlock()
	if exec == nil {
		s.b.Reply(from, protocol.Rejected(topic), protocol.JobsErrorResponse{Code: protocol.ErrCodeResourceNotFound, ClientToken: req.ClientToken})
		return
	}
	s.b.Reply(from, protocol.Accepted(topic), map[string]any{"execution": exec, "timestamp": time.Now().Unix(), "clientToken": req.ClientToken})
}

func TestJobsFeatureRunsAJobEndToEnd(t *testing.T) {
	b := testbroker.Start(t, testbroker.Options{})
	svc := newJobsService(t, b, map[string]any{
		"version":       "1.0",
		"includeStdOut": "true",
		"steps": []any{map[string]any{"action": map[string]any{
			"name": "hello", "type": "runCommand", "input": map[string]any{"command": "echo,hello-from-job"},
		}}},
	})
	cfg := testConfig(t, b)
	_, _ = startAgent(t, cfg, &testenv.LogBuffer{}, &notifications{}, JobsFeature(nil))

	select {
	case st := <-svc.terminal:
		assert.Equal(t, protocol.JobSucceeded, st)
	case <-time.After(60 * time.Second):
		svc.mu.Lock()
		defer svc.mu.Unlock()
		t.Fatalf("job did not finish; updates so far: %+v", svc.updates)
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	last := svc.updates[len(svc.updates)-1]
	joined := ""
	for k, v := range last.StatusDetails {
		joined += k + "=" + v + " "
	}
	assert.Contains(t, joined, "hello-from-job", "stdout of the step is reported")
	require.NotEmpty(t, last.ClientToken)
}
