package ota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// runUntilReboot runs job on a fresh updater and expects it to ask for a
// reboot.
func runUntilReboot(t *testing.T, d *device, job Job, rep *recReporter) {
	t.Helper()
	err := d.updater(nil).Run(testCtx(t), job, rep)
	require.ErrorIs(t, err, ErrRebootPending)
}

func TestSuccessPath(t *testing.T) {
	for _, tc := range []struct {
		name, bin, version string
		flavor             Flavor
		installArgs        []string
	}{
		{"mender4", "mender-update", "", FlavorMender4, []string{"install", testURL}},
		{"mender3", "mender", "3.5.0", FlavorMender3, []string{"install", testURL}},
		{"legacy", "mender", "1.7.0", FlavorLegacy, []string{"-install", testURL}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDevice(t, tc.bin, fakeScenario{Version: tc.version})
			rep := d.reporter()
			job := testJob("ota-1")

			runUntilReboot(t, d, job, rep)
			assert.Equal(t, []string{
				"IN_PROGRESS downloading/1",
				"IN_PROGRESS installing/1",
				"IN_PROGRESS rebooting/1",
			}, rep.steps())
			assert.Equal(t, string(tc.flavor), rep.last().Details[DetailMender])
			// The rebooting status was confirmed before the hook and the
			// reboot ran.
			assert.Equal(t, []string{
				"report IN_PROGRESS downloading",
				"report IN_PROGRESS installing",
				"report IN_PROGRESS rebooting",
				"hook",
				"reboot",
			}, d.events.lines(t))
			assert.Equal(t, "B", d.mender.partitions().Pending)

			// The device reboots; the agent starts again and the engine
			// hands the job over again.
			d.reboot()
			job.StatusDetails = rep.last().Details
			err := d.updater(nil).Run(testCtx(t), job, rep)
			require.NoError(t, err)

			assert.Equal(t, []string{
				"IN_PROGRESS downloading/1",
				"IN_PROGRESS installing/1",
				"IN_PROGRESS rebooting/1",
				"IN_PROGRESS verifying/1",
				"SUCCEEDED committed/1",
			}, rep.steps())
			assert.Equal(t, fakePartitions{Active: "B", Installs: 1, Commits: 1}, d.mender.partitions())
			var calls [][]string
			for _, c := range d.mender.calls() {
				if c.Args[0] != "--version" && c.Args[0] != "-version" {
					calls = append(calls, c.Args)
				}
			}
			// show-artifact first: the name before the update decides a
			// commit interrupted by a crash.
			assert.Equal(t, [][]string{
				{strings.Replace(tc.installArgs[0], "install", "show-artifact", 1)},
				tc.installArgs,
				{strings.Replace(tc.installArgs[0], "install", "commit", 1)},
			}, calls)

			// Nothing left to do; running the job again only re-confirms.
			p := d.pending(t)
			assert.Nil(t, p)
			require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))
			assert.Len(t, rep.all(), 5)
		})
	}
}

func TestRollbackWhenCommitFails(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	rep := d.reporter()
	job := testJob("ota-commit-fails")
	runUntilReboot(t, d, job, rep)

	// The new partition did not boot: the bootloader fell back to A.
	d.mender.setScenario(fakeScenario{BootedOld: true})
	d.reboot()
	require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))

	last := rep.last()
	assert.Equal(t, protocol.JobFailed, last.Status)
	assert.Equal(t, "rolled_back", last.Details[DetailStep])
	assert.Contains(t, last.Details[DetailReason], "commit failed")
	assert.Contains(t, last.Details[DetailReason], "upgrade_available")
	assert.Equal(t, []string{"install", "commit", "rollback"}, d.mender.ops())
	assert.Equal(t, fakePartitions{Active: "A", Installs: 1, Rollbacks: 1}, d.mender.partitions())
	// Already on the old partition: no second reboot.
	assert.Equal(t, 1, d.events.count(t, "reboot"))
	p := d.pending(t)
	assert.Nil(t, p)
}

