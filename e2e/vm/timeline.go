package vm

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Event is one entry of the run's timeline.
type Event struct {
	// At is the time since the run started.
	At time.Duration `json:"at"`
	// Wall is the wall-clock time.
	Wall time.Time `json:"wall"`
	// Scenario names the scenario running (empty during setup).
	Scenario string `json:"scenario,omitempty"`
	What     string `json:"what"`
}

// Timeline collects the run's events; each is also handed to the
// observer (the demo prints it, the test logs it).
type Timeline struct {
	start    time.Time
	observer func(Event)

	mu       sync.Mutex
	scenario string
	events   []Event
}

// NewTimeline starts a timeline now.
func NewTimeline(observer func(Event)) *Timeline {
	if observer == nil {
		observer = func(Event) {}
	}
	return &Timeline{start: time.Now(), observer: observer}
}

// Start is when the timeline started.
func (tl *Timeline) Start() time.Time { return tl.start }

// Scenario sets the scenario name attached to later events.
func (tl *Timeline) Scenario(name string) {
	tl.mu.Lock()
	tl.scenario = name
	tl.mu.Unlock()
}

// Add records an event that happened at t (use time.Now() for now).
func (tl *Timeline) Add(t time.Time, format string, args ...any) {
	tl.mu.Lock()
	ev := Event{At: t.Sub(tl.start), Wall: t, Scenario: tl.scenario, What: fmt.Sprintf(format, args...)}
	tl.events = append(tl.events, ev)
	tl.mu.Unlock()
	tl.observer(ev)
}

// Now records an event that happens now.
func (tl *Timeline) Now(format string, args ...any) { tl.Add(time.Now(), format, args...) }

// Events returns the events so far.
func (tl *Timeline) Events() []Event {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return append([]Event(nil), tl.events...)
}

// Format prints ev as a timeline line: "+  3m12.4s  [ota] rebooting".
func Format(ev Event) string {
	scen := ""
	if ev.Scenario != "" {
		scen = "[" + ev.Scenario + "] "
	}
	return fmt.Sprintf("%s  +%9s  %s%s", ev.Wall.UTC().Format("15:04:05"), fmtDuration(ev.At), scen, ev.What)
}

func fmtDuration(d time.Duration) string {
	d = d.Round(100 * time.Millisecond)
	m := int(d / time.Minute)
	s := (d % time.Minute).Seconds()
	if m == 0 {
		return fmt.Sprintf("%.1fs", s)
	}
	return fmt.Sprintf("%dm%04.1fs", m, s)
}

// WriteJSON writes the events as JSON.
func (tl *Timeline) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(tl.Events())
}

// Figures are the measured durations (seconds) and rates of a run
// (docs/benchmarks.md, "Virtual Raspberry Pi"); zero when not measured.
type Figures struct {
	// ImageBuild is the base image's build time (base.json).
	ImageBuild float64 `json:"imageBuildSeconds,omitempty"`
	// FirstBootToProvisioned: QEMU started → the thing exists and its
	// agent is connected.
	FirstBootToProvisioned float64 `json:"firstBootToProvisionedSeconds,omitempty"`
	// Boots: the machine (re)started or rebooted → the agent connected
	// again, for every boot.
	Boots []float64 `json:"bootSeconds,omitempty"`
	// ArtifactBytes is the size of the v2 artifact, RootfsBytes the size
	// of the root file system image mender writes.
	ArtifactBytes int64 `json:"artifactBytes,omitempty"`
	RootfsBytes   int64 `json:"rootfsBytes,omitempty"`
	// Download is the agent's download of the artifact (step downloading),
	// Install mender's install (step installing → rebooting), both of the
	// attempt that completed.
	Download float64 `json:"downloadSeconds,omitempty"`
	Install  float64 `json:"installSeconds,omitempty"`
	// InstallMBps is RootfsBytes / Install in MB/s (10^6 bytes); DDMBps is
	// a raw dd of the same number of bytes from the active to the
	// inactive root partition in the guest (conv=fsync).
	InstallMBps float64 `json:"installMBps,omitempty"`
	DDMBps      float64 `json:"ddMBps,omitempty"`
	DD          float64 `json:"ddSeconds,omitempty"`
	// RebootToCommitted: the job's "rebooting" → SUCCEEDED.
	RebootToCommitted float64 `json:"rebootToCommittedSeconds,omitempty"`
	// Rollback: the bad update's "rebooting" → FAILED (reboot into the
	// bad partition, health check, rollback, reboot into the good one).
	Rollback float64 `json:"rollbackSeconds,omitempty"`
	// RebootJob: the reboot job created → SUCCEEDED.
	RebootJob float64 `json:"rebootJobSeconds,omitempty"`
	// PowerCutRecovery: QEMU killed → the agent connected again.
	PowerCutRecovery float64 `json:"powerCutRecoverySeconds,omitempty"`
	// KillRestart: agent killed (SIGKILL) → its job SUCCEEDED.
	KillRestart float64 `json:"killRestartSeconds,omitempty"`
	// WatchdogRestart: agent stopped (SIGSTOP) → a new agent process
	// connected.
	WatchdogRestart float64 `json:"watchdogRestartSeconds,omitempty"`
	// Rotation: rotation requested → completed.
	Rotation float64 `json:"rotationSeconds,omitempty"`
	// Total is the whole run.
	Total float64 `json:"totalSeconds,omitempty"`
}

func secs(d time.Duration) float64 { return d.Round(100 * time.Millisecond).Seconds() }

// writeFigures writes f as JSON to path.
func writeFigures(path string, f Figures) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
