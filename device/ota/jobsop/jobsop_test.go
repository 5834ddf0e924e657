package jobsop

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/jobs"
	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/device/ota"
)

type binaries struct{ fakeMender string }

var bins binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "jobsop-fakemender-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	bins.fakeMender = filepath.Join(dir, "fakemender")
	cmd := exec.Command(goBin, "build", "-o", bins.fakeMender, "../internal/fakemender")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build fakemender: %v\n%s", err, out)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func TestValidate(t *testing.T) {
	op := New(nil, ota.Policy{AllowedHosts: []string{"s3.amazonaws.com/b", "h"}})
	for _, tc := range []struct {
		name, input, field, problem string
	}{
		{"ok", `{"url":"https://s3.amazonaws.com/b/a.mender?X-Amz-Signature=1"}`, "", ""},
		{"missing url", `{}`, "url", "required field is missing"},
		{"url not a string", `{"url":1}`, "url", "must be a string"},
		{"unknown field", `{"url":"https://h/a","URL":"https://h/b"}`, "URL", "unknown field"},
		{"http", `{"url":"http://h/a.mender"}`, "url", "https required"},
		{"placeholder", `{"url":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/b/a.mender}"}`, "url", "--presigned-url-config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var input map[string]json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(tc.input), &input))
			v, err := op.Parse(input)
			if tc.problem == "" {
				require.NoError(t, err)
				doc, ok := v.(ota.Document)
				require.True(t, ok, "Parse returns the typed document, got %T", v)
				assert.Equal(t, "https://s3.amazonaws.com/b/a.mender?X-Amz-Signature=1", doc.URL)
				return
			}
			var de *jobdoc.Error
			require.ErrorAs(t, err, &de)
			assert.Equal(t, tc.field, de.Field)
			assert.Contains(t, de.Problem, tc.problem)
		})
	}
}

// TestJobDocumentsThroughParser checks that the engine's own parser, with
// the operation registered, accepts both document forms and rejects a
// document without url with a reason.
func TestJobDocumentsThroughParser(t *testing.T) {
	reg := jobs.NewRegistry()
	require.NoError(t, reg.Register(ota.Operation, New(nil, ota.Policy{AllowedHosts: []string{"s3.amazonaws.com/b"}})))
	for name, doc := range map[string]string{
		"old schema": `{"operation":"mender_install","url":"https://s3.amazonaws.com/b/a.mender?X-Amz-Signature=1"}`,
		"schema 1.0": `{"version":"1.0","steps":[{"action":{"name":"Install rootfs","type":"mender_install","input":{"url":"https://s3.amazonaws.com/b/a.mender?X-Amz-Signature=1"}}}]}`,
	} {
		d, err := jobdoc.Parse([]byte(doc), jobdoc.Options{Operations: reg})
		require.NoError(t, err, name)
		a, ok := d.Step(0)
		require.True(t, ok, name)
		assert.Equal(t, jobdoc.TypeOperation, a.Type, name)
		assert.Equal(t, ota.Operation, a.Operation, name)
		assert.Equal(t, ota.Document{URL: "https://s3.amazonaws.com/b/a.mender?X-Amz-Signature=1"}, a.Value, name)
	}
	_, err := jobdoc.Parse([]byte(`{"operation":"mender_install"}`), jobdoc.Options{Operations: reg})
	var de *jobdoc.Error
	require.ErrorAs(t, err, &de)
	assert.Contains(t, de.Reason(), "url")
}

// fakeStep records what the operation sends to the engine, and keeps the
// saved state as the engine would.
type fakeStep struct {
	mu     sync.Mutex
	events *os.File
	sent   []map[string]string
	state  json.RawMessage
}

func (s *fakeStep) SaveState(_ context.Context, state json.RawMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state = append(json.RawMessage(nil), state...)
	return nil
}

func (s *fakeStep) saved() json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

func (s *fakeStep) Progress(_ context.Context, details map[string]string, _ json.RawMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, details)
	fmt.Fprintln(s.events, "progress "+details[ota.DetailStep])
	return nil
}

func (s *fakeStep) Flush(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintln(s.events, "flush")
	return nil
}

func TestRunThroughReboot(t *testing.T) {
	dir := t.TempDir()
	menderDir := t.TempDir()
	menderPath := filepath.Join(menderDir, "mender-update")
	require.NoError(t, os.Link(bins.fakeMender, menderPath))
	eventsPath := filepath.Join(dir, "events.log")
	events, err := os.OpenFile(eventsPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	require.NoError(t, err)
	defer events.Close()
	var boot atomic.Int64
	u, err := ota.New(ota.Config{
		StateDir:      filepath.Join(dir, "state"),
		AllowedHosts:  []string{"s3.amazonaws.com/b"},
		Mender:        ota.MenderConfig{UpdatePath: menderPath, Path: filepath.Join(menderDir, "mender")},
		RebootCommand: []string{"/bin/sh", "-c", `echo reboot >> "$0"`, eventsPath},
		RebootWait:    time.Minute,
		BootID:        func() (string, error) { return fmt.Sprint("boot-", boot.Load()), nil },
		Logger:        slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	op := New(u, u.Policy())
	job := ota.Job{ID: "job-1", Document: ota.Document{URL: "https://s3.amazonaws.com/b/a.mender?X-Amz-Signature=1"}}
	step := &fakeStep{events: events}

	// First run: installs, confirms "rebooting", reboots; the shutdown
	// stops the agent (ctx canceled) while it waits.
	ctx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	go func() {
		for ctx.Err() == nil {
			if b, _ := os.ReadFile(eventsPath); strings.Contains(string(b), "reboot\n") {
				stop()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	res := op.run(ctx, job, step.saved(), step)
	assert.False(t, res.OK)
	assert.Contains(t, res.Reason, "interrupted")
	b, err := os.ReadFile(eventsPath)
	require.NoError(t, err)
	assert.Equal(t, "progress downloading\nprogress installing\nprogress rebooting\nflush\nreboot\n", string(b))

	// After the reboot the engine runs the step again.
	boot.Add(1)
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	res = op.run(ctx2, job, step.saved(), step)
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, "committed", res.Details[ota.DetailStep])
	assert.Equal(t, "1", res.Details[ota.DetailAttempt])
	assert.Equal(t, "mender4", res.Details[ota.DetailMender])
	assert.Equal(t, "verifying", step.sent[len(step.sent)-1][ota.DetailStep])

	// Killed after the updater reported, before the engine recorded the
	// result: the re-run returns the same result without touching mender.
	res2 := op.run(ctx2, job, step.saved(), step)
	assert.Equal(t, res, res2)
	calls, err := os.ReadFile(filepath.Join(menderDir, "calls.log"))
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(calls), `"commit"`))
}
