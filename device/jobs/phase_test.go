package jobs

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestTransitionTable is the executor's state machine, written down as a
// table: every phase against every event, with the phase it leads to or
// "" where the machine must refuse it.
func TestTransitionTable(t *testing.T) {
	events := []execEvent{evAdopt, evRefuse, evResumeOperation, evStartStep, evStartAborted, evStepDone, evDecide, evEnd}
	want := map[execPhase]map[execEvent]execPhase{
		phaseIdle: {
			evAdopt: phaseReady, evRefuse: phaseFinishing, evResumeOperation: phaseStepRunning,
		},
		phaseReady: {
			evStartStep: phaseStepRunning, evDecide: phaseFinishing, evEnd: phaseIdle,
		},
		phaseStepRunning: {
			evStepDone: phaseReady, evStartAborted: phaseReady, evDecide: phaseFinishing, evEnd: phaseIdle,
		},
		phaseFinishing: {
			evEnd: phaseIdle,
		},
	}
	for _, from := range []execPhase{phaseIdle, phaseReady, phaseStepRunning, phaseFinishing} {
		for _, ev := range events {
			to, err := nextPhase(from, ev)
			exp, allowed := want[from][ev]
			if !allowed {
				assert.Error(t, err, "%s --%s--> must be refused", from, ev)
				assert.Equal(t, from, to, "a refused event leaves the phase")
				continue
			}
			if assert.NoError(t, err, "%s --%s-->", from, ev) {
				assert.Equal(t, exp, to, "%s --%s-->", from, ev)
			}
		}
	}
	assert.Len(t, transitions, len(want), "phases in the table")
}

// TestPhasePersistence: each phase is written into the state file's job as
// the fields the previous versions wrote, and read back as itself.
func TestPhasePersistence(t *testing.T) {
	for _, tc := range []struct {
		p       execPhase
		phase   string
		started bool
	}{
		{phaseReady, "running", false},
		{phaseStepRunning, "running", true},
		{phaseFinishing, "finishing", false},
	} {
		job := &jobState{JobID: "j"}
		setPhase(job, tc.p)
		assert.Equal(t, tc.phase, job.Phase, "%s", tc.p)
		assert.Equal(t, tc.started, job.StepStarted, "%s", tc.p)
		assert.Equal(t, tc.p, phaseOf(job))
	}
	assert.Equal(t, phaseIdle, phaseOf(nil))
	assert.Equal(t, phaseIdle, phaseOf(&jobState{JobID: "j"}), "a job the executor has not adopted yet")
}
