package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	simjobs "github.com/iot-fleet/iot-fleet/sim/jobs"
	"github.com/iot-fleet/iot-fleet/sim/registry"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// listenNotify opens a real $NOTIFY_SOCKET for the agent's
// SystemdNotifier: NOTIFY_SOCKET names it until the test ends.
func listenNotify(t *testing.T) *devicetest.NotifySocket {
	t.Helper()
	n := devicetest.ListenNotify(t)
	t.Setenv("NOTIFY_SOCKET", n.Path)
	return n
}

func isPing(s string) bool { return s == "WATCHDOG=1" }

// faults is a TestHook that kills ("exit") or stalls ("hang") a loop's
// goroutine once armed for it.
type faults struct {
	mu      sync.Mutex
	armed   map[string]string
	release chan struct{}
	hit     chan string
}

func newFaults(t *testing.T) *faults {
	f := &faults{armed: map[string]string{}, release: make(chan struct{}), hit: make(chan string, 1)}
	t.Cleanup(func() { close(f.release) })
	return f
}

func (f *faults) arm(loop, how string) {
	f.mu.Lock()
	f.armed[loop] = how
	f.mu.Unlock()
}

func (f *faults) hook(loop string) {
	f.mu.Lock()
	how := f.armed[loop]
	delete(f.armed, loop)
	f.mu.Unlock()
	if how == "" {
		return
	}
	select {
	case f.hit <- loop:
	default:
	}
	switch how {
	case "exit":
		runtime.Goexit()
	case "hang":
		<-f.release
	}
}