func TestHealthCheckFailureRollsBack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mod    func(*Config)
		reason string
	}{
		{
			name: "command exits non-zero",
			mod: func(c *Config) {
				c.HealthChecks = []HealthCheck{
					{Name: "true", Command: []string{"/bin/true"}},
					{Name: "app-running", Command: []string{"/bin/sh", "-c", "echo app is down >&2; exit 3"}},
				}
			},
			reason: "health check failed: app-running: sh: exit status 3: app is down",
		},
		{
			name: "command times out",
			mod: func(c *Config) {
				c.HealthChecks = []HealthCheck{{Name: "slow", Command: []string{"/bin/sleep", "30"}, Timeout: 50 * time.Millisecond}}
			},
			reason: "health check failed: slow: did not finish within 50ms",
		},
		{
			name: "no connectivity",
			mod: func(c *Config) {
				c.ConnectivityTimeout = 50 * time.Millisecond
				c.Connectivity = func(ctx context.Context) error {
					<-ctx.Done()
					return errors.New("not connected: " + ctx.Err().Error())
				}
			},
			reason: "health check failed: connectivity to AWS IoT Core: not connected: context deadline exceeded",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDevice(t, "mender", fakeScenario{})
			rep := d.reporter()
			job := testJob("ota-unhealthy")
			runUntilReboot(t, d, job, rep)
			d.reboot()

			err := d.updater(tc.mod).Run(testCtx(t), job, rep)
			// Rolled back on the new partition: it reboots into the old one
			// after reporting FAILED.
			require.ErrorIs(t, err, ErrRebootPending)
			last := rep.last()
			assert.Equal(t, protocol.JobFailed, last.Status)
			assert.Equal(t, "rolled_back", last.Details[DetailStep])
			assert.Equal(t, tc.reason, last.Details[DetailReason])
			assert.Equal(t, []string{"install", "rollback"}, d.mender.ops(), "never committed")
			assert.Equal(t, fakePartitions{Active: "A", Installs: 1, Rollbacks: 1}, d.mender.partitions())
			lines := d.events.lines(t)
			assert.Equal(t, []string{"report FAILED rolled_back", "hook", "reboot"}, lines[len(lines)-3:])

			// After that reboot the job is finished for good.
			d.reboot()
			require.NoError(t, d.updater(tc.mod).Run(testCtx(t), job, rep))
			p := d.pending(t)
			assert.Nil(t, p)
			assert.Equal(t, 2, d.events.count(t, "reboot"))
			assert.Equal(t, 1, d.events.count(t, "report FAILED rolled_back"))
		})
	}
}

func TestDownloadFailureRetriesThenSucceeds(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{InstallFailures: 2})
	rep := d.reporter()
	job := testJob("ota-flaky")
	runUntilReboot(t, d, job, rep)

	steps := rep.steps()
	assert.Equal(t, []string{
		"IN_PROGRESS downloading/1",
		"IN_PROGRESS downloading/2",
		"IN_PROGRESS downloading/3",
		"IN_PROGRESS installing/3",
		"IN_PROGRESS rebooting/3",
	}, steps)
	// The retry carries the previous failure as its reason.
	assert.Contains(t, rep.all()[1].Details[DetailReason], "install attempt 1/3 failed")
	assert.Contains(t, rep.all()[1].Details[DetailReason], "Streaming failed")
	assert.NotContains(t, rep.all()[1].Details[DetailReason], "X-Amz-Signature=deadbeef", "presigned URL redacted")
	assert.Equal(t, []string{"install", "rollback", "install", "rollback", "install"}, d.mender.ops())

	d.reboot()
	require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))
	assert.Equal(t, "SUCCEEDED committed/3", rep.steps()[len(rep.steps())-1])
	assert.Equal(t, "B", d.mender.partitions().Active)
}

