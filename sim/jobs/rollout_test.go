package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

func update(t *testing.T, s *Service, thing, job string, status protocol.JobStatus) {
	t.Helper()
	topic, _ := call(t, s, protocol.JobsUpdateTopic(thing, job), map[string]any{"status": status})
	require.Equal(t, protocol.Accepted(protocol.JobsUpdateTopic(thing, job)), topic)
}

func TestRolloutCreatesAtMostMaximumPerMinute(t *testing.T) {
	things := []string{"t1", "t2", "t3", "t4", "t5"}
	const minute = 200 * time.Millisecond
	s, _, _ := setup(t, minute, things...)
	job, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "r", Document: []byte(`{}`), Groups: []string{"g"}, MaximumPerMinute: 2})
	require.NoError(t, err)
	assert.Equal(t, 2, len(mustExecutions(t, s, "r")), "the first minute: 2 executions")
	assert.Equal(t, 3, job.PendingRollout)
	assert.Equal(t, JobInProgress, job.Status)

	// Each later minute adds at most 2, until every target has one; the
	// job completes only then.
	require.Eventually(t, func() bool { return len(mustExecutions(t, s, "r")) == 5 }, 10*time.Second, 5*time.Millisecond)
	// Judged from the executions' QueuedAt (the service's clock), not
	// from when this test happened to look: any 2m+1 executions were
	// queued at least m minutes apart. The slack covers only the time the
	// service takes between opening a rollout minute and queuing its
	// executions.
	var queued []time.Time
	for _, e := range mustExecutions(t, s, "r") {
		queued = append(queued, e.QueuedAt)
	}
	slices.SortFunc(queued, time.Time.Compare)
	for i := range queued {
		for j := i + 2; j < len(queued); j++ {
			m := time.Duration((j - i) / 2)
			assert.GreaterOrEqual(t, queued[j].Sub(queued[i]), m*minute-minute/4,
				"executions %d..%d (%d of them) queued within %v: more than 2 per minute (%v)", i, j, j-i+1, queued[j].Sub(queued[i]), queued)
		}
	}
	for _, th := range things {
		update(t, s, th, "r", protocol.JobSucceeded)
	}
	j, err := s.Job("r")
	require.NoError(t, err)
	assert.Equal(t, JobCompleted, j.Status)
	assert.Zero(t, j.PendingRollout)
}

func TestRolloutCancelLeavesWaitingTargetsWithout(t *testing.T) {
	s, _, _ := setup(t, time.Hour, "t1", "t2", "t3")
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "r", Document: []byte(`{}`), Groups: []string{"g"}, MaximumPerMinute: 1})
	require.NoError(t, err)
	j, err := s.CancelJobWithReason("r", false, "BAD_BUILD", "wrong artifact")
	require.NoError(t, err)
	assert.Equal(t, JobCanceled, j.Status)
	assert.Equal(t, "BAD_BUILD", j.ReasonCode)
	assert.Equal(t, "wrong artifact", j.Comment)
	assert.Zero(t, j.PendingRollout)
	assert.Len(t, mustExecutions(t, s, "r"), 1)
}

func mustExecutions(t *testing.T, s *Service, job string) []Execution {
	t.Helper()
	ex, err := s.Executions(job)
	require.NoError(t, err)
	return ex
}

func TestAbortCriteriaCancelTheJob(t *testing.T) {
	things := []string{"t1", "t2", "t3", "t4", "t5", "t6"}
	s, _, b := setup(t, time.Hour, things...)
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "a", Document: []byte(`{}`), Groups: []string{"g"},
		Abort: []AbortCriteria{{FailureType: FailureFailed, Action: "CANCEL", ThresholdPercentage: 50, MinExecutedThings: 3}}})
	require.NoError(t, err)
	update(t, s, "t1", "a", protocol.JobInProgress) // still running when the job is aborted
	update(t, s, "t2", "a", protocol.JobFailed)
	update(t, s, "t3", "a", protocol.JobFailed)
	j, _ := s.Job("a")
	assert.Equal(t, JobInProgress, j.Status, "2 executed: below minNumberOfExecutedThings")
	update(t, s, "t4", "a", protocol.JobSucceeded)
	// 3 executed, 2 failed: 66% >= 50%.
	j, err = s.Job("a")
	require.NoError(t, err)
	assert.Equal(t, JobCanceled, j.Status)
	assert.Equal(t, AbortReasonCode, j.ReasonCode)
	assert.Contains(t, j.Comment, "2 of 3")
	for _, e := range mustExecutions(t, s, "a") {
		switch e.ThingName {
		case "t1":
			assert.Equal(t, protocol.JobInProgress, e.Status, "in-progress executions continue")
		case "t5", "t6":
			assert.Equal(t, protocol.JobCanceled, e.Status, "queued executions are canceled")
		}
	}
	assert.NotEmpty(t, b.take(protocol.JobsNotifyTopic("t5")), "devices are told")
}

