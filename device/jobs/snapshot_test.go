package jobs

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Snapshot is answered by the Run loop while a step runs beside it (the
// agent's supervisor uses the answer as the engine's heartbeat);
// ReadSnapshot reads the same from the state file, with or without an
// engine.
func TestSnapshotWhileAStepRuns(t *testing.T) {
	h := newHarness(t)
	e := h.start()
	snap := func() Snapshot {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := e.Snapshot(ctx)
		require.NoError(t, err)
		return s
	}
	assert.Equal(t, Snapshot{}, snap(), "idle")
	idle, err := ReadSnapshot(h.stateDir)
	require.NoError(t, err)
	assert.Equal(t, Snapshot{}, idle)

	h.svc.addJob(t, "job-s", `{"version":"1.0","steps":[
		{"action":{"name":"first","type":"runCommand","input":{"command":"true"}}},
		{"action":{"name":"wait","type":"runCommand","input":{"command":"sh,-c,touch $WORK/started; while [ ! -e $WORK/go ]; do sleep 0.05; done"}}}]}`)
	h.waitFile("started")
	var s Snapshot
	waitFor(t, "the running step in the snapshot", func() bool { s = snap(); return s.StepName == "wait" })
	assert.Equal(t, "job-s", s.JobID)
	assert.Equal(t, "running", s.Phase)
	assert.Equal(t, protocol.JobInProgress, s.Status)
	assert.Equal(t, 2, s.StepIndex)
	assert.Equal(t, 2, s.StepCount)
	assert.Equal(t, "running", s.StepState)
	fromFile, err := ReadSnapshot(h.stateDir)
	require.NoError(t, err)
	assert.Equal(t, s, fromFile)

	h.touchWork("go")
	h.waitStatus("job-s", protocol.JobSucceeded)
	waitFor(t, "idle snapshot", func() bool { return snap().JobID == "" })

	// A stopped engine does not answer.
	h.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = e.Snapshot(ctx)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}