func TestRetriesExhaustedFails(t *testing.T) {
	d := newDevice(t, "mender", fakeScenario{InstallFailures: 10, FailAtPercent: 25})
	rep := d.reporter()
	require.NoError(t, d.updater(nil).Run(testCtx(t), testJob("ota-broken"), rep))

	last := rep.last()
	assert.Equal(t, protocol.JobFailed, last.Status)
	assert.Equal(t, "failed", last.Details[DetailStep])
	assert.Equal(t, "3", last.Details[DetailAttempt])
	assert.Contains(t, last.Details[DetailReason], "giving up after 3 install attempts")
	assert.Contains(t, last.Details[DetailReason], "Download connection broken: unexpected EOF")
	assert.Equal(t, 3, d.mender.partitions().Installs)
	assert.Equal(t, 0, d.events.count(t, "reboot"))
	// Progress was published up to where each attempt failed.
	assert.NotEmpty(t, d.pub.on(protocol.DataTopic("dev-10000000a1b2c3d4", protocol.KindOTAProgress)))
}

// errKilled stands for the agent dying: the report it was making never
// became durable and the process context ends.
var errKilled = errors.New("agent killed")

// TestKillAtEveryPersistedState stops the agent at every persisted state
// (the state is saved, its report not yet confirmed), then starts a new
// Updater on the same saved state and lets the job finish.
func TestKillAtEveryPersistedState(t *testing.T) {
	for _, killAt := range []string{"downloading", "installing", "rebooting", "verifying", "committed"} {
		t.Run(killAt, func(t *testing.T) {
			d := newDevice(t, "mender-update", fakeScenario{})
			job := testJob("ota-kill-" + killAt)
			ctx, kill := context.WithCancel(testCtx(t))
			rep := d.reporter()
			rep.failOn = func(_ protocol.JobStatus, details map[string]string) error {
				if details[DetailStep] == killAt {
					kill()
					return errKilled
				}
				return nil
			}
			runAgent := func(ctx context.Context) error {
				return d.updater(nil).Run(ctx, job, rep)
			}

			err := runAgent(ctx)
			require.Error(t, err)
			if errors.Is(err, ErrRebootPending) {
				// Killed after the reboot (the kill point is after it).
				d.reboot()
				err = runAgent(ctx)
				require.Error(t, err)
			}
			require.NotErrorIs(t, err, ErrRebootPending)
			st := rep.state(t)
			require.NotNil(t, st)
			assert.Equal(t, Step(killAt), st.Step, "the state was persisted before its report")
			assert.False(t, st.Reported)

			// Restart: the agent is alive again.
			rep.failOn = nil
			fresh := testCtx(t)
			err = runAgent(fresh)
			if errors.Is(err, ErrRebootPending) {
				d.reboot()
				err = runAgent(fresh)
			}
			require.NoError(t, err)

			assert.Equal(t, "SUCCEEDED committed", strings.Split(rep.steps()[len(rep.steps())-1], "/")[0])
			parts := d.mender.partitions()
			assert.Equal(t, "B", parts.Active)
			assert.Empty(t, parts.Pending)
			assert.Equal(t, 1, parts.Commits, "committed exactly once")
			assert.Equal(t, 1, d.events.count(t, "reboot"), "rebooted exactly once")
		})
	}
}

func TestKillMidInstallRetriesAfterRollback(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{HangAtPercent: 50})
	job := testJob("ota-kill-mid-install")
	rep := d.reporter()
	killMidInstall(t, d, d.updater(nil), job, rep)
	assert.True(t, d.mender.partitions().InProgress, "mender was killed mid-install")

	// Power comes back (new boot), the agent restarts.
	d.mender.setScenario(fakeScenario{})
	d.reboot()
	err := d.updater(nil).Run(testCtx(t), job, rep)
	require.ErrorIs(t, err, ErrRebootPending)
	assert.Equal(t, []string{"install", "rollback", "install"}, d.mender.ops())
	assert.Equal(t, "IN_PROGRESS rebooting/2", rep.steps()[len(rep.steps())-1])
	// The retry says why attempt 1 did not finish.
	retry := reportOf(t, rep, "downloading", "2")
	assert.Equal(t, "install attempt 1/3 was interrupted while downloading: the device restarted (power loss or reboot)", retry.Details[DetailReason])

	d.reboot()
	require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))
	assert.Equal(t, protocol.JobSucceeded, rep.last().Status)
}

