package jobs

import (
	"context"
	"maps"
	"strconv"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Snapshot is what the engine is doing: the current job, if any, and
// its step. The agent shows it in systemd's STATUS= and in
// `fleet-agent status`.
type Snapshot struct {
	// JobID is empty when the device has no job.
	JobID string `json:"jobId,omitempty"`
	// Phase is "running" (steps execute) or "finishing" (the terminal
	// status is being reported).
	Phase  string             `json:"phase,omitempty"`
	Status protocol.JobStatus `json:"status,omitempty"`
	// StepIndex is 1-based and counts the final step; StepCount is the
	// number of steps including it; StepName and StepState ("running",
	// "succeeded", "failed", ...) are those last reported.
	StepIndex int    `json:"stepIndex,omitempty"`
	StepCount int    `json:"stepCount,omitempty"`
	StepName  string `json:"stepName,omitempty"`
	StepState string `json:"stepState,omitempty"`
	// Details are the statusDetails last reported for the job (an OTA
	// step adds its own, e.g. "step": "installing").
	Details map[string]string `json:"details,omitempty"`
}

func snapshotOf(st *persistedState) Snapshot {
	job := st.Job
	if job == nil {
		return Snapshot{}
	}
	s := Snapshot{
		JobID: job.JobID, Phase: job.Phase, Status: job.Status, StepIndex: job.Step + 1,
		StepName: job.Details[DetailStepName], StepState: job.Details[DetailStepState],
		Details: maps.Clone(job.Details),
	}
	s.StepCount, _ = strconv.Atoi(job.Details[DetailStepCount])
	return s
}

// Snapshot asks the Run loop what the engine is doing. The answer comes
// from the loop itself, so it also proves that the loop is alive (the
// agent's supervisor uses it as the engine's heartbeat); a step running
// for an hour does not delay it, steps run beside the loop. It returns
// ctx's error if the loop does not answer in time.
func (e *Engine) Snapshot(ctx context.Context) (Snapshot, error) {
	reply := make(chan Snapshot, 1)
	e.enqueue(event{snapshot: reply})
	select {
	case s := <-reply:
		return s, nil
	case <-ctx.Done():
		return Snapshot{}, ctx.Err()
	}
}

// ReadLastOperation reads, from the engine's state directory dir, the
// state operation name last saved and its job (found false if it never
// saved any, or no state file).
func ReadLastOperation(dir, name string) (rec OperationRecord, found bool, err error) {
	st, err := loadState(dir)
	if err != nil {
		return OperationRecord{}, false, err
	}
	rec, found = st.LastOperations[name]
	return rec, found, nil
}

// ReadSnapshot reads what the engine last persisted in its state
// directory dir, whether or not an engine runs (`fleet-agent status`).
// No state file is no job.
func ReadSnapshot(dir string) (Snapshot, error) {
	st, err := loadState(dir)
	if err != nil {
		return Snapshot{}, err
	}
	return snapshotOf(st), nil
}
