package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

const serial = "10000000feed0001"

// buildAgent compiles the real binary once per test run, with the version
// set through -ldflags like the release build.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "fleet-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=v9.8.7-test", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

func TestBinary(t *testing.T) {
	bin := buildAgent(t)

	t.Run("version", func(t *testing.T) {
		for _, args := range [][]string{{"--version"}, {"-version"}, {"version"}} {
			out, err := exec.Command(bin, args...).CombinedOutput()
			require.NoError(t, err)
			assert.Equal(t, "v9.8.7-test\n", string(out))
		}
	})

	t.Run("check-job", func(t *testing.T) {
		dir := t.TempDir()
		good := filepath.Join(dir, "good.json")
		require.NoError(t, os.WriteFile(good, []byte(`{"version":"1.0","steps":[{"action":{"name":"hello","type":"runCommand","input":{"command":"echo,hello"}}}]}`), 0o644))
		bad := filepath.Join(dir, "bad.json")
		require.NoError(t, os.WriteFile(bad, []byte(`{"version":"1.0","steps":[{"action":{"name":"x","type":"runCommand","input":{}}}]}`), 0o644))
		cmd := exec.Command(bin, "check-job", good)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Contains(t, string(out), "hello")
		cmd = exec.Command(bin, "check-job", bad)
		out, err = cmd.CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, 1, ee.ExitCode())
		assert.Contains(t, string(out), "INVALID")
		assert.Contains(t, string(out), "command")

		// With the device's configuration, check-job reports what the
		// device would refuse and why.
		for _, tc := range []struct{ jobs, want string }{
			{`{"runCommand":{"enabled":false}}`, "good.json: INVALID: field steps[0].action.type: runCommand steps are disabled on this device (agent configuration jobs.runCommand.enabled is false)"},
			{`{"runCommand":{"allowedExecutables":["/bin/echo"]}}`, `good.json: INVALID: field steps[0].action.input.command: executable "echo" is not in jobs.runCommand.allowedExecutables of this device (allowed: /bin/echo)`},
		} {
			cfgFile := filepath.Join(dir, "config.json")
			require.NoError(t, os.WriteFile(cfgFile, []byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t"},"jobs":`+tc.jobs+`}`), 0o600))
			out, err = exec.Command(bin, "check-job", "--config", cfgFile, good).CombinedOutput()
			require.ErrorAs(t, err, &ee)
			assert.Equal(t, 1, ee.ExitCode())
			assert.Contains(t, string(out), tc.want)
			assert.Contains(t, string(out), "[from "+cfgFile+"]")
		}
		cfgFile := filepath.Join(dir, "config.json")
		require.NoError(t, os.WriteFile(cfgFile, []byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t"},"jobs":{"runCommand":{"allowedExecutables":["echo"]}}}`), 0o600))
		out, err = exec.Command(bin, "check-job", "--config", cfgFile, good).CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Contains(t, string(out), "good.json: valid")
	})

	t.Run("invalid config names the field", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "c.json")
		require.NoError(t, os.WriteFile(path, []byte(`{"endpoint":"x.example.com","port":443,"provisioning":{"templateName":"t"}}`), 0o644))
		out, err := exec.Command(bin, "--config", path).CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, 1, ee.ExitCode())
		assert.Contains(t, string(out), `field "alpn"`)
		out, err = exec.Command(bin, "--config", path, "--alpn", "--state-dir", "relative").CombinedOutput()
		require.Error(t, err)
		assert.Contains(t, string(out), `field "stateDir"`, "flag overrides are validated too")

		// Every problem at once, one a line, each with its JSON path.
		require.NoError(t, os.WriteFile(path, []byte(`{"endpoint":"x.example.com","port":443,"provisioning":{"templateName":"t"},
			"mqtt":{"keepalive":"10s"},"ota":{"healthChecks":[{"name":"a","command":["true"],"timeout":"soon"}]}}`), 0o644))
		out, err = exec.Command(bin, "--config", path).CombinedOutput()
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, 1, ee.ExitCode())
		assert.Equal(t, "fleet-agent: "+path+`: field "mqtt.keepalive": unknown field (keys are case-sensitive: did you mean "keepAlive"?)
fleet-agent: `+path+`: field "ota.healthChecks[0].timeout": invalid duration "soon"
fleet-agent: `+path+`: field "alpn": must be true on port 443 (AWS IoT Core needs ALPN x-amzn-mqtt-ca for MQTT on 443)
`, string(out))
	})

	t.Run("check-config", func(t *testing.T) {
		dir := t.TempDir()
		good := filepath.Join(dir, "good.json")
		require.NoError(t, os.WriteFile(good, []byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t"},"mqtt":{"keepAlive":"30s"}}`), 0o600))
		cmd := exec.Command(bin, "check-config", good)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		require.NoError(t, cmd.Run(), stderr.String())
		assert.Equal(t, good+`: valid
  settings that differ from the defaults:
  endpoint = "x.example.com" (default "")
  provisioning.templateName = "t" (default "")
  mqtt.keepAlive = "30s" (default "1m0s")
`, stdout.String())

		bad := filepath.Join(dir, "bad.json")
		require.NoError(t, os.WriteFile(bad, []byte(`{"endpoint":"x.example.com:8883","provisioning":{"templateName":"t"},
			"jobs":{"runCommand":{"Enabled":false,"allowedExecutables":["/bin/echo","bin/sh"]}},"ota":{"maxAttempts":"3"}}`), 0o600))
		out, err := exec.Command(bin, "check-config", bad).CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, 1, ee.ExitCode())
		assert.Equal(t, bad+`: INVALID (4 problems)
`+bad+`: field "jobs.runCommand.Enabled": unknown field (keys are case-sensitive: did you mean "enabled"?)
`+bad+`: field "ota.maxAttempts": must be a number, not a JSON string
`+bad+`: field "endpoint": must not include a port; use the port field
`+bad+`: field "jobs.runCommand.allowedExecutables[1]": "bin/sh" must be an absolute path or a bare program name, not a relative path
`, string(out))

		out, err = exec.Command(bin, "check-config").CombinedOutput()
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, 2, ee.ExitCode())
		assert.Contains(t, string(out), "usage: fleet-agent check-config FILE")
		out, err = exec.Command(bin, "check-config", "--help").CombinedOutput()
		require.NoError(t, err)
		assert.Contains(t, string(out), "usage: fleet-agent check-config FILE")
		out, _ = exec.Command(bin, "--help").CombinedOutput()
		assert.Contains(t, string(out), "fleet-agent check-config FILE", "the agent's usage names it")
	})

	t.Run("run provisions, connects, starts jobs and stops on SIGTERM", func(t *testing.T) {
		// The local IoT Core with the stack's Lambdas: the serial is on
		// the allowlist, and a continuous job for the thing group waits
		// for the device to provision and ask for its next job.
		st := startLocalCloud(t, serial)
		st.groupJob(t, "first", map[string]any{"operation": "no-such-operation"})
		cfgFile, stateDir := st.agentConfig(t, serial)
		dir := t.TempDir()

		sock := filepath.Join(dir, "notify.sock")
		notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
		require.NoError(t, err)
		defer notify.Close()
		states := make(chan string, 100)
		go func() {
			buf := make([]byte, 512)
			for {
				n, _, err := notify.ReadFromUnix(buf)
				if err != nil {
					close(states)
					return
				}
				states <- string(buf[:n])
			}
		}()

		logs := &testenv.LogBuffer{}
		cmd := exec.Command(bin, "run", "--config", cfgFile)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=10000000")
		cmd.Stdout, cmd.Stderr = logs, logs
		require.NoError(t, cmd.Start())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			t.Logf("agent log:\n%s", logs.String())
		})

		waitState := func(prefix string) {
			t.Helper()
			deadline := time.After(30 * time.Second)
			for {
				select {
				case s := <-states:
					if strings.HasPrefix(s, prefix) {
						return
					}
				case err := <-exited:
					t.Fatalf("agent exited: %v", err)
				case <-deadline:
					t.Fatalf("no %s notification", prefix)
				}
			}
		}
		waitState("READY=1")
		thing := "dev-" + serial
		// The jobs engine asked for its next job after connecting: the
		// queued execution was started (and ended: no such operation).
		require.Eventually(t, func() bool {
			ex, err := st.Core.Jobs().Execution("first", thing)
			return err == nil && ex.Status != protocol.JobQueued
		}, 30*time.Second, 20*time.Millisecond, "the jobs engine did not start its next job after connecting")
		waitState("WATCHDOG=1")

		// Idle RSS and CPU of the provisioned, connected agent (figures for
		// docs/benchmarks.md, logged, not asserted).
		if runtime.GOOS == "linux" {
			pid := strconv.Itoa(cmd.Process.Pid)
			cpuTicks := func() int64 {
				stat, err := os.ReadFile("/proc/" + pid + "/stat")
				require.NoError(t, err)
				f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
				ut, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				return ut + st
			}
			time.Sleep(time.Second)
			t0, c0 := time.Now(), cpuTicks()
			time.Sleep(3 * time.Second)
			used := time.Duration(cpuTicks()-c0) * 10 * time.Millisecond // USER_HZ = 100
			t.Logf("idle CPU: %v over %v", used, time.Since(t0).Round(time.Millisecond))
			status, err := os.ReadFile("/proc/" + pid + "/status")
			require.NoError(t, err)
			for _, line := range strings.Split(string(status), "\n") {
				if strings.HasPrefix(line, "VmRSS:") || strings.HasPrefix(line, "VmHWM:") {
					t.Logf("idle %s (GOARCH=%s)", line, runtime.GOARCH)
				}
			}
		}

		require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
		waitState("STOPPING=1")
		select {
		case err := <-exited:
			require.NoError(t, err, "clean exit on SIGTERM")
		case <-time.After(30 * time.Second):
			t.Fatal("agent did not exit after SIGTERM")
		}
		keyPEM, err := os.ReadFile(filepath.Join(stateDir, "certs", "device.key"))
		require.NoError(t, err)
		assert.NotContains(t, logs.String(), "PRIVATE KEY")
		assert.NotContains(t, logs.String(), strings.Split(string(keyPEM), "\n")[1])
	})
}
