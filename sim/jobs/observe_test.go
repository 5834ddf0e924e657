package jobs

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

func TestObserveSeesEveryAnswerInOrder(t *testing.T) {
	s, _, _ := setup(t, 0, "t1")
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "j1", Document: []byte(`{"a":1}`), Things: []string{"t1"}})
	require.NoError(t, err)
	var seen []Answer
	stop := s.Observe(func(a Answer) { seen = append(seen, a) })

	call(t, s, "$aws/things/t1/jobs/start-next", map[string]any{"statusDetails": map[string]string{"step": "start"}})
	call(t, s, "$aws/things/t1/jobs/j1/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": 1})
	call(t, s, "$aws/things/t1/jobs/j1/update", map[string]any{"status": "IN_PROGRESS", "statusDetails": map[string]string{"bad key": "x"}})
	call(t, s, "$aws/things/t1/jobs/j1/update", map[string]any{"status": "SUCCEEDED", "statusDetails": map[string]string{"step": "done"}, "expectedVersion": 2})
	call(t, s, "$aws/things/t1/jobs/j1/update", map[string]any{"status": "FAILED"})
	stop()
	call(t, s, "$aws/things/t1/jobs/start-next", map[string]any{})

	require.Len(t, seen, 5, "%+v", seen)
	assert.Equal(t, Answer{Thing: "t1", JobID: "j1", Op: "start-next", Status: protocol.JobInProgress, StatusDetails: map[string]string{"step": "start"}, Accepted: true, Version: 2}, seen[0])
	assert.Equal(t, protocol.ErrCodeVersionMismatch, seen[1].Code, "expected version 1 after start-next moved it to 2")
	assert.False(t, seen[1].Accepted)
	assert.Equal(t, protocol.ErrCodeInvalidRequest, seen[2].Code)
	assert.Contains(t, seen[2].Message, `statusDetails key "bad key"`)
	assert.Equal(t, Answer{Thing: "t1", JobID: "j1", Op: "update", Status: protocol.JobSucceeded, StatusDetails: map[string]string{"step": "done"}, ExpectedVersion: 2, Accepted: true, Version: 3}, seen[3])
	assert.Equal(t, protocol.ErrCodeInvalidStateTransition, seen[4].Code, "terminal executions refuse updates")
}
