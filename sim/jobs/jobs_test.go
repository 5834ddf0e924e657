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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

type bus struct {
	mu   sync.Mutex
	msgs []outMsg
}

func (b *bus) publish(topic string, payload []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.msgs = append(b.msgs, outMsg{topic, payload})
}

func (b *bus) take(topic string) []outMsg {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out, rest []outMsg
	for _, m := range b.msgs {
		if m.topic == topic {
			out = append(out, m)
		} else {
			rest = append(rest, m)
		}
	}
	b.msgs = rest
	return out
}

func setup(t *testing.T, minute time.Duration, things ...string) (*Service, *registry.Registry, *bus) {
	t.Helper()
	reg := registry.New(nil)
	require.NoError(t, reg.CreateThingGroup("g"))
	for _, th := range things {
		_, err := reg.CreateThing(th, nil)
		require.NoError(t, err)
		require.NoError(t, reg.AddThingToGroup(th, "g"))
	}
	b := &bus{}
	s := New(Options{Registry: reg, Publish: b.publish, Minute: minute})
	t.Cleanup(s.Close)
	return s, reg, b
}

// call makes one device request and returns the single answer.
func call(t *testing.T, s *Service, topic string, payload any) (string, map[string]any) {
	t.Helper()
	var raw []byte
	switch p := payload.(type) {
	case string:
		raw = []byte(p)
	default:
		var err error
		raw, err = json.Marshal(p)
		require.NoError(t, err)
	}
	var got []outMsg
	s.Handle(context.Background(), topic, raw, func(tp string, pl []byte) { got = append(got, outMsg{tp, pl}) })
	require.Len(t, got, 1)
	var m map[string]any
	require.NoError(t, json.Unmarshal(got[0].payload, &m))
	return got[0].topic, m
}

var doc = json.RawMessage(`{"version":"1.0","steps":[{"action":{"name":"hello","type":"runHandler","input":{"handler":"hello.sh"}}}]}`)

