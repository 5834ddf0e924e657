package jobs

import "fmt"

// The step executor is a state machine with typed phases and events: every
// change of phase is an event looked up in the transitions table, so that
// a change the table does not name is refused (and logged) instead of
// silently happening. The phase is persisted in the state file as the
// job's Phase ("running" or "finishing") and StepStarted.

// execPhase is the executor's phase for the current job.
type execPhase string

const (
	// phaseIdle: no current job.
	phaseIdle execPhase = "idle"
	// phaseReady: the job is adopted and its step Step has not started.
	phaseReady execPhase = "ready"
	// phaseStepRunning: step Step is started (persisted before it can
	// have any effect); after a restart it is resumed (operation) or its
	// outcome decided from the boot id (process).
	phaseStepRunning execPhase = "step-running"
	// phaseFinishing: the terminal status is decided and persisted; the
	// protocol client sends it until the service holds it.
	phaseFinishing execPhase = "finishing"
)

// execEvent is what moves the executor from one phase to another.
type execEvent string

const (
	// evAdopt: a job with a valid document became current.
	evAdopt execEvent = "adopt"
	// evRefuse: a job that became current is decided before any step
	// runs (invalid document, or a step the service shows in progress
	// that cannot be resumed without local state).
	evRefuse execEvent = "refuse"
	// evResumeOperation: the service shows one of our operation steps in
	// progress and there is no local record of it: the step resumes.
	evResumeOperation execEvent = "resume-operation"
	// evStartStep: the current step is recorded as started.
	evStartStep execEvent = "start-step"
	// evStartAborted: "started" could not be persisted; the step did
	// not start.
	evStartAborted execEvent = "start-aborted"
	// evStepDone: the step succeeded (or its failure is ignored) and
	// another step follows.
	evStepDone execEvent = "step-done"
	// evDecide: the job's terminal status is decided.
	evDecide execEvent = "decide"
	// evEnd: the service holds the terminal status, or ended the job
	// itself (canceled, removed, timed out).
	evEnd execEvent = "end"
)

// transitions is the executor's whole state machine.
var transitions = map[execPhase]map[execEvent]execPhase{
	phaseIdle: {
		evAdopt:           phaseReady,
		evRefuse:          phaseFinishing,
		evResumeOperation: phaseStepRunning,
	},
	phaseReady: {
		evStartStep: phaseStepRunning,
		evDecide:    phaseFinishing,
		evEnd:       phaseIdle,
	},
	phaseStepRunning: {
		evStepDone:     phaseReady,
		evStartAborted: phaseReady,
		evDecide:       phaseFinishing,
		evEnd:          phaseIdle,
	},
	phaseFinishing: {
		evEnd: phaseIdle,
	},
}

// nextPhase is the phase event ev leads to from phase from, or an error if
// the table has no such transition.
func nextPhase(from execPhase, ev execEvent) (execPhase, error) {
	to, ok := transitions[from][ev]
	if !ok {
		return from, fmt.Errorf("jobs executor: no transition from %s on %s", from, ev)
	}
	return to, nil
}

// phaseOf reads the executor's phase from the persisted job.
func phaseOf(job *jobState) execPhase {
	switch {
	case job == nil || job.Phase == "":
		return phaseIdle
	case job.Phase == persistedFinishing:
		return phaseFinishing
	case job.StepStarted:
		return phaseStepRunning
	default:
		return phaseReady
	}
}

// setPhase writes phase p into the persisted job (phaseIdle is the job
// being forgotten, which the protocol client does).
func setPhase(job *jobState, p execPhase) {
	switch p {
	case phaseReady:
		job.Phase, job.StepStarted = persistedRunning, false
	case phaseStepRunning:
		job.Phase, job.StepStarted = persistedRunning, true
	case phaseFinishing:
		job.Phase, job.StepStarted = persistedFinishing, false
	}
}

// fire moves the current job's phase by ev, as the transitions table
// says; the caller persists. A transition the table does not name is a
// bug: it is logged and refused.
func (e *Engine) fire(ev execEvent) bool {
	job := e.st.Job
	from := phaseOf(job)
	to, err := nextPhase(from, ev)
	if err != nil {
		e.log.Error("refused executor transition", "err", err)
		e.badTransitions++
		return false
	}
	if job != nil {
		setPhase(job, to)
	}
	return true
}
