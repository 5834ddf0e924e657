package ota

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
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

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// fakeMenderBin is the fakemender binary built once by TestMain.
type testBinaries struct {
	fakeMender string
}

func buildFakeMender() (bin string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "ota-fakemender-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { _ = os.RemoveAll(dir) }
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	bin = filepath.Join(dir, "fakemender")
	cmd := exec.Command(goBin, "build", "-o", bin, "./internal/fakemender")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("build fakemender: %v\n%s", err, out)
	}
	return bin, cleanup, nil
}

var bins testBinaries

func TestMain(m *testing.M) {
	bin, cleanup, err := buildFakeMender()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.fakeMender = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// fakeScenario mirrors internal/fakemender's Scenario.
type fakeScenario struct {
	Version          string `json:"version,omitempty"`
	ArtifactSizeMiB  int    `json:"artifactSizeMiB,omitempty"`
	InstallFailures  int    `json:"installFailures,omitempty"`
	FailAtPercent    int    `json:"failAtPercent,omitempty"`
	HangAtPercent    int    `json:"hangAtPercent,omitempty"`
	BootedOld        bool   `json:"bootedOld,omitempty"`
	RollbackFails    bool   `json:"rollbackFails,omitempty"`
	HangAfterCommit  bool   `json:"hangAfterCommit,omitempty"`
	HangBeforeCommit bool   `json:"hangBeforeCommit,omitempty"`
}

type fakePartitions struct {
	Active     string `json:"active"`
	Pending    string `json:"pending"`
	InProgress bool   `json:"inProgress"`
	Installs   int    `json:"installs"`
	Commits    int    `json:"commits"`
	Rollbacks  int    `json:"rollbacks"`
}

type fakeCall struct {
	Prog string   `json:"prog"`
	Args []string `json:"args"`
}

// fakeMender is one installed fake mender client.
type fakeMender struct {
	t    *testing.T
	dir  string
	Path string
}

// newFakeMender installs the fake as name ("mender-update" or "mender") in
// a fresh directory with scenario sc.
func newFakeMender(t *testing.T, name string, sc fakeScenario) *fakeMender {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	if err := os.Link(bins.fakeMender, path); err != nil {
		copyFile(t, bins.fakeMender, path)
	}
	f := &fakeMender{t: t, dir: dir, Path: path}
	f.setScenario(sc)
	return f
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

func (f *fakeMender) setScenario(sc fakeScenario) {
	b, err := json.Marshal(sc)
	require.NoError(f.t, err)
	require.NoError(f.t, os.WriteFile(filepath.Join(f.dir, "scenario.json"), b, 0o600))
}

// scenario returns the scenario in effect (zero when none was set).
func (f *fakeMender) scenario() fakeScenario {
	var sc fakeScenario
	f.readJSON("scenario.json", &sc)
	return sc
}

// readJSON decodes the fake's file name into v, leaving v as it is when
// the file does not exist.
func (f *fakeMender) readJSON(name string, v any) {
	b, err := os.ReadFile(filepath.Join(f.dir, name))
	if os.IsNotExist(err) {
		return
	}
	require.NoError(f.t, err)
	require.NoError(f.t, json.Unmarshal(b, v))
}

// setPartitions writes the device model before the fake first runs (e.g.
// which artifact the device runs).
func (f *fakeMender) setPartitions(p map[string]any) {
	b, err := json.Marshal(p)
	require.NoError(f.t, err)
	require.NoError(f.t, os.WriteFile(filepath.Join(f.dir, "partitions.json"), b, 0o600))
}

func (f *fakeMender) calls() []fakeCall {
	b, err := os.ReadFile(filepath.Join(f.dir, "calls.log"))
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(f.t, err)
	var out []fakeCall
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		var c fakeCall
		require.NoError(f.t, json.Unmarshal(sc.Bytes(), &c))
		out = append(out, c)
	}
	return out
}

// ops returns the operations called, without the read-only --version and
// show-artifact probes, e.g. ["install", "commit"].
func (f *fakeMender) ops() []string {
	var out []string
	for _, c := range f.calls() {
		if len(c.Args) == 0 || c.Args[0] == "--version" || c.Args[0] == "-version" || strings.TrimPrefix(c.Args[0], "-") == "show-artifact" {
			continue
		}
		out = append(out, strings.TrimPrefix(c.Args[0], "-"))
	}
	return out
}

func (f *fakeMender) partitions() fakePartitions {
	p := fakePartitions{Active: "A"}
	f.readJSON("partitions.json", &p)
	return p
}

type report struct {
	Status  protocol.JobStatus
	Details map[string]string
}

// recReporter records reports; failOn, when set, is consulted first and a
// non-nil error is returned instead of accepting the report (the agent
// died before the report was durable).
type recReporter struct {
	*savedState
	mu      sync.Mutex
	reports []report
	events  *eventLog
	failOn  func(status protocol.JobStatus, details map[string]string) error
}

// savedState is the Session's state half as the jobs engine keeps it: a
// file written atomically (0600) that outlives the Run call and the
// process, so a new reporter (a restarted agent) finds what the last one
// saved.
type savedState struct{ path string }

// sessionStateFile is where the tests keep the session's saved state.
const sessionStateFile = "session-state.json"

func (s *savedState) SavedState() json.RawMessage {
	b, err := os.ReadFile(s.path)
	if err != nil {
		return nil
	}
	return b
}

func (s *savedState) SaveState(_ context.Context, state json.RawMessage) error {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(s.path, state, 0o600)
}

// state decodes the saved state (nil if none).
func (s *savedState) state(t *testing.T) *State {
	b := s.SavedState()
	if b == nil {
		return nil
	}
	st, err := DecodeState(b)
	require.NoError(t, err)
	return st
}

func (r *recReporter) Report(_ context.Context, status protocol.JobStatus, details map[string]string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failOn != nil {
		if err := r.failOn(status, details); err != nil {
			return err
		}
	}
	r.reports = append(r.reports, report{Status: status, Details: details})
	if r.events != nil {
		r.events.add("report " + string(status) + " " + details[DetailStep])
	}
	return nil
}

func (r *recReporter) all() []report {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]report(nil), r.reports...)
}