func TestJobLifecycleOverMQTTAPI(t *testing.T) {
	s, _, b := setup(t, time.Minute, "dev-a", "dev-b")
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "job1", Document: doc, Groups: []string{"g"}})
	require.NoError(t, err)

	nn := b.take(protocol.JobsNotifyNextTopic("dev-a"))
	require.Len(t, nn, 1)
	var next protocol.NextJobMessage
	require.NoError(t, json.Unmarshal(nn[0].payload, &next))
	require.NotNil(t, next.Execution)
	assert.Equal(t, "job1", next.Execution.JobID)
	assert.Equal(t, protocol.JobQueued, next.Execution.Status)
	assert.JSONEq(t, string(doc), string(next.Execution.JobDocument))
	assert.Len(t, b.take(protocol.JobsNotifyNextTopic("dev-b")), 1)
	assert.Len(t, b.take(protocol.JobsNotifyTopic("dev-a")), 1)

	topic, m := call(t, s, protocol.JobsGetPendingTopic("dev-a"), `{"clientToken":"t0"}`)
	assert.Equal(t, protocol.Accepted(protocol.JobsGetPendingTopic("dev-a")), topic)
	assert.Equal(t, "t0", m["clientToken"])
	assert.Len(t, m["queuedJobs"], 1)
	assert.Empty(t, m["inProgressJobs"])

	topic, m = call(t, s, protocol.JobsStartNextTopic("dev-a"), protocol.StartNextRequest{ClientToken: "t1", StatusDetails: map[string]string{"step": "1"}})
	assert.Equal(t, protocol.Accepted(protocol.JobsStartNextTopic("dev-a")), topic)
	assert.Equal(t, "t1", m["clientToken"])
	exec := m["execution"].(map[string]any)
	assert.Equal(t, "IN_PROGRESS", exec["status"])
	assert.EqualValues(t, 2, exec["versionNumber"])
	assert.NotNil(t, exec["jobDocument"])
	assert.Equal(t, map[string]any{"step": "1"}, exec["statusDetails"])

	// A stale expectedVersion is refused with the current state.
	upd := protocol.JobsUpdateTopic("dev-a", "job1")
	topic, m = call(t, s, upd, protocol.UpdateJobRequest{Status: protocol.JobSucceeded, ExpectedVersion: 1, ClientToken: "t2"})
	assert.Equal(t, protocol.Rejected(upd), topic)
	assert.Equal(t, protocol.ErrCodeVersionMismatch, m["code"])
	assert.NotEmpty(t, m["message"])
	assert.Equal(t, "t2", m["clientToken"])
	assert.EqualValues(t, 2, m["executionState"].(map[string]any)["versionNumber"])

	topic, m = call(t, s, upd, protocol.UpdateJobRequest{Status: protocol.JobSucceeded, ExpectedVersion: 2, IncludeJobExecutionState: true, IncludeJobDocument: true, StatusDetails: map[string]string{"result": "ok"}})
	assert.Equal(t, protocol.Accepted(upd), topic)
	state := m["executionState"].(map[string]any)
	assert.Equal(t, "SUCCEEDED", state["status"])
	assert.EqualValues(t, 3, state["versionNumber"])
	assert.NotNil(t, m["jobDocument"])

	nn = b.take(protocol.JobsNotifyNextTopic("dev-a"))
	require.Len(t, nn, 1, "next job changed to none")
	next = protocol.NextJobMessage{}
	require.NoError(t, json.Unmarshal(nn[0].payload, &next))
	assert.Nil(t, next.Execution)

	topic, m = call(t, s, upd, protocol.UpdateJobRequest{Status: protocol.JobInProgress})
	assert.Equal(t, protocol.Rejected(upd), topic)
	assert.Equal(t, protocol.ErrCodeInvalidStateTransition, m["code"])
	assert.Equal(t, "SUCCEEDED", m["executionState"].(map[string]any)["status"])

	// start-next with nothing pending answers without an execution.
	_, m = call(t, s, protocol.JobsStartNextTopic("dev-a"), `{}`)
	assert.NotContains(t, m, "execution")

	// dev-b fails its execution; then every execution is terminal.
	_, m = call(t, s, protocol.JobsUpdateTopic("dev-b", "job1"), protocol.UpdateJobRequest{Status: protocol.JobFailed, StatusDetails: map[string]string{"reason": "exit 1"}})
	assert.NotContains(t, m, "code")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	execs, err := s.WaitForExecutions(ctx, "job1")
	require.NoError(t, err)
	require.Len(t, execs, 2)
	assert.Equal(t, protocol.JobSucceeded, execs[0].Status)
	assert.Equal(t, protocol.JobFailed, execs[1].Status)
	assert.Equal(t, "exit 1", execs[1].StatusDetails["reason"])
	j, err := s.Job("job1")
	require.NoError(t, err)
	assert.Equal(t, JobCompleted, j.Status)
	assert.Equal(t, 1, j.Counts[protocol.JobSucceeded])
}

