package fleetctl

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestProgressOfOTAAndJobSteps(t *testing.T) {
	for _, tc := range []struct {
		name        string
		e           Execution
		done, total int
		label       string
	}{
		{"queued", Execution{Status: "QUEUED"}, 0, 0, "waiting for the device"},
		{"ota installing", Execution{Status: "IN_PROGRESS", StatusDetails: map[string]string{"step": "installing", "attempt": "1"}}, 2, 5, "installing"},
		{"ota retry", Execution{Status: "IN_PROGRESS", StatusDetails: map[string]string{"step": "downloading", "attempt": "2"}}, 1, 5, "downloading (attempt 2)"},
		{"ota committed", Execution{Status: "SUCCEEDED", StatusDetails: map[string]string{"step": "committed"}}, 5, 5, "committed"},
		{"ota rolled back", Execution{Status: "FAILED", StatusDetails: map[string]string{"step": "rolled_back"}}, 0, 0, "rolled_back"},
		{"job step 2 of 3 running", Execution{Status: "IN_PROGRESS", StatusDetails: map[string]string{"stepIndex": "2", "stepCount": "3", "stepName": "check", "stepState": "running"}}, 1, 3, "check running"},
		{"job done", Execution{Status: "SUCCEEDED", StatusDetails: map[string]string{"stepIndex": "3", "stepCount": "3", "stepName": "report"}}, 3, 3, "report"},
		{"succeeded without details", Execution{Status: "SUCCEEDED"}, 1, 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done, total, label := progress(tc.e)
			assert.Equal(t, tc.done, done)
			assert.Equal(t, tc.total, total)
			assert.Equal(t, tc.label, label)
		})
	}
	assert.Equal(t, "[########------------]", bar(2, 5, 20))
	assert.Equal(t, "[####################]", bar(5, 5, 20))
	assert.Equal(t, "[????]", bar(0, 0, 4))
}

func TestJobSummaryAndExitStatus(t *testing.T) {
	v := JobView{JobID: "ota-1", Status: "IN_PROGRESS", Executions: []Execution{
		{ThingName: "dev-a", Status: "SUCCEEDED", StatusDetails: map[string]string{"step": "committed"}},
		{ThingName: "dev-b", Status: "IN_PROGRESS", StatusDetails: map[string]string{"step": "rebooting"}},
	}}
	v.summarize()
	assert.False(t, v.Done, "a device is still updating")
	require.NoError(t, jobResult(v))

	v.Executions[1] = Execution{ThingName: "dev-b", Status: "FAILED", StatusDetails: map[string]string{"step": "rolled_back", "reason": "health check failed"}}
	v.summarize()
	assert.True(t, v.Done)
	assert.Equal(t, []string{"dev-b"}, v.Failed)
	err := jobResult(v)
	require.Error(t, err)
	assert.Equal(t, ExitFailed, ExitCode(err))
	assert.Contains(t, err.Error(), "dev-b")

	var out bytes.Buffer
	require.NoError(t, writeJobSummary(&out, v))
	assert.Contains(t, out.String(), "health check failed")
	assert.Contains(t, out.String(), "1 succeeded, 1 failed")

	for _, status := range []string{"REJECTED", "TIMED_OUT", "CANCELED"} {
		v.Executions[1].Status = status
		v.summarize()
		assert.Equal(t, ExitFailed, ExitCode(jobResult(v)), status)
	}
	v.Executions[1].Status = "REMOVED"
	v.summarize()
	assert.NoError(t, jobResult(v), "a device removed from the group did not fail")

	empty := JobView{Status: "IN_PROGRESS"}
	empty.summarize()
	assert.False(t, empty.Done, "no executions yet: the rollout has not reached anyone")
	empty.Status = "CANCELED"
	empty.summarize()
	assert.True(t, empty.Done)
}

func TestWatchPrinterPrintsAPlainLinePerChange(t *testing.T) {
	var out bytes.Buffer
	p := newWatchPrinter(&out)
	require.False(t, p.tty, "a buffer is not a terminal")
	v := JobView{JobID: "j", Executions: []Execution{{ThingName: "dev-a", Status: "IN_PROGRESS", StatusDetails: map[string]string{"step": "downloading"}}}}
	p.update(v)
	p.update(v)
	v.Executions[0] = Execution{ThingName: "dev-a", Status: "FAILED", StatusDetails: map[string]string{"step": "failed", "reason": "artifact integrity check failed"}}
	p.update(v)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2, out.String())
	assert.Contains(t, lines[0], "dev-a IN_PROGRESS downloading (1/5)")
	assert.Contains(t, lines[1], "dev-a FAILED failed: artifact integrity check failed")
	assert.NotContains(t, out.String(), "\x1b[", "no terminal escapes in a log")
}

func TestConnectivityFromTheShadow(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	doc := func(connected bool, interval string, reportedAt time.Time) shadowDoc {
		var d shadowDoc
		reported := map[string]any{"connectivity": map[string]any{"connected": connected}, "reportInterval": interval}
		meta := map[string]any{
			"connectivity":   map[string]any{"connected": map[string]any{"timestamp": reportedAt.Add(-time.Hour).Unix()}},
			"reportInterval": map[string]any{"timestamp": reportedAt.Unix()},
		}
		d.State.Reported, _ = json.Marshal(reported)
		d.Metadata.Reported, _ = json.Marshal(meta)
		return d
	}
	state, seen := doc(true, "5m0s", now.Add(-3*time.Minute)).connectivity(now)
	assert.Equal(t, ConnOnline, state)
	require.NotNil(t, seen)
	assert.Equal(t, now.Add(-3*time.Minute), *seen, "the latest metadata timestamp")

	state, _ = doc(true, "5m0s", now.Add(-12*time.Minute)).connectivity(now)
	assert.Equal(t, ConnSilent, state, "two report intervals and a minute without a report")

	state, _ = doc(true, "1h0m0s", now.Add(-12*time.Minute)).connectivity(now)
	assert.Equal(t, ConnOnline, state, "the device's own report interval counts")

	state, _ = doc(false, "5m0s", now.Add(-time.Minute)).connectivity(now)
	assert.Equal(t, ConnSilent, state, "the agent says it is not connected")

	state, seen = shadowDoc{}.connectivity(now)
	assert.Equal(t, ConnUnknown, state)
	assert.Nil(t, seen)
}

func TestWatchPrinterRedrawsBarsOnATerminal(t *testing.T) {
	var out bytes.Buffer
	p := newWatchPrinter(&out)
	p.tty = true // as on a terminal
	v := JobView{JobID: "j", Status: "IN_PROGRESS", Executions: []Execution{
		{ThingName: "dev-a", Status: "IN_PROGRESS", StatusDetails: map[string]string{"step": "installing"}},
		{ThingName: "dev-b", Status: "QUEUED"},
	}}
	v.summarize()
	p.update(v)
	first := out.String()
	assert.NotContains(t, first, "\x1b[", "nothing to redraw yet")
	assert.Contains(t, first, "[########------------] installing")
	assert.Contains(t, first, "1 in_progress, 1 queued")
	out.Reset()
	p.update(v)
	assert.True(t, strings.HasPrefix(out.String(), "\x1b[3A\x1b[J"), "the block of 3 lines is redrawn in place: %q", out.String())
}