func (r *recReporter) last() report {
	all := r.all()
	if len(all) == 0 {
		return report{}
	}
	return all[len(all)-1]
}

// steps returns "STATUS step/attempt" for each report.
func (r *recReporter) steps() []string {
	var out []string
	for _, rep := range r.all() {
		out = append(out, fmt.Sprintf("%s %s/%s", rep.Status, rep.Details[DetailStep], rep.Details[DetailAttempt]))
	}
	return out
}

// eventLog is a file that the reporter, the pre-reboot hook and the reboot
// command all append to, to check their order.
type eventLog struct {
	path string
	mu   sync.Mutex
}

func (e *eventLog) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f, err := os.OpenFile(e.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	fmt.Fprintln(f, s)
}

func (e *eventLog) lines(t *testing.T) []string {
	b, err := os.ReadFile(e.path)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func (e *eventLog) count(t *testing.T, event string) int {
	n := 0
	for _, l := range e.lines(t) {
		if l == event {
			n++
		}
	}
	return n
}

type published struct {
	Topic   string
	Payload []byte
}

type recPublisher struct {
	mu   sync.Mutex
	msgs []published
}

func (p *recPublisher) Publish(_ context.Context, topic string, payload []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, published{Topic: topic, Payload: append([]byte(nil), payload...)})
	return nil
}

func (p *recPublisher) on(topic string) []published {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []published
	for _, m := range p.msgs {
		if m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}

// device is a simulated device: state dir, boot id, fake mender, event log.
type device struct {
	t        *testing.T
	stateDir string
	mender   *fakeMender
	events   *eventLog
	boot     atomic.Int64
	pub      *recPublisher
	// realMender, when set, replaces the fake (realmender_test.go), with
	// allowHTTP and hosts for its local artifact server.
	realMender *realMender
	allowHTTP  bool
	hosts      []string
}

func newDevice(t *testing.T, menderName string, sc fakeScenario) *device {
	d := &device{
		t:        t,
		stateDir: t.TempDir(),
		mender:   newFakeMender(t, menderName, sc),
		pub:      &recPublisher{},
	}
	d.events = &eventLog{path: filepath.Join(t.TempDir(), "events.log")}
	d.boot.Store(1)
	return d
}

// reboot simulates the reboot having happened.
func (d *device) reboot() { d.boot.Add(1) }

func (d *device) config() Config {
	menderCfg := MenderConfig{
		UpdatePath: filepath.Join(d.mender.dir, "mender-update"),
		Path:       filepath.Join(d.mender.dir, "mender"),
	}
	allowed := []string{testHost}
	if d.realMender != nil {
		menderCfg = MenderConfig{UpdatePath: filepath.Join(d.realMender.Dir, "no-mender-update"), Path: d.realMender.Wrapper}
		allowed = d.hosts
	}
	return Config{
		AllowHTTP:        d.allowHTTP,
		StateDir:         d.stateDir,
		ThingName:        "dev-10000000a1b2c3d4",
		AllowedHosts:     allowed,
		Mender:           menderCfg,
		MaxAttempts:      3,
		RetryDelay:       time.Millisecond,
		Publisher:        d.pub,
		PreRebootCommand: []string{"/bin/sh", "-c", `echo hook >> "$0"`, d.events.path},
		RebootCommand:    []string{"/bin/sh", "-c", `echo reboot >> "$0"`, d.events.path},
		RebootWait:       -1,
		BootID:           func() (string, error) { return fmt.Sprintf("boot-%d", d.boot.Load()), nil },
		Logger:           slog.New(slog.NewTextHandler(testWriter{d.t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func (d *device) updater(mod func(*Config)) *Updater {
	cfg := d.config()
	if mod != nil {
		mod(&cfg)
	}
	u, err := New(cfg)
	require.NoError(d.t, err)
	return u
}

func (d *device) reporter() *recReporter {
	return &recReporter{events: d.events, savedState: d.saved()}
}

// pending returns the saved state if the OTA job still has work to do
// (including reporting or a reboot after a rollback), else nil.
func (d *device) pending(t *testing.T) *State {
	st := d.saved().state(t)
	if st == nil || st.Step.Terminal() && st.Reported && !st.RollbackReboot && (st.Step != StepRolledBack || st.RollbackDone) {
		return nil
	}
	return st
}

// saved is the device's session state (what the jobs engine keeps).
func (d *device) saved() *savedState {
	return &savedState{path: filepath.Join(d.stateDir, sessionStateFile)}
}

// testWriter sends log output to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testHost is the allowed (path-style S3) host of testURL.
const testHost = "s3.amazonaws.com/fleet-artifacts"

const testURL = "https://s3.amazonaws.com/fleet-artifacts/rpi-2024.06.mender?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=deadbeef"

func testJob(id string) Job {
	return Job{ID: id, Document: Document{URL: testURL}}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
