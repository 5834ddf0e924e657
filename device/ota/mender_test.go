package ota

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDetectMender(t *testing.T) {
	for _, tc := range []struct {
		name    string
		bin     string
		version string
		flavor  Flavor
		install []string
		commit  string
	}{
		{"mender-update is client 4", "mender-update", "", FlavorMender4, []string{"install", "U"}, "commit"},
		{"mender 3.5", "mender", "3.5.0", FlavorMender3, []string{"install", "U"}, "commit"},
		{"mender 2.6", "mender", "2.6.1", FlavorMender3, []string{"install", "U"}, "commit"},
		{"mender 1.7 legacy flags", "mender", "1.7.0", FlavorLegacy, []string{"-install", "U"}, "-commit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeMender(t, tc.bin, fakeScenario{Version: tc.version})
			m, err := DetectMender(testCtx(t), MenderConfig{
				UpdatePath: filepath.Join(f.dir, "mender-update"),
				Path:       filepath.Join(f.dir, "mender"),
			})
			require.NoError(t, err)
			assert.Equal(t, tc.flavor, m.Flavor)
			assert.Equal(t, f.Path, m.Path)
			assert.NotEmpty(t, m.Version)
			assert.Equal(t, append([]string{f.Path}, tc.install...), m.InstallArgs("U"))
			assert.Equal(t, []string{f.Path, tc.commit}, m.CommitArgs())
			assert.Equal(t, []string{f.Path, strings.Replace(tc.commit, "commit", "rollback", 1)}, m.RollbackArgs())
			// The detected dialect is what the client accepts.
			err = m.Commit(testCtx(t))
			require.ErrorIs(t, err, ErrNoUpdateInProgress)
		})
	}

	t.Run("mender-update preferred over mender", func(t *testing.T) {
		f := newFakeMender(t, "mender-update", fakeScenario{})
		require.NoError(t, os.Link(f.Path, filepath.Join(f.dir, "mender")))
		m, err := DetectMender(testCtx(t), MenderConfig{UpdatePath: f.Path, Path: filepath.Join(f.dir, "mender")})
		require.NoError(t, err)
		assert.Equal(t, FlavorMender4, m.Flavor)
	})
	t.Run("explicit flavor", func(t *testing.T) {
		f := newFakeMender(t, "mender", fakeScenario{Version: "3.5.0"})
		m, err := DetectMender(testCtx(t), MenderConfig{Flavor: FlavorLegacy, Path: f.Path})
		require.NoError(t, err)
		assert.Equal(t, FlavorLegacy, m.Flavor)
	})
	t.Run("unknown flavor", func(t *testing.T) {
		_, err := DetectMender(testCtx(t), MenderConfig{Flavor: "mender5"})
		require.ErrorContains(t, err, `mender flavor "mender5"`)
	})
	t.Run("no client", func(t *testing.T) {
		dir := t.TempDir()
		_, err := DetectMender(testCtx(t), MenderConfig{UpdatePath: filepath.Join(dir, "mender-update"), Path: filepath.Join(dir, "mender")})
		require.ErrorContains(t, err, "mender client not found")
	})
	t.Run("unparsable version", func(t *testing.T) {
		dir := t.TempDir()
		p := filepath.Join(dir, "mender")
		require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\necho 'what?'\n"), 0o755))
		_, err := DetectMender(testCtx(t), MenderConfig{UpdatePath: filepath.Join(dir, "none"), Path: p})
		require.ErrorContains(t, err, "cannot parse --version output")
	})
	t.Run("non-executable mender-update is ignored", func(t *testing.T) {
		f := newFakeMender(t, "mender", fakeScenario{Version: "3.1.0"})
		up := filepath.Join(f.dir, "mender-update")
		require.NoError(t, os.WriteFile(up, []byte("not a program"), 0o644))
		m, err := DetectMender(testCtx(t), MenderConfig{UpdatePath: up, Path: f.Path})
		require.NoError(t, err)
		assert.Equal(t, FlavorMender3, m.Flavor)
	})
}

