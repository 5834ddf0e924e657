package jobs

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	simjobs "github.com/iot-fleet/iot-fleet/sim/jobs"
)

// service is the engine's partner in the tests: the project's AWS IoT Jobs
// stand-in (sim/jobs, the local IoT Core's Jobs service) behind the test
// transport, with a record of every start-next and update answer it gave
// (Observe) and the operator's and other writers' actions on it.
type service struct {
	t   *testing.T
	sim *simjobs.Service

	mu      sync.Mutex
	answers []simjobs.Answer
}

// newService starts the Jobs service behind tr: device requests reach it
// through tr, and its notifications and answers go back through tr.
func newService(t *testing.T, tr *transport) *service {
	t.Helper()
	s := &service{t: t}
	s.sim = simjobs.New(simjobs.Options{
		Publish: tr.fromService,
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("side", "service"),
	})
	stop := s.sim.Observe(func(a simjobs.Answer) {
		s.mu.Lock()
		s.answers = append(s.answers, a)
		s.mu.Unlock()
	})
	tr.svc = s.sim
	t.Cleanup(func() {
		stop()
		s.sim.Close()
	})
	return s
}

// addJob creates a job for the thing, as the operator does (CreateJob).
func (s *service) addJob(t *testing.T, id, doc string) {
	t.Helper()
	_, err := s.sim.CreateJob(context.Background(), simjobs.CreateJobInput{JobID: id, Document: json.RawMessage(doc), Things: []string{thing}})
	require.NoError(t, err, "create job %s", id)
}

// cancel cancels a job as the operator does (CancelJob with force, so an
// IN_PROGRESS execution is canceled too).
func (s *service) cancel(id string) {
	s.t.Helper()
	_, err := s.sim.CancelJob(id, true)
	require.NoError(s.t, err, "cancel job %s", id)
}

// touch is another writer of the execution (the HTTPS jobs data plane, an
// operator's client): an accepted UpdateJobExecution without
// expectedVersion, so the execution's version moves behind the device's
// back.
func (s *service) touch(id string) {
	s.t.Helper()
	req, err := json.Marshal(protocol.UpdateJobRequest{Status: protocol.JobInProgress, StatusDetails: map[string]string{"touchedBy": "operator"}})
	require.NoError(s.t, err)
	var answer string
	s.sim.Handle(context.Background(), protocol.JobsUpdateTopic(thing, id), req, func(topic string, payload []byte) {
		answer = topic + " " + string(payload)
	})
	require.True(s.t, strings.HasPrefix(answer, protocol.Accepted(protocol.JobsUpdateTopic(thing, id))+" "), "the other writer's update: %s", answer)
}

// execRecord is what a test reads of one execution: the service's view of
// it and the service's answers to the updates it accepted.
type execRecord struct {
	simjobs.Execution
	// Updates are the accepted update requests, in order.
	Updates []simjobs.Answer
	// Terminal counts the accepted updates into a terminal status.
	Terminal int
}

// get returns job id's execution on the thing (the zero record while the
// job does not exist).
func (s *service) get(id string) execRecord {
	var rec execRecord
	if x, err := s.sim.Execution(id, thing); err == nil {
		rec.Execution = x
	}
	for _, a := range s.answered(func(a simjobs.Answer) bool { return a.Op == "update" && a.JobID == id && a.Accepted }) {
		rec.Updates = append(rec.Updates, a)
		if a.Status.Terminal() {
			rec.Terminal++
		}
	}
	return rec
}

// answered returns the service's answers that keep holds for, in order.
func (s *service) answered(keep func(simjobs.Answer) bool) []simjobs.Answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []simjobs.Answer
	for _, a := range s.answers {
		if keep(a) {
			out = append(out, a)
		}
	}
	return out
}

// startNextCount counts the start-next requests the service answered.
func (s *service) startNextCount() int {
	return len(s.answered(func(a simjobs.Answer) bool { return a.Op == "start-next" }))
}

// rejectedForDetails returns the updates and start-nexts the service
// rejected for their statusDetails (AWS's documented limits): each would
// be rejected again on every resend.
func (s *service) rejectedForDetails() []simjobs.Answer {
	return s.answered(func(a simjobs.Answer) bool {
		return !a.Accepted && a.Code == protocol.ErrCodeInvalidRequest && strings.HasPrefix(a.Message, "statusDetails")
	})
}

// rejectedUpdates returns job id's rejected updates with the given code.
func (s *service) rejectedUpdates(id, code string) []simjobs.Answer {
	return s.answered(func(a simjobs.Answer) bool {
		return a.Op == "update" && a.JobID == id && !a.Accepted && a.Code == code
	})
}
