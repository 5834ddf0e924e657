package jobs

import (
	"maps"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Answer is one device request that changes an execution
// (StartNextPendingJobExecution or UpdateJobExecution) and the service's
// answer to it, as an observer sees it: what a test of a device asserts
// on ("the service accepted these steps, rejected none for its
// statusDetails") without a Jobs service of its own.
type Answer struct {
	Thing string
	// JobID is the execution's job: the topic's for an update, the
	// started execution's for start-next ("" when nothing was pending or
	// the request was refused before one was chosen).
	JobID string
	// Op is "start-next" or "update".
	Op string
	// Status, StatusDetails and ExpectedVersion are the request's.
	Status          protocol.JobStatus
	StatusDetails   map[string]string
	ExpectedVersion int64
	// Accepted is true when the service accepted the request; otherwise
	// Code and Message are the rejection's.
	Accepted bool
	Code     string
	Message  string
	// Version is the execution's version after an accepted request.
	Version int64
}

// Observe calls fn, in the order the service decided them, with every
// answer to a start-next or update request, before the device receives
// it. fn must not call back into the service. stop ends the observation.
func (s *Service) Observe(fn func(Answer)) (stop func()) { return s.observers.Add(fn) }

func (s *Service) observe(a Answer) {
	if !s.observers.Active() {
		return // the common case: no test observes; nothing to copy
	}
	a.StatusDetails = maps.Clone(a.StatusDetails)
	s.observers.Notify(a)
}

// observedRejection wraps rejectTo so observers see the rejection first.
func observedRejection(s *Service, asked Answer, rejectTo func(code, msg, token string, st *protocol.JobExecutionState)) func(string, string, string, *protocol.JobExecutionState) {
	return func(code, msg, token string, st *protocol.JobExecutionState) {
		a := asked
		a.Code, a.Message = code, msg
		s.observe(a)
		rejectTo(code, msg, token, st)
	}
}