// killMidInstall runs upd until the fake mender hangs in its install,
// then stops the agent there (its context ends, as a kill or a power cut
// ends it).
func killMidInstall(t *testing.T, d *device, upd *Updater, job Job, rep *recReporter) {
	t.Helper()
	ctx, kill := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- upd.Run(ctx, job, rep) }()
	require.Eventually(t, func() bool {
		_, err := os.Stat(filepath.Join(d.mender.dir, "install.hanging"))
		return err == nil
	}, 30*time.Second, 10*time.Millisecond)
	kill()
	require.ErrorIs(t, <-done, context.Canceled)
}

// reportOf returns the first report of step at attempt.
func reportOf(t *testing.T, rep *recReporter, step, attempt string) report {
	t.Helper()
	for _, r := range rep.all() {
		if r.Details[DetailStep] == step && r.Details[DetailAttempt] == attempt {
			return r
		}
	}
	t.Fatalf("no %s report at attempt %s in %v", step, attempt, rep.steps())
	return report{}
}

func TestAgentRestartMidInstallSaysSo(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{HangAtPercent: 50})
	job := testJob("ota-agent-restart-mid-install")
	rep := d.reporter()
	killMidInstall(t, d, d.updater(nil), job, rep)

	// Only the agent restarts (same boot id).
	d.mender.setScenario(fakeScenario{})
	require.ErrorIs(t, d.updater(nil).Run(testCtx(t), job, rep), ErrRebootPending)
	retry := reportOf(t, rep, "downloading", "2")
	assert.Equal(t, "install attempt 1/3 was interrupted while downloading: the agent restarted (the device did not)", retry.Details[DetailReason])
}

func TestInterruptedLastAttemptGivesUpWithTheReason(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{HangAtPercent: 50})
	job := testJob("ota-interrupted-last-attempt")
	rep := d.reporter()
	upd := func() *Updater { return d.updater(func(c *Config) { c.MaxAttempts = 1 }) }
	killMidInstall(t, d, upd(), job, rep)

	d.reboot()
	require.NoError(t, upd().Run(testCtx(t), job, rep))
	last := rep.last()
	assert.Equal(t, protocol.JobFailed, last.Status)
	assert.Equal(t, "failed", last.Details[DetailStep])
	assert.Equal(t, "giving up after 1 install attempts: install attempt 1/1 was interrupted while downloading: the device restarted (power loss or reboot)", last.Details[DetailReason])
}

func TestRebootCommandThatDoesNotReboot(t *testing.T) {
	d := newDevice(t, "mender", fakeScenario{})
	job := testJob("ota-stuck")
	rep := d.reporter()
	runUntilReboot(t, d, job, rep)
	// The agent is restarted without a reboot (same boot id): it asks again,
	// up to MaxReboots, then rolls back and fails.
	for i := 0; i < 2; i++ {
		require.ErrorIs(t, d.updater(nil).Run(testCtx(t), job, rep), ErrRebootPending)
	}
	assert.Equal(t, 3, d.events.count(t, "reboot"))
	require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))
	last := rep.last()
	assert.Equal(t, protocol.JobFailed, last.Status)
	assert.Equal(t, "rolled_back", last.Details[DetailStep])
	assert.Contains(t, last.Details[DetailReason], "did not reboot after 3 reboot requests")
	assert.Equal(t, []string{"install", "rollback"}, d.mender.ops())
	assert.Equal(t, 3, d.events.count(t, "reboot"))
}