func TestDescribeAndErrors(t *testing.T) {
	s, _, _ := setup(t, time.Minute, "dev-a")
	_, m := call(t, s, "$aws/things/dev-a/jobs/$next/get", `{}`)
	assert.NotContains(t, m, "execution")
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "j1", Document: doc, Things: []string{"dev-a"}})
	require.NoError(t, err)
	_, err = s.CreateJob(context.Background(), CreateJobInput{JobID: "j2", Document: doc, Things: []string{"dev-a"}})
	require.NoError(t, err)

	_, m = call(t, s, protocol.JobsDescribeTopic("dev-a", "$next"), `{"includeJobDocument":false,"clientToken":"c"}`)
	exec := m["execution"].(map[string]any)
	assert.Equal(t, "j1", exec["jobId"], "oldest queued first")
	assert.NotContains(t, exec, "jobDocument")
	assert.Equal(t, "c", m["clientToken"])

	// Starting j2 directly makes it next (IN_PROGRESS before QUEUED).
	_, m = call(t, s, protocol.JobsUpdateTopic("dev-a", "j2"), protocol.UpdateJobRequest{Status: protocol.JobInProgress})
	assert.NotContains(t, m, "code")
	_, m = call(t, s, protocol.JobsDescribeTopic("dev-a", "$next"), `{}`)
	assert.Equal(t, "j2", m["execution"].(map[string]any)["jobId"])
	assert.Contains(t, m["execution"].(map[string]any), "jobDocument")

	_, m = call(t, s, protocol.JobsDescribeTopic("dev-a", "nope"), `{}`)
	assert.Equal(t, protocol.ErrCodeResourceNotFound, m["code"])
	_, m = call(t, s, protocol.JobsUpdateTopic("dev-b", "j1"), protocol.UpdateJobRequest{Status: protocol.JobSucceeded})
	assert.Equal(t, protocol.ErrCodeResourceNotFound, m["code"], "no execution for another thing")
	topic, m := call(t, s, "$aws/things/dev-a/jobs/j1/frobnicate", `{}`)
	assert.Equal(t, "$aws/things/dev-a/jobs/j1/frobnicate/rejected", topic)
	assert.Equal(t, protocol.ErrCodeInvalidTopic, m["code"])
	_, m = call(t, s, protocol.JobsUpdateTopic("dev-a", "j1"), `{"status":`)
	assert.Equal(t, protocol.ErrCodeInvalidJSON, m["code"])

	bad := []protocol.UpdateJobRequest{
		{},
		{Status: protocol.JobTimedOut},
		{Status: protocol.JobQueued},
		{Status: protocol.JobInProgress, StepTimeoutInMinutes: 10081},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"bad key": "x"}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"out": "line1\r\nline2"}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"out": "progress\rdone"}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"out": "\x1b[31mred"}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"out": "nul\x00"}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"out": "zero\u200bwidth"}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"out": "unassigned\U000E0FFF"}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"out": "private\uE000"}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{strings.Repeat("k", 129): "v"}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"out": strings.Repeat("x", 1025)}},
		{Status: protocol.JobInProgress, StatusDetails: map[string]string{"out": ""}},
		{Status: protocol.JobInProgress, StatusDetails: elevenDetails()},
	}
	for i, req := range bad {
		_, m = call(t, s, protocol.JobsUpdateTopic("dev-a", "j1"), req)
		assert.Equal(t, protocol.ErrCodeInvalidRequest, m["code"], "case %d: %v", i, m["message"])
	}
	e, err := s.Execution("j1", "dev-a")
	require.NoError(t, err)
	assert.Equal(t, protocol.JobQueued, e.Status, "rejected updates change nothing")
	assert.EqualValues(t, 1, e.VersionNumber)
	require.NoError(t, ValidateStatusDetails(map[string]string{"out": strings.Repeat("é", 1024)}), "limit counts characters")
	require.Error(t, ValidateStatusDetails(map[string]string{"out": strings.Repeat("é", 1025)}))
	require.Error(t, ValidateStatusDetails(map[string]string{"out": "bad\xffutf8"}))

	assert.False(t, s.Match(protocol.JobsNotifyNextTopic("dev-a")))
	assert.False(t, s.Match(protocol.Accepted(protocol.JobsUpdateTopic("dev-a", "j1"))))
	assert.True(t, s.Match(protocol.JobsUpdateTopic("dev-a", "j1")))
	assert.True(t, s.Match(protocol.JobsStartNextTopic("dev-a")))
	assert.False(t, s.Match("dt/fleet/dev-a/status"))
}

// What AWS accepts and the AWS IoT Device Client sends: output tails with
// line feeds and tabs (its documentation shows describe-job-execution
// returning "stderr": "mv: cannot stat '/sbin/reboot-invalid': No such file
// or directory\n"), any printable Unicode, the replacement character, the
// full key alphabet and exactly 10 entries of 1024 characters.
func TestUpdateAcceptsDeviceClientStatusDetails(t *testing.T) {
	s, _, _ := setup(t, time.Minute, "dev-a")
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "j1", Document: doc, Things: []string{"dev-a"}})
	require.NoError(t, err)
	details := map[string]string{
		"reason": "Job exited with status: 1",
		"stderr": "mv: cannot stat '/sbin/reboot-invalid': No such file or directory\n",
		"stdout": "col1\tcol2\nline 2 é ✓ \uFFFD\n",
		"a-Z:_9": strings.Repeat("x", 1024),
	}
	for i := len(details); i < 10; i++ {
		details[fmt.Sprintf("k%d", i)] = strings.Repeat("\n", 1024)
	}
	_, m := call(t, s, protocol.JobsUpdateTopic("dev-a", "j1"), protocol.UpdateJobRequest{Status: protocol.JobInProgress, StatusDetails: details})
	require.NotContains(t, m, "code", "%v", m["message"])
	e, err := s.Execution("j1", "dev-a")
	require.NoError(t, err)
	assert.Equal(t, protocol.JobInProgress, e.Status)
	assert.Equal(t, details, e.StatusDetails, "stored as sent")
}

