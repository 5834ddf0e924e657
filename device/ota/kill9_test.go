package ota

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// The helper process is this test binary re-executed with helperEnv set: a
// minimal agent that runs one OTA job and appends each accepted report to a
// file. When a report's step equals blockAtEnv it writes a marker and hangs
// before accepting it, so the test can kill -9 it exactly there.
const (
	helperEnv  = "OTA_TEST_HELPER_DIR"
	blockAtEnv = "OTA_TEST_HELPER_BLOCK_AT"
)

func init() {
	// Runs before TestMain in the helper process only.
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(helperMain(dir, os.Getenv(blockAtEnv)))
	}
}

type helperReporter struct {
	*savedState
	path    string
	blockAt string
	marker  string
}

func (h *helperReporter) Report(_ context.Context, status protocol.JobStatus, details map[string]string) error {
	if h.blockAt != "" && details[DetailStep] == h.blockAt {
		if err := os.WriteFile(h.marker, []byte(h.blockAt), 0o600); err != nil {
			return err
		}
		select {} // wait for kill -9
	}
	b, err := json.Marshal(report{Status: status, Details: details})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(h.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func helperMain(dir, blockAt string) int {
	events := filepath.Join(dir, "events.log")
	u, err := New(Config{
		StateDir:         filepath.Join(dir, "state"),
		AllowedHosts:     []string{testHost},
		Mender:           MenderConfig{UpdatePath: filepath.Join(dir, "mender", "mender-update"), Path: filepath.Join(dir, "mender", "mender")},
		RetryDelay:       time.Millisecond,
		PreRebootCommand: []string{"/bin/sh", "-c", `echo hook >> "$0"`, events},
		RebootCommand:    []string{"/bin/sh", "-c", `echo reboot >> "$0"`, events},
		RebootWait:       -1,
		BootID: func() (string, error) {
			b, err := os.ReadFile(filepath.Join(dir, "boot_id"))
			return strings.TrimSpace(string(b)), err
		},
		// The partition the device runs: A until a reboot boots another
		// (helperAgent.reboot).
		RootDevice: func() (string, error) {
			b, err := os.ReadFile(filepath.Join(dir, "root"))
			if errors.Is(err, os.ErrNotExist) {
				return "A", nil
			}
			return strings.TrimSpace(string(b)), err
		},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 10
	}
	rep := &helperReporter{path: filepath.Join(dir, "reports.jsonl"), blockAt: blockAt, marker: filepath.Join(dir, "blocked"),
		savedState: &savedState{path: filepath.Join(dir, "state", sessionStateFile)}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = u.Run(ctx, testJob("ota-kill9"), rep)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrRebootPending):
		return 3
	default:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
}

type helperAgent struct {
	t   *testing.T
	dir string
}

func newHelperAgent(t *testing.T) *helperAgent {
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "mender"), 0o700))
	require.NoError(t, os.Link(bins.fakeMender, filepath.Join(dir, "mender", "mender-update")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "boot_id"), []byte("boot-1"), 0o600))
	return &helperAgent{t: t, dir: dir}
}

// reboot is a new boot: the bootloader boots the partition mender
// installed to while an update is pending (unless the scenario says the
// device came back on the old one), else the active one.
func (h *helperAgent) reboot() {
	m := &fakeMender{t: h.t, dir: filepath.Join(h.dir, "mender")}
	p := m.partitions()
	root := p.Active
	if p.Pending != "" && !m.scenario().BootedOld {
		root = p.Pending
	}
	require.NoError(h.t, os.WriteFile(filepath.Join(h.dir, "root"), []byte(root), 0o600))
	require.NoError(h.t, os.WriteFile(filepath.Join(h.dir, "boot_id"), []byte(fmt.Sprint("boot-", time.Now().UnixNano())), 0o600))
}

