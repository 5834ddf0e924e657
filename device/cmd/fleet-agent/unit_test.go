package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const unitFile = "../../systemd/fleet-agent.service"

// unitService reads the [Service] section of the agent's systemd unit.
func unitService(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(unitFile)
	require.NoError(t, err)
	kv := map[string]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			require.True(t, ok, "unit line %q", line)
			kv[k] = v
		}
	}
	require.NoError(t, sc.Err())
	return kv
}

// The unit and the agent's supervision agree: systemd is notified by the
// agent's own process (READY, WATCHDOG, STATUS, STOPPING), a missed
// watchdog or a non-zero exit restarts it, and the stop timeout leaves the
// agent its grace for loops (15s) before SIGKILL. systemd-analyze verify
// accepts the unit with the real binary.
func TestSystemdUnitMatchesSupervision(t *testing.T) {
	svc := unitService(t)
	assert.Equal(t, "notify", svc["Type"])
	assert.Equal(t, "main", svc["NotifyAccess"], "only the agent itself may ping: a job handler must not keep a hung agent alive")
	assert.Equal(t, "on-failure", svc["Restart"], "covers a non-zero exit and a watchdog timeout")
	wd, err := time.ParseDuration(svc["WatchdogSec"] + "s")
	require.NoError(t, err, "WatchdogSec=%q", svc["WatchdogSec"])
	assert.GreaterOrEqual(t, wd, 30*time.Second, "loops beat every WatchdogSec/3: not too often on a Pi")
	stop, err := time.ParseDuration(svc["TimeoutStopSec"] + "s")
	require.NoError(t, err)
	assert.Greater(t, stop, 15*time.Second, "TimeoutStopSec must exceed the agent's stop grace for its loops")
	_, hasWatchdogSignal := svc["WatchdogSignal"]
	assert.False(t, hasWatchdogSignal, "the default SIGABRT makes the Go runtime dump every goroutine: the hung loop's stack is in the journal")

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	root := t.TempDir()
	hostUnits := "/usr/lib/systemd/system"
	if _, err := os.Stat(hostUnits); err != nil {
		hostUnits = "/lib/systemd/system"
	}
	require.NoError(t, os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755))
	out, err := exec.Command("cp", "-a", hostUnits, filepath.Join(root, "usr/lib/systemd/system")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NoError(t, os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "etc/systemd/system"), 0o755))
	out, err = exec.Command("cp", buildAgent(t), filepath.Join(root, "usr/bin/fleet-agent")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	unit, err := os.ReadFile(unitFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/systemd/system/fleet-agent.service"), unit, 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err = exec.CommandContext(ctx, analyze, "verify", "--root="+root, "/etc/systemd/system/fleet-agent.service").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify has warnings")
}