func elevenDetails() map[string]string {
	m := map[string]string{}
	for i := range 11 {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

func TestStepTimeoutTimesOut(t *testing.T) {
	s, _, b := setup(t, 20*time.Millisecond, "dev-a")
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "slow", Document: doc, Things: []string{"dev-a"}})
	require.NoError(t, err)
	_, m := call(t, s, protocol.JobsStartNextTopic("dev-a"), protocol.StartNextRequest{StepTimeoutInMinutes: 1})
	require.Contains(t, m, "execution")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	execs, err := s.WaitForExecutions(ctx, "slow")
	require.NoError(t, err)
	assert.Equal(t, protocol.JobTimedOut, execs[0].Status)
	_, m = call(t, s, protocol.JobsUpdateTopic("dev-a", "slow"), protocol.UpdateJobRequest{Status: protocol.JobSucceeded})
	assert.Equal(t, protocol.ErrCodeInvalidStateTransition, m["code"])
	assert.Equal(t, "TIMED_OUT", m["executionState"].(map[string]any)["status"])
	assert.NotEmpty(t, b.take(protocol.JobsNotifyNextTopic("dev-a")))
}

func TestProgressUpdatesResetStepTimer(t *testing.T) {
	s, _, _ := setup(t, 200*time.Millisecond, "dev-a")
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "p", Document: doc, Things: []string{"dev-a"}, InProgressTimeoutMinutes: 0})
	require.NoError(t, err)
	_, m := call(t, s, protocol.JobsStartNextTopic("dev-a"), protocol.StartNextRequest{StepTimeoutInMinutes: 1})
	require.Contains(t, m, "execution")
	// Cancel the step timer explicitly, then verify the execution is
	// still IN_PROGRESS well after the original timeout.
	_, m = call(t, s, protocol.JobsUpdateTopic("dev-a", "p"), protocol.UpdateJobRequest{Status: protocol.JobInProgress, StepTimeoutInMinutes: -1})
	require.NotContains(t, m, "code")
	time.Sleep(400 * time.Millisecond)
	e, err := s.Execution("p", "dev-a")
	require.NoError(t, err)
	assert.Equal(t, protocol.JobInProgress, e.Status)
}

func TestContinuousJobAndCancel(t *testing.T) {
	s, reg, b := setup(t, time.Minute, "dev-a")
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "cont", Document: doc, Groups: []string{"g"}, Continuous: true})
	require.NoError(t, err)
	_, err = reg.CreateThing("dev-new", nil)
	require.NoError(t, err)
	require.NoError(t, reg.AddThingToGroup("dev-new", "g"))
	e, err := s.Execution("cont", "dev-new")
	require.NoError(t, err)
	assert.Equal(t, protocol.JobQueued, e.Status)
	assert.Len(t, b.take(protocol.JobsNotifyNextTopic("dev-new")), 1)

	j, err := s.CancelJob("cont", false)
	require.NoError(t, err)
	assert.Equal(t, JobCanceled, j.Status)
	e, err = s.Execution("cont", "dev-a")
	require.NoError(t, err)
	assert.Equal(t, protocol.JobCanceled, e.Status)
}