// runSupervised starts an agent with the real systemd notifier, a 2s
// watchdog and loops that must beat every 3s, and waits until it is
// ready and has pinged the watchdog.
func runSupervised(t *testing.T, cfg config.Config, f *faults, n *devicetest.NotifySocket, features ...FeatureFactory) (errc <-chan error, stop func(), stateDir string) {
	t.Helper()
	logs := &testenv.LogBuffer{}
	opts := testOptions(cfg, logs, features)
	opts.WatchdogInterval = func() (time.Duration, error) { return 2 * time.Second, nil }
	opts.LoopTimeout = 3 * time.Second
	opts.TestHook = f.hook
	a, runErr, cancel := launch(t, opts)
	t.Cleanup(func() {
		cancel()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	waitReady(t, a, runErr)
	n.WaitFor(t, 0, "READY=1", nil, func(s string) bool { return strings.HasPrefix(s, "READY=1") })
	n.WaitFor(t, 0, "WATCHDOG=1", nil, isPing)
	return runErr, cancel, cfg.StateDir
}

func waitExit(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("the agent did not exit")
		return nil
	}
}

func TestSupervisionLoopThatExitsFailsTheAgent(t *testing.T) {
	for _, loop := range []string{"outbox", "connection", "jobs"} {
		t.Run(loop, func(t *testing.T) {
			b := startCloud(t, cloudOptions{})
			n := listenNotify(t)
			f := newFaults(t)
			errc, _, stateDir := runSupervised(t, testConfig(t, b), f, n, JobsFeature(nil))
			f.arm(loop, "exit")
			select {
			case <-f.hit:
			case <-time.After(30 * time.Second):
				t.Fatalf("loop %s never beat", loop)
			}
			err := waitExit(t, errc)
			require.Error(t, err, "a dead %s loop must make Run fail (exit non-zero)", loop)
			if loop == "outbox" {
				// The outbox beats on the supervised goroutine itself: its
				// death is seen as such at once.
				assert.Contains(t, err.Error(), "loop outbox: its goroutine exited")
			} else {
				// The connection beats from conn.Run's goroutine, whose
				// death leaves it waiting for its dispatcher; the jobs loop
				// from its prober. Either way it stops beating.
				assert.Contains(t, err.Error(), loop)
			}

			// The status file says so, for `fleet-agent status`.
			st, err := store.Open(stateDir)
			require.NoError(t, err)
			rs, found, err := ReadRunState(st)
			require.NoError(t, err)
			require.True(t, found)
			assert.Equal(t, PhaseFailed, rs.Phase)
			assert.Contains(t, rs.Error, loop)
			assert.False(t, rs.Connected)
		})
	}
}

func TestSupervisionHungLoopStopsTheWatchdog(t *testing.T) {
	for _, loop := range []string{"jobs", "outbox"} {
		t.Run(loop, func(t *testing.T) {
			b := startCloud(t, cloudOptions{})
			n := listenNotify(t)
			f := newFaults(t)
			errc, _, _ := runSupervised(t, testConfig(t, b), f, n, JobsFeature(nil))
			f.arm(loop, "hang")
			select {
			case <-f.hit:
			case <-time.After(30 * time.Second):
				t.Fatalf("loop %s never beat", loop)
			}
			unhealthy := n.WaitFor(t, 0, "STATUS=...UNHEALTHY", nil, func(s string) bool {
				return strings.HasPrefix(s, "STATUS=") && strings.Contains(s, "UNHEALTHY, not beating: "+loop)
			})
			err := waitExit(t, errc)
			require.Error(t, err, "a hung %s loop must make Run fail (exit non-zero)", loop)
			assert.True(t, errors.Is(err, errHung), "%v", err)
			assert.Contains(t, err.Error(), loop)
			for i, s := range n.List() {
				if i > unhealthy {
					assert.False(t, isPing(s), "WATCHDOG=1 sent after the %s loop stopped beating: %q", loop, n.List())
				}
			}
		})
	}
}

// A step that runs much longer than the loop timeout (an OTA install of
// an hour, here a 7s sleep against 3s) is not a hang: the engine's loop
// keeps answering. STATUS= shows the step.
func TestSupervisionLongStepIsNotAHang(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cloud, err := stack.Start(ctx, stack.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cloud.Close() })
	doc, err := json.Marshal(map[string]any{
		"version": "1.0",
		"steps": []any{map[string]any{"action": map[string]any{
			"name": "nap", "type": "runCommand", "input": map[string]any{"command": "sleep,7"},
		}}},
	})
	require.NoError(t, err)
	_, err = cloud.Core.CreateJob(ctx, simjobs.CreateJobInput{JobID: "job-1", Document: doc, Groups: []string{cloud.Core.Names().ThingGroup}, Continuous: true})
	require.NoError(t, err)
	n := listenNotify(t)
	f := newFaults(t)
	var overdue atomic.Bool
	errc, stop, stateDir := runSupervised(t, stackConfig(t, cloud), f, n, JobsFeature(nil))
	running := n.WaitFor(t, 0, "STATUS= with the running step", nil, func(s string) bool {
		return strings.HasPrefix(s, "STATUS=") && strings.Contains(s, `jobs: job job-1 step 1/1 "nap" running`)
	})
	thing := cloud.Core.Names().ThingNamePrefix + serial
	for done := false; !done; {
		select {
		case err := <-errc:
			t.Fatalf("the agent stopped during a long step: %v", err)
		case <-ctx.Done():
			t.Fatal("job did not finish")
		case <-time.After(20 * time.Millisecond):
		}
		ex, err := cloud.Core.Jobs().Execution("job-1", thing)
		require.NoError(t, err)
		if ex.Status.Terminal() {
			assert.Equal(t, protocol.JobSucceeded, ex.Status)
			done = true
		}
	}
	pings := 0
	for i, s := range n.List() {
		if strings.Contains(s, "UNHEALTHY") {
			overdue.Store(true)
		}
		if i > running && isPing(s) {
			pings++
		}
	}
	assert.False(t, overdue.Load(), "a long step was taken for a hang: %q", n.List())
	assert.GreaterOrEqual(t, pings, 3, "the watchdog is pinged during the step")
	n.WaitFor(t, running, "STATUS= without the job", nil, func(s string) bool {
		return strings.HasPrefix(s, "STATUS=connected as") && !strings.Contains(s, "job-1")
	})
	st, err := store.Open(stateDir)
	require.NoError(t, err)
	rs, found, err := ReadRunState(st)
	require.NoError(t, err)
	require.True(t, found)
	assert.True(t, rs.Alive(), "written by this running process")
	assert.Equal(t, PhaseRunning, rs.Phase)
	assert.True(t, rs.Connected)
	names := []string{}
	for _, l := range rs.Loops {
		names = append(names, l.Name)
		assert.False(t, l.Overdue, l.Name)
	}
	assert.ElementsMatch(t, []string{"outbox", "connection", "jobs"}, names)
	stop()
	require.NoError(t, waitExit(t, errc))
	rs, _, err = ReadRunState(st)
	require.NoError(t, err)
	assert.Equal(t, PhaseStopped, rs.Phase)
}

// stuckSerial makes the serial source at path a FIFO nobody writes:
// reading it blocks, as a stuck EEPROM or sysfs read would. The test's end
// opens and closes it without writing, so the blocked read ends with
// nothing (no serial: the abandoned provisioning gives up, writing no
// state).
func stuckSerial(t *testing.T, path string) {
	t.Helper()
	require.NoError(t, os.Remove(path))
	require.NoError(t, syscall.Mkfifo(path, 0o600))
	t.Cleanup(func() {
		// O_NONBLOCK: fails at once (ENXIO) when no read is blocked.
		if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			_ = f.Close()
		}
	})
}

