package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// buildFaultyAgent builds the binary with the test hooks that inject
// faults into its loops (testhook_faults.go; never in a release build).
func buildFaultyAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "fleet-agent")
	cmd := exec.Command("go", "build", "-tags", "fleetagent_testhooks", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// The real binary under a real NOTIFY_SOCKET: a loop whose goroutine dies
// makes the agent exit non-zero at once; a loop that stops beating stops
// the watchdog pings and the agent exits non-zero (Restart=on-failure).
func TestBinarySupervision(t *testing.T) {
	bin := buildFaultyAgent(t)
	for _, tc := range []struct{ fault, want string }{
		{"outbox.exit", "loop outbox: its goroutine exited"},
		{"jobs.hang", "loops stopped beating: jobs"},
		{"connection.hang", "loops stopped beating: connection"},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			cfgFile, stateDir := startLocalCloud(t, "10000000feed0a01").agentConfig(t, "10000000feed0a01")
			faults := t.TempDir()
			n := devicetest.ListenNotify(t)
			logs := &testenv.LogBuffer{}
			cmd := exec.Command(bin, "run", "--config", cfgFile)
			cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+n.Path, "WATCHDOG_USEC=3000000", "FLEET_AGENT_TEST_FAULT_DIR="+faults)
			cmd.Stdout, cmd.Stderr = logs, logs
			require.NoError(t, cmd.Start())
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				if t.Failed() {
					t.Logf("agent log:\n%s", logs.String())
				}
			})
			n.WaitFor(t, 0, "READY=1", exited, func(s string) bool { return strings.HasPrefix(s, "READY=1") })
			n.WaitFor(t, 0, "WATCHDOG=1", exited, func(s string) bool { return s == "WATCHDOG=1" })

			require.NoError(t, os.WriteFile(filepath.Join(faults, tc.fault), nil, 0o600))
			var err error
			select {
			case err = <-exited:
			case <-time.After(60 * time.Second):
				t.Fatal("the agent did not exit")
			}
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, "the agent must exit non-zero")
			assert.Equal(t, 1, ee.ExitCode())
			assert.Contains(t, logs.String(), tc.want)

			if strings.HasSuffix(tc.fault, ".hang") {
				// After the STATUS= that reports the hung loop, systemd is
				// never told the agent is alive again.
				loop := strings.TrimSuffix(tc.fault, ".hang")
				states := n.List()
				i := n.WaitFor(t, 0, "STATUS= naming the hung loop", exited, func(s string) bool {
					return strings.HasPrefix(s, "STATUS=") && strings.Contains(s, "UNHEALTHY, not beating: "+loop)
				})
				for _, s := range states[i+1:] {
					assert.NotEqual(t, "WATCHDOG=1", s, "watchdog pinged after the %s loop hung: %q", loop, states)
				}
			}

			// fleet-agent status tells what happened.
			out, err := exec.Command(bin, "status", "--state-dir", stateDir).CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.Contains(t, string(out), "not running (last: failed")
			assert.Contains(t, string(out), tc.want)
		})
	}
}