func TestKillDuringRollbackRepeatsIt(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	job := testJob("ota-kill-rollback")
	rep := d.reporter()
	runUntilReboot(t, d, job, rep)
	d.mender.setScenario(fakeScenario{BootedOld: true})
	d.reboot()

	ctx, kill := context.WithCancel(testCtx(t))
	rep.failOn = func(status protocol.JobStatus, _ map[string]string) error {
		if status == protocol.JobFailed {
			kill()
			return errKilled
		}
		return nil
	}
	require.ErrorIs(t, d.updater(nil).Run(ctx, job, rep), errKilled)
	rep.failOn = nil
	require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))
	assert.Equal(t, protocol.JobFailed, rep.last().Status)
	assert.Equal(t, "rolled_back", rep.last().Details[DetailStep])
	assert.Equal(t, fakePartitions{Active: "A", Installs: 1, Rollbacks: 1}, d.mender.partitions())
}

func TestLostStateContinuesFromStatusDetails(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	job := testJob("ota-lost")
	rep := d.reporter()
	runUntilReboot(t, d, job, rep)
	d.reboot()
	require.NoError(t, os.Remove(filepath.Join(d.stateDir, sessionStateFile)))

	job.StatusDetails = map[string]string{"step": "rebooting", "attempt": "1"}
	require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))
	assert.Equal(t, []string{"IN_PROGRESS verifying/1", "SUCCEEDED committed/1"}, rep.steps()[3:])
	assert.Equal(t, "B", d.mender.partitions().Active)
}

func TestLostStateMidInstallRetries(t *testing.T) {
	d := newDevice(t, "mender", fakeScenario{})
	job := testJob("ota-lost-install")
	job.StatusDetails = map[string]string{"step": "downloading", "attempt": "2"}
	rep := d.reporter()
	require.ErrorIs(t, d.updater(nil).Run(testCtx(t), job, rep), ErrRebootPending)
	assert.Equal(t, "IN_PROGRESS downloading/3", rep.steps()[0])
	assert.Equal(t, []string{"rollback", "install"}, d.mender.ops())
}

func TestCorruptSavedStateContinuesFromStatusDetails(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	job := testJob("ota-corrupt")
	rep := d.reporter()
	runUntilReboot(t, d, job, rep)
	d.reboot()
	require.NoError(t, rep.SaveState(testCtx(t), []byte(`{"version":1,"jobId":"ota-corrupt","step":"sideways"`)))

	job.StatusDetails = rep.last().Details
	require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))
	assert.Equal(t, protocol.JobSucceeded, rep.last().Status)
	assert.Equal(t, 1, d.mender.partitions().Installs, "continued from rebooting: no second install")
}

func TestStatePersistedBeforeReport(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	u := d.updater(nil)
	rep := d.reporter()
	var seen []Step
	rep.failOn = func(_ protocol.JobStatus, details map[string]string) error {
		st := rep.state(t)
		require.NotNil(t, st)
		assert.Equal(t, Step(details[DetailStep]), st.Step)
		seen = append(seen, st.Step)
		return nil
	}
	require.ErrorIs(t, u.Run(testCtx(t), testJob("ota-perm"), rep), ErrRebootPending)
	assert.Equal(t, []Step{StepDownloading, StepInstalling, StepRebooting}, seen)
}

func TestRunAfterRebootResumes(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	rep := d.reporter()
	runUntilReboot(t, d, testJob("ota-resume"), rep)
	d.reboot()
	p := d.pending(t)
	require.NotNil(t, p)
	assert.Equal(t, "ota-resume", p.JobID)
	require.NoError(t, d.updater(nil).Run(testCtx(t), testJob("ota-resume"), rep))
	assert.Equal(t, protocol.JobSucceeded, rep.last().Status)
	assert.Nil(t, d.pending(t))
	// Run again (the engine restarted before it recorded the result):
	// nothing is reported twice.
	n := len(rep.all())
	require.NoError(t, d.updater(nil).Run(testCtx(t), testJob("ota-resume"), rep))
	assert.Len(t, rep.all(), n)
}