// start runs the helper; with blockAt it waits until the helper blocks
// there and kills it with SIGKILL.
func (h *helperAgent) start(blockAt string) (exitCode int, killed bool) {
	t := h.t
	_ = os.Remove(filepath.Join(h.dir, "blocked"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+h.dir, blockAtEnv+"="+blockAt)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	if blockAt != "" {
		deadline := time.After(30 * time.Second)
	poll:
		for {
			select {
			case err := <-waitErr:
				// Finished without reaching blockAt (the point is not on
				// this run's path).
				t.Logf("helper output:\n%s", stderr.String())
				return exitOf(t, err), false
			case <-deadline:
				t.Fatalf("helper did not reach %s:\n%s", blockAt, stderr.String())
			case <-time.After(5 * time.Millisecond):
				if _, err := os.Stat(filepath.Join(h.dir, "blocked")); err == nil {
					break poll
				}
			}
		}
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		<-waitErr
		return -1, true
	}
	err := <-waitErr
	t.Logf("helper output:\n%s", stderr.String())
	return exitOf(t, err), false
}

func exitOf(t *testing.T, err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	return ee.ExitCode()
}

func (h *helperAgent) reports() []report {
	f, err := os.Open(filepath.Join(h.dir, "reports.jsonl"))
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(h.t, err)
	defer f.Close()
	var out []report
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r report
		require.NoError(h.t, json.Unmarshal(sc.Bytes(), &r))
		out = append(out, r)
	}
	return out
}

// TestKill9AtEveryPersistedState kills a real agent process with SIGKILL
// at every persisted state and restarts it until the job is done.
func TestKill9AtEveryPersistedState(t *testing.T) {
	for _, killAt := range []string{"downloading", "installing", "rebooting", "verifying", "committed"} {
		t.Run(killAt, func(t *testing.T) {
			h := newHelperAgent(t)
			code, killed := h.start(killAt)
			if !killed {
				// The kill point comes after the reboot.
				require.Equal(t, 3, code)
				h.reboot()
				code, killed = h.start(killAt)
			}
			require.True(t, killed, "killed at %s", killAt)
			_ = code

			// Restart until the job is finished, rebooting when asked.
			for i := 0; i < 4; i++ {
				code, _ = h.start("")
				if code != 3 {
					break
				}
				h.reboot()
			}
			require.Equal(t, 0, code)
			reps := h.reports()
			require.NotEmpty(t, reps)
			assert.Equal(t, protocol.JobSucceeded, reps[len(reps)-1].Status)
			assert.Equal(t, "committed", reps[len(reps)-1].Details[DetailStep])
			m := &fakeMender{t: t, dir: filepath.Join(h.dir, "mender")}
			parts := m.partitions()
			assert.Equal(t, "B", parts.Active)
			assert.Equal(t, 1, parts.Commits)
			ev := &eventLog{path: filepath.Join(h.dir, "events.log")}
			assert.Equal(t, 1, ev.count(t, "reboot"))
			assert.Equal(t, 1, ev.count(t, "hook"))
		})
	}
}