// serialFile is testConfig's serial file (after a missing one).
func serialFile(cfg config.Config) string { return cfg.Provisioning.SerialFiles[1] }

// A hang in first-boot provisioning, which has no loop of its own, stops
// the watchdog pings and fails the agent like a hang of any loop.
func TestSupervisionHungProvisioningFailsTheAgent(t *testing.T) {
	b := startCloud(t, cloudOptions{})
	n := listenNotify(t)
	cfg := testConfig(t, b)
	stuckSerial(t, serialFile(cfg))
	logs := &testenv.LogBuffer{}
	opts := testOptions(cfg, logs, nil)
	opts.WatchdogInterval = func() (time.Duration, error) { return 2 * time.Second, nil }
	opts.LoopTimeout = 3 * time.Second
	_, errc, _ := launch(t, opts)
	n.WaitFor(t, 0, "STATUS=...UNHEALTHY", nil, func(s string) bool {
		return strings.HasPrefix(s, "STATUS=") && strings.Contains(s, "UNHEALTHY, not beating: provisioning")
	})
	err := waitExit(t, errc)
	require.ErrorIs(t, err, errHung, logs.String())
	assert.Contains(t, err.Error(), "provisioning")
}

// A recovery after a refused certificate runs on the connection loop and
// announces its bounded waits there: a hang in it (the serial source
// blocks) fails the agent instead of leaving it unsupervised for good.
func TestSupervisionHungRecoveryFailsTheAgent(t *testing.T) {
	b := startCloud(t, cloudOptions{})
	n := listenNotify(t)
	cfg := testConfig(t, b)
	errc, _, _ := runSupervised(t, cfg, newFaults(t), n)
	old := identityOf(t, cfg)
	stuckSerial(t, serialFile(cfg))
	b.refuse(old, registry.CertRevoked)
	n.WaitFor(t, 0, "STATUS=...UNHEALTHY", nil, func(s string) bool {
		return strings.HasPrefix(s, "STATUS=") && strings.Contains(s, "UNHEALTHY, not beating: connection")
	})
	err := waitExit(t, errc)
	require.ErrorIs(t, err, errHung)
	assert.Contains(t, err.Error(), "connection")
}

// A recovery waiting out a denial backoff longer than the loop timeout
// (the serial is not admitted yet) is not a hang: the wait is announced on
// the connection loop, the watchdog keeps being pinged, and the recovery
// completes once the serial is admitted.
func TestSupervisionLongRecoveryBackoffIsNotAHang(t *testing.T) {
	var deny atomic.Bool
	b := startCloud(t, cloudOptions{Allow: func(string) bool { return !deny.Load() }})
	n := listenNotify(t)
	cfg := testConfig(t, b)
	cfg.Provisioning.DeniedBackoff = config.Duration(8 * time.Second)
	cfg.Provisioning.DeniedBackoffMin = config.Duration(8 * time.Second)
	errc, stop, _ := runSupervised(t, cfg, newFaults(t), n)
	old := identityOf(t, cfg)
	deny.Store(true)
	b.refuse(old, registry.CertRevoked)
	// The first denial starts the 8s backoff (loop timeout 3s, watchdog 2s).
	denied := n.WaitFor(t, 0, "STATUS=recovering", errc, func(s string) bool {
		return strings.HasPrefix(s, "STATUS=") && strings.Contains(s, "recovering")
	})
	start := time.Now()
	require.Eventually(t, func() bool { return time.Since(start) > 6*time.Second }, time.Minute, 100*time.Millisecond)
	pings := 0
	for _, s := range n.List()[denied:] {
		assert.NotContains(t, s, "UNHEALTHY", "a denial backoff is not a hang")
		if isPing(s) {
			pings++
		}
	}
	assert.GreaterOrEqual(t, pings, 2, "the watchdog is pinged through the backoff: %q", n.List()[denied:])
	select {
	case err := <-errc:
		t.Fatalf("the agent stopped during the backoff: %v", err)
	default:
	}
	deny.Store(false)
	require.Eventually(t, func() bool {
		id := identityOf(t, cfg)
		return id.CertificateID != old.CertificateID && b.principalOf(id.ThingName) == id.CertificateID
	}, time.Minute, 50*time.Millisecond, "recovered once admitted")
	stop()
	require.NoError(t, waitExit(t, errc))
}