func TestCreateJobValidation(t *testing.T) {
	s, _, _ := setup(t, time.Minute, "dev-a")
	cases := map[string]struct {
		in   CreateJobInput
		want string
	}{
		"bad id":        {CreateJobInput{JobID: "a b", Document: doc, Things: []string{"dev-a"}}, "jobId"},
		"not object":    {CreateJobInput{JobID: "x", Document: json.RawMessage(`[1]`), Things: []string{"dev-a"}}, "JSON object"},
		"not JSON":      {CreateJobInput{JobID: "x", Document: json.RawMessage(`{"a":`), Things: []string{"dev-a"}}, "not valid JSON"},
		"not UTF-8":     {CreateJobInput{JobID: "x", Document: json.RawMessage("{\"a\":\"\xff\"}"), Things: []string{"dev-a"}}, "UTF-8"},
		"empty":         {CreateJobInput{JobID: "x", Things: []string{"dev-a"}}, "JSON object"},
		"no targets":    {CreateJobInput{JobID: "x", Document: doc}, "no targets"},
		"missing thing": {CreateJobInput{JobID: "x", Document: doc, Things: []string{"dev-zz"}}, "dev-zz"},
		"missing group": {CreateJobInput{JobID: "x", Document: doc, Groups: []string{"nope"}}, "nope"},
		"continuous":    {CreateJobInput{JobID: "x", Document: doc, Things: []string{"dev-a"}, Continuous: true}, "continuous"},
		"big doc":       {CreateJobInput{JobID: "x", Document: json.RawMessage(`{"a":"` + strings.Repeat("x", MaxDocumentBytes) + `"}`), Things: []string{"dev-a"}}, "limit"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := s.CreateJob(context.Background(), tc.in)
			assert.ErrorContains(t, err, tc.want)
		})
	}
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "x", Document: doc, Things: []string{"dev-a"}})
	require.NoError(t, err)
	_, err = s.CreateJob(context.Background(), CreateJobInput{JobID: "x", Document: doc, Things: []string{"dev-a"}})
	assert.ErrorIs(t, err, ErrAlreadyExists)
}

// The service keeps a document as the bytes it was given, as AWS IoT Jobs
// stores the document text, and every answer that carries it carries those
// exact bytes: white space, key order, duplicate keys, number spellings and
// characters encoding/json would escape.
func TestDocumentsRoundTripAsExactBytes(t *testing.T) {
	s, _, b := setup(t, time.Minute, "dev-a")
	raw := "{ \"version\" : \"1.0\",\n  \"steps\":[],\t\"steps\":[{\"action\":{}}],\n  \"_n\": [1e999, 1.50, -0e0],\n  \"_s\": \"<&> \u00e9\\u00e9 \\ud83d\\ude00\" }"
	require.True(t, json.Valid([]byte(raw)))
	_, err := s.CreateJob(context.Background(), CreateJobInput{JobID: "raw", Document: json.RawMessage(raw), Things: []string{"dev-a"}})
	require.NoError(t, err)

	exact := func(what string, payload []byte, doc func(p []byte) json.RawMessage) {
		t.Helper()
		assert.True(t, bytes.Contains(payload, []byte(raw)), "%s payload holds the document's bytes: %s", what, payload)
		assert.Equal(t, raw, string(doc(payload)), what)
	}
	fromNext := func(p []byte) json.RawMessage {
		var m protocol.NextJobMessage
		require.NoError(t, json.Unmarshal(p, &m))
		require.NotNil(t, m.Execution)
		assert.Equal(t, "raw", m.Execution.JobID)
		return m.Execution.JobDocument
	}

	nn := b.take(protocol.JobsNotifyNextTopic("dev-a"))
	require.Len(t, nn, 1)
	exact("notify-next", nn[0].payload, fromNext)

	answer := func(topic, payload string) []byte {
		var got []outMsg
		s.Handle(context.Background(), topic, []byte(payload), func(tp string, pl []byte) { got = append(got, outMsg{tp, pl}) })
		require.Len(t, got, 1)
		require.Equal(t, protocol.Accepted(topic), got[0].topic, "%s", got[0].payload)
		return got[0].payload
	}
	exact("start-next", answer(protocol.JobsStartNextTopic("dev-a"), `{"clientToken":"a"}`), fromNext)
	exact("describe", answer(protocol.JobsDescribeTopic("dev-a", "raw"), `{"clientToken":"b"}`), fromNext)
	exact("describe $next", answer(protocol.JobsDescribeTopic("dev-a", "$next"), `{"includeJobDocument":true}`), fromNext)
	without := answer(protocol.JobsDescribeTopic("dev-a", "$next"), `{"includeJobDocument":false}`)
	assert.NotContains(t, string(without), "jobDocument")
	exact("update", answer(protocol.JobsUpdateTopic("dev-a", "raw"), `{"status":"REJECTED","includeJobDocument":true,"clientToken":"c"}`), func(p []byte) json.RawMessage {
		var m protocol.UpdateJobAccepted
		require.NoError(t, json.Unmarshal(p, &m))
		assert.Equal(t, "c", m.ClientToken)
		return m.JobDocument
	})

	j, err := s.Job("raw")
	require.NoError(t, err)
	assert.Equal(t, raw, string(j.Document))
}