func TestParseMajor(t *testing.T) {
	for out, want := range map[string]int{
		"4.0.2\n":                       4,
		"3.5.0\truntime: go1.20.5\n":    3,
		"mender version 2.6.0\n":        2,
		"1.7.0\truntime: go1.11.5\n":    1,
		"mender-update version 5.0.0\n": 5,
	} {
		got, ok := parseMajor(out)
		assert.True(t, ok, out)
		assert.Equal(t, want, got, out)
	}
	_, ok := parseMajor("usage: mender [options]")
	assert.False(t, ok)
}

func TestRunCommandKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	// The shell starts a grandchild that would outlive a plain kill.
	err := RunCommand(ctx, []string{"/bin/sh", "-c", `sleep 60 & echo $! > "$0"; wait`, pidFile}, nil, nil)
	var ce *CommandError
	require.ErrorAs(t, err, &ce)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	b, rerr := os.ReadFile(pidFile)
	require.NoError(t, rerr)
	pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, perr)
	require.Eventually(t, func() bool {
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) || isZombie(pid)
	}, 10*time.Second, 20*time.Millisecond, "grandchild killed with the group")
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] == "Z"
}

func TestRunCommandReportsExitAndOutput(t *testing.T) {
	var lines []string
	err := RunCommand(testCtx(t), []string{"/bin/sh", "-c", `printf 'a\rb\n'; echo 'ERRO[0003] boom  module=installer' >&2; exit 7`}, func(l string) { lines = append(lines, l) }, nil)
	var ce *CommandError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 7, ce.ExitCode)
	assert.Equal(t, "sh: exit status 7: boom", ce.Error())
	assert.ElementsMatch(t, []string{"a", "b", "ERRO[0003] boom  module=installer"}, lines)

	err = RunCommand(testCtx(t), []string{filepath.Join(t.TempDir(), "missing")}, nil, nil)
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, -1, ce.ExitCode)
	require.Error(t, RunCommand(testCtx(t), nil, nil, nil))
}

func TestSummarize(t *testing.T) {
	out := strings.Join([]string{
		"INFO[0000] Loaded configuration file: /etc/mender/mender.conf  module=config",
		"................................   5% 3072 KiB",
		"ERRO[0012] Download connection broken: unexpected EOF  module=client_update",
		`39%record_id=7 severity=error time="2024-Mar-04 10:11:12.1" name="Global" msg="Streaming failed: \"eof\""`,
	}, "\n")
	assert.Equal(t, `Download connection broken: unexpected EOF; Streaming failed: "eof"`, summarize(out))
	assert.Equal(t, "Committed.", summarize("INFO[0000] x\nCommitted.\n"))
}

// mender 3.4 with its stderr on a pipe (as under the agent): logrus text
// lines, the first one glued to the progress dots, each error logged twice.
func TestSummarizeMender3Logrus(t *testing.T) {
	out := `time="2026-12-05T15:37:53Z" level=info msg="Loaded configuration file: mender.conf"
time="2026-12-05T15:37:53Z" level=warning msg="No server URL(s) specified in mender configuration."
Installing Artifact of size 5120...
0%                              50%                              100%
|---------------------------------|---------------------------------|
......................................time="2026-12-05T15:37:53Z" level=error msg="Reading headers failed: installer: failed to read Artifact: reader: expecting signed artifact, but no signature file found"
time="2026-12-05T15:37:53Z" level=error msg="installer: failed to read Artifact: reader: expecting signed artifact, but no signature file found"
`
	assert.Equal(t, "Reading headers failed: installer: failed to read Artifact: reader: expecting signed artifact, but no signature file found", summarize(out))
	assert.Equal(t, `a "quoted" word`, summarize(`time="x" level=fatal msg="a \"quoted\" word"`+"\n"))
	assert.Equal(t, "done", summarize(`time="x" level=info msg=done`+"\n"))
}