// TestKill9RightAfterCommit kills the agent after mender's commit took
// effect but before the agent recorded or reported it (the fake mender
// commits, then hangs until killed): on restart the persisted committing
// step is resolved from the device's own state (commit: no update in
// progress; the root partition running is not the one before the install)
// and the job ends SUCCEEDED exactly once, never FAILED. That holds for a
// re-install of the release the device already runs too, where
// show-artifact prints the same name before and after.
func TestKill9RightAfterCommit(t *testing.T) {
	for _, tc := range []struct {
		name, running string // running: the artifact before the install
	}{
		{"new release", "rpi-initial"},
		{"re-install of the running release", "rpi-2024.06"}, // testURL's artifact
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHelperAgent(t)
			m := &fakeMender{t: t, dir: filepath.Join(h.dir, "mender")}
			m.setPartitions(map[string]any{"active": "A", "activeArtifact": tc.running})
			m.setScenario(fakeScenario{HangAfterCommit: true})

			code, _ := h.start("")
			require.Equal(t, 3, code, "reboot requested")
			h.reboot()
			h.startUntilMarker("commit.done")

			parts := m.partitions()
			require.Equal(t, "B", parts.Active, "the commit took effect before the kill")
			require.Equal(t, 1, parts.Commits)
			st := h.savedState()
			require.Equal(t, StepCommitting, st.Step, "killed between the commit and its record")
			require.Equal(t, tc.running, st.OldArtifact)
			require.Equal(t, "A", st.OldRoot)
			for _, r := range h.reports() {
				require.False(t, r.Status.Terminal(), "nothing terminal reported before the kill: %v", r)
			}

			code, killed := h.start("")
			require.False(t, killed)
			require.Equal(t, 0, code)
			terminal := h.onlyTerminal()
			assert.Equal(t, protocol.JobSucceeded, terminal.Status, "%v", terminal.Details)
			assert.Equal(t, "committed", terminal.Details[DetailStep])
			assert.Equal(t, 1, m.partitions().Commits, "committed once")
			assert.Equal(t, 0, m.partitions().Rollbacks, "never rolled back")
			assert.Equal(t, []string{"install", "commit", "commit"}, m.ops())

			// A further start has nothing to do and reports nothing.
			n := len(h.reports())
			code, _ = h.start("")
			require.Equal(t, 0, code)
			assert.Len(t, h.reports(), n)
		})
	}
}

// TestKill9InCommittingBeforeTheCommit kills the agent after it persisted
// committing but before mender's commit changed anything: on restart the
// commit runs and the job ends SUCCEEDED once.
func TestKill9InCommittingBeforeTheCommit(t *testing.T) {
	h := newHelperAgent(t)
	m := &fakeMender{t: t, dir: filepath.Join(h.dir, "mender")}
	m.setScenario(fakeScenario{HangBeforeCommit: true})
	code, _ := h.start("")
	require.Equal(t, 3, code, "reboot requested")
	h.reboot()
	h.startUntilMarker("commit.started")
	require.Equal(t, 0, m.partitions().Commits, "killed before the commit")
	st := h.savedState()
	require.Equal(t, StepCommitting, st.Step)

	m.setScenario(fakeScenario{})
	code, _ = h.start("")
	require.Equal(t, 0, code)
	terminal := h.onlyTerminal()
	assert.Equal(t, protocol.JobSucceeded, terminal.Status)
	assert.Equal(t, 1, m.partitions().Commits)
	assert.Equal(t, []string{"install", "commit", "commit"}, m.ops())
}

// onlyTerminal returns the one terminal report, requiring that there is
// exactly one.
func (h *helperAgent) onlyTerminal() report {
	var terminal []report
	for _, r := range h.reports() {
		if r.Status.Terminal() {
			terminal = append(terminal, r)
		}
	}
	require.Len(h.t, terminal, 1, "exactly one terminal update")
	return terminal[0]
}

// savedState is the OTA state the helper agent saved.
func (h *helperAgent) savedState() *State {
	st, err := DecodeState((&savedState{path: filepath.Join(h.dir, "state", sessionStateFile)}).SavedState())
	require.NoError(h.t, err)
	return st
}

// startUntilMarker runs the helper until the fake mender wrote marker
// (commit.done, commit.started), then kills the helper and the hanging fake
// with SIGKILL, by pid.
func (h *helperAgent) startUntilMarker(name string) {
	t := h.t
	marker := filepath.Join(h.dir, "mender", name)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+h.dir, blockAtEnv+"=")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-waitErr:
			t.Fatalf("helper ended (%v) before the commit:\n%s", err, stderr.String())
		case <-deadline:
			t.Fatalf("the fake mender's commit did not happen:\n%s", stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
		b, err := os.ReadFile(marker)
		if err != nil || len(b) == 0 {
			continue
		}
		pid, err := strconv.Atoi(string(b))
		require.NoError(t, err)
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		<-waitErr
		// The fake runs in its own process group: the agent's death does
		// not stop it.
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
		return
	}
}