// legacyRebooting is an OTA state file as the agent before the one job
// engine wrote it (ota-state.json in the state directory, MarshalIndent of
// State): the job asked for a reboot under boot id "boot-0".
const legacyRebooting = `{
  "version": 1,
  "jobId": "ota-legacy",
  "url": "` + testURL + `",
  "oldArtifact": "rpi-initial",
  "step": "rebooting",
  "status": "IN_PROGRESS",
  "attempt": 1,
  "reported": true,
  "bootId": "boot-0",
  "reboots": 1,
  "updatedAt": "2026-12-01T10:00:00Z"
}
`

// TestLegacyStateFileIsTakenOver: the agent was updated while an OTA job
// was rebooting the device. The new agent has no saved state for the step
// (the old one kept it in ota-state.json): it takes the legacy file over,
// verifies and commits without installing again, and removes the file.
func TestLegacyStateFileIsTakenOver(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	rep := d.reporter()
	runUntilReboot(t, d, testJob("ota-legacy"), rep)
	require.NoError(t, os.Remove(filepath.Join(d.stateDir, sessionStateFile)), "the new agent starts without saved state")
	legacy := filepath.Join(d.stateDir, LegacyStateFileName)
	require.NoError(t, os.WriteFile(legacy, []byte(legacyRebooting), 0o600))
	d.reboot()

	rep2 := d.reporter()
	require.NoError(t, d.updater(nil).Run(testCtx(t), testJob("ota-legacy"), rep2))
	assert.Equal(t, []string{"IN_PROGRESS verifying/1", "SUCCEEDED committed/1"}, rep2.steps())
	assert.Equal(t, 1, d.mender.partitions().Installs, "not installed again")
	assert.Equal(t, "B", d.mender.partitions().Active)
	assert.NoFileExists(t, legacy, "taken over")
	st := rep2.state(t)
	require.NotNil(t, st)
	assert.Equal(t, StepCommitted, st.Step)
}

// TestLegacyStateOfAnotherJob: a legacy file about another job is not
// applied to this one (its job is over or abandoned) and is removed.
func TestLegacyStateOfAnotherJob(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	legacy := filepath.Join(d.stateDir, LegacyStateFileName)
	require.NoError(t, os.WriteFile(legacy, []byte(strings.Replace(legacyRebooting, "ota-legacy", "ota-older", 1)), 0o600))
	rep := d.reporter()
	require.ErrorIs(t, d.updater(nil).Run(testCtx(t), testJob("ota-new"), rep), ErrRebootPending)
	assert.Equal(t, "IN_PROGRESS downloading/1", rep.steps()[0], "started from the beginning")
	assert.NoFileExists(t, legacy)
}

// TestCorruptLegacyStateIsMovedAside: an unreadable legacy file is kept
// for diagnosis and the job continues from its statusDetails.
func TestCorruptLegacyStateIsMovedAside(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	legacy := filepath.Join(d.stateDir, LegacyStateFileName)
	require.NoError(t, os.WriteFile(legacy, []byte(`{"version":1,"jobId":"ota-c","step":"sideways"`), 0o600))
	rep := d.reporter()
	require.ErrorIs(t, d.updater(nil).Run(testCtx(t), testJob("ota-c"), rep), ErrRebootPending)
	matches, err := filepath.Glob(legacy + ".corrupt-*")
	require.NoError(t, err)
	assert.Len(t, matches, 1)
	assert.NoFileExists(t, legacy)
}