func TestAbortALLCountsEveryFailureKind(t *testing.T) {
	s, _, _ := setup(t, 50*time.Millisecond, "t1", "t2", "t3")
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "a", Document: []byte(`{}`), Groups: []string{"g"},
		Abort: []AbortCriteria{{FailureType: FailureAll, Action: "CANCEL", ThresholdPercentage: 100, MinExecutedThings: 2}}})
	require.NoError(t, err)
	update(t, s, "t1", "a", protocol.JobRejected)
	call(t, s, protocol.JobsStartNextTopic("t2"), map[string]any{"stepTimeoutInMinutes": 1})
	// t2 times out (a 50 ms minute): REJECTED + TIMED_OUT = 100% of 2.
	require.Eventually(t, func() bool {
		j, _ := s.Job("a")
		return j.Status == JobCanceled
	}, 10*time.Second, 5*time.Millisecond)
	j, _ := s.Job("a")
	assert.Equal(t, AbortReasonCode, j.ReasonCode)
}

func TestJobConfigsAreValidated(t *testing.T) {
	s, _, _ := setup(t, time.Minute, "t1")
	for name, in := range map[string]CreateJobInput{
		"rate":      {MaximumPerMinute: 1001},
		"type":      {Abort: []AbortCriteria{{FailureType: "SUCCEEDED", Action: "CANCEL", ThresholdPercentage: 10, MinExecutedThings: 1}}},
		"action":    {Abort: []AbortCriteria{{FailureType: "FAILED", Action: "STOP", ThresholdPercentage: 10, MinExecutedThings: 1}}},
		"threshold": {Abort: []AbortCriteria{{FailureType: "FAILED", Action: "CANCEL", ThresholdPercentage: 0, MinExecutedThings: 1}}},
		"min":       {Abort: []AbortCriteria{{FailureType: "FAILED", Action: "CANCEL", ThresholdPercentage: 10}}},
		"expires":   {PresignExpiresSec: 30},
		"presigner": {PresignExpiresSec: 60},
	} {
		in.JobID, in.Document, in.Things = "j-"+name, []byte(`{}`), []string{"t1"}
		_, err := s.CreateJob(context.Background(), in)
		require.ErrorIs(t, err, ErrInvalid, name)
		t.Logf("%s: %v", name, err)
	}
}

func TestPresignedPlaceholdersAreReplacedForDevices(t *testing.T) {
	s, _, _ := setup(t, time.Minute, "t1")
	var ttls []time.Duration
	s.SetPresigner(func(u string, ttl time.Duration) (string, error) {
		if !strings.HasPrefix(u, "https://s3.amazonaws.com/artifacts/") {
			return "", errors.New("bucket not served")
		}
		ttls = append(ttls, ttl)
		return "http://127.0.0.1:1/artifacts/" + strings.TrimPrefix(u, "https://s3.amazonaws.com/artifacts/") + "?X-Amz-Expires=" + fmt.Sprint(int(ttl.Seconds())) + "&s=1", nil
	})
	doc := `{"url": "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/artifacts/a.mender}", "other":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/artifacts/b}"}`
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "p", Document: []byte(doc), Things: []string{"t1"}, PresignExpiresSec: 120})
	require.NoError(t, err)
	_, m := call(t, s, protocol.JobsStartNextTopic("t1"), map[string]any{})
	exec := m["execution"].(map[string]any)
	got := exec["jobDocument"].(map[string]any)
	assert.Equal(t, "http://127.0.0.1:1/artifacts/a.mender?X-Amz-Expires=120&s=1", got["url"])
	assert.Equal(t, "http://127.0.0.1:1/artifacts/b?X-Amz-Expires=120&s=1", got["other"])
	assert.Contains(t, ttls, 120*time.Second)
	j, err := s.Job("p")
	require.NoError(t, err)
	assert.JSONEq(t, doc, string(j.Document), "the job keeps its placeholders")

	// Without presignedUrlConfig the placeholder reaches the device as is
	// (its agent refuses it), as in AWS.
	_, err = s.CreateJob(context.Background(), CreateJobInput{JobID: "q", Document: []byte(doc), Things: []string{"t1"}})
	require.NoError(t, err)
	raw, _ := json.Marshal(map[string]any{})
	var answer []byte
	s.Handle(context.Background(), "$aws/things/t1/jobs/q/get", raw, func(_ string, p []byte) { answer = p })
	assert.Contains(t, string(answer), "${aws:iot:s3-presigned-url:")

	_, err = s.CreateJob(context.Background(), CreateJobInput{JobID: "r", Things: []string{"t1"}, PresignExpiresSec: 60,
		Document: []byte(`{"url":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/elsewhere/x}"}`)})
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "bucket not served")
}