func TestAnotherJobReplacesFinishedState(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{})
	rep := d.reporter()
	runUntilReboot(t, d, testJob("ota-a"), rep)
	d.reboot()
	require.NoError(t, d.updater(nil).Run(testCtx(t), testJob("ota-a"), rep))

	rep2 := d.reporter()
	require.ErrorIs(t, d.updater(nil).Run(testCtx(t), testJob("ota-b"), rep2), ErrRebootPending)
	assert.Equal(t, "IN_PROGRESS downloading/1", rep2.steps()[0])
	assert.Equal(t, "A", d.mender.partitions().Pending)
}

func TestNewValidatesConfig(t *testing.T) {
	base := func() Config {
		return Config{StateDir: t.TempDir(), BootID: func() (string, error) { return "b", nil }}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no state dir", func(c *Config) { c.StateDir = "" }, "stateDir"},
		{"negative attempts", func(c *Config) { c.MaxAttempts = -1 }, "maxAttempts"},
		{"publisher without thing", func(c *Config) { c.Publisher = &recPublisher{} }, "thingName"},
		{"empty health check", func(c *Config) { c.HealthChecks = []HealthCheck{{Name: "x"}} }, "healthChecks[0]"},
		{"boot id unreadable", func(c *Config) { c.BootID = func() (string, error) { return "", errors.New("no /proc") } }, "boot id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mod(&c)
			_, err := New(c)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := New(base())
	require.NoError(t, err)
}

func TestMissingMenderFailsJob(t *testing.T) {
	d := newDevice(t, "mender", fakeScenario{})
	rep := d.reporter()
	u := d.updater(func(c *Config) {
		c.Mender = MenderConfig{UpdatePath: filepath.Join(t.TempDir(), "none"), Path: filepath.Join(t.TempDir(), "none")}
	})
	require.NoError(t, u.Run(testCtx(t), testJob("ota-no-mender"), rep))
	assert.Equal(t, protocol.JobFailed, rep.last().Status)
	assert.Equal(t, "failed", rep.last().Details[DetailStep])
	assert.Contains(t, rep.last().Details[DetailReason], "mender client not found")

	// Stopping during detection is not a failure of the job.
	ctx, cancel := context.WithCancel(testCtx(t))
	cancel()
	rep2 := d.reporter()
	err := d.updater(nil).Run(ctx, testJob("ota-stopping"), rep2)
	require.Error(t, err)
	for _, r := range rep2.all() {
		assert.False(t, r.Status.Terminal())
	}
}

// TestDownloadOfAnInterruptedAttemptIsRemovedFirst: a power cut while
// mender read the downloaded artifact leaves it (and a partial download)
// in the state directory; the next attempt removes both before it
// downloads, so the file system needs room for one artifact only.
func TestDownloadOfAnInterruptedAttemptIsRemovedFirst(t *testing.T) {
	content := []byte("the release artifact\n")
	sum := sha256.Sum256(content)
	d := newDevice(t, "mender-update", fakeScenario{})
	leftover := filepath.Join(d.stateDir, downloadFileName)
	require.NoError(t, os.WriteFile(leftover, []byte("artifact of the interrupted attempt"), 0o600))
	require.NoError(t, os.WriteFile(leftover+".part", []byte("partial"), 0o600))
	var mu sync.Mutex
	var during []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		for _, f := range []string{leftover, leftover + ".part"} {
			if _, err := os.Stat(f); err == nil {
				during = append(during, filepath.Base(f))
			}
		}
		mu.Unlock()
		_, _ = w.Write(content)
	}))
	defer srv.Close()
	d.allowHTTP = true
	d.hosts = []string{strings.TrimPrefix(srv.URL, "http://")}
	job := Job{ID: "ota-leftover", Document: Document{URL: srv.URL + "/a.mender", SHA256: hex.EncodeToString(sum[:])}}
	require.ErrorIs(t, d.updater(nil).Run(testCtx(t), job, d.reporter()), ErrRebootPending)
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, during, "files left by the interrupted attempt while downloading again")
	_, err := os.Stat(leftover)
	assert.ErrorIs(t, err, os.ErrNotExist, "the installed artifact is removed after the install")
}
