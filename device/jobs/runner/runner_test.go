package runner

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
)

func intp(n int) *int { return &n }

// handlerDir makes an owner-only handler directory.
func handlerDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "handlers")
	require.NoError(t, os.Mkdir(dir, 0o700))
	return dir
}

func writeScript(t *testing.T, dir, name, body string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o600))
	require.NoError(t, os.Chmod(p, mode))
	return p
}

func newRunner(t *testing.T, cfg Config) *Runner {
	t.Helper()
	if cfg.KillGrace == 0 {
		cfg.KillGrace = 200 * time.Millisecond
	}
	r, err := New(cfg)
	require.NoError(t, err)
	return r
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func handlerStep(handler string, args ...string) Step {
	return Step{Action: jobdoc.Action{Name: handler, Type: jobdoc.TypeRunHandler, Handler: handler, Args: args}}
}

func TestHandlerReceivesUserThenArgs(t *testing.T) {
	dir := handlerDir(t)
	writeScript(t, dir, "show.sh", `echo "user=[$1] n=$# rest=$2,$3"; echo "to stderr" >&2`, 0o700)
	r := newRunner(t, Config{HandlerDir: dir})

	s := handlerStep("show.sh", "a b", "c")
	s.Action.RunAsUser = "pi"
	s.IncludeStdOut = true
	res := r.Run(ctxT(t), s)
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, 0, res.ExitCode)
	assert.Equal(t, "user=[pi] n=3 rest=a b,c\n", res.Stdout)
	assert.Equal(t, "to stderr\n", res.Stderr)
	assert.Equal(t, 1, res.StderrLines)
	assert.Equal(t, []string{filepath.Join(dir, "show.sh"), "pi", "a b", "c"}, res.Argv)

	// Without runAsUser the first argument is the empty string, and
	// without includeStdOut stdout is not kept.
	s = handlerStep("show.sh", "x")
	res = r.Run(ctxT(t), s)
	require.True(t, res.OK, res.Reason)
	assert.Empty(t, res.Stdout)
	assert.Equal(t, []string{filepath.Join(dir, "show.sh"), "", "x"}, res.Argv)
}

func TestHandlerExitStatusAndStderr(t *testing.T) {
	dir := handlerDir(t)
	writeScript(t, dir, "fail.sh", `echo "mv: cannot stat '/sbin/reboot-invalid'" >&2; exit 3`, 0o700)
	r := newRunner(t, Config{HandlerDir: dir})
	res := r.Run(ctxT(t), handlerStep("fail.sh"))
	assert.False(t, res.OK)
	assert.False(t, res.Refused)
	assert.Equal(t, 3, res.ExitCode)
	assert.Equal(t, "exited with status 3", res.Reason)
	assert.Equal(t, "mv: cannot stat '/sbin/reboot-invalid'\n", res.Stderr)
}

func TestAllowStdErr(t *testing.T) {
	dir := handlerDir(t)
	writeScript(t, dir, "warn.sh", `echo one >&2; printf 'two' >&2; exit 0`, 0o700)
	r := newRunner(t, Config{HandlerDir: dir})
	for _, tc := range []struct {
		allow *int
		ok    bool
	}{{nil, true}, {intp(0), false}, {intp(1), false}, {intp(2), true}} {
		s := handlerStep("warn.sh")
		s.Action.AllowStdErr = tc.allow
		res := r.Run(ctxT(t), s)
		assert.Equal(t, 2, res.StderrLines)
		assert.Equal(t, tc.ok, res.OK, "allowStdErr %v: %s", tc.allow, res.Reason)
		if !tc.ok {
			assert.Contains(t, res.Reason, "wrote 2 line(s) to stderr")
		}
	}
}

func TestHandlerPermissionRules(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Log("not root: the wrong-owner cases are skipped")
	}
	tests := []struct {
		name   string
		setup  func(t *testing.T, dir string)
		reason string
	}{
		{"group readable handler", func(t *testing.T, dir string) { writeScript(t, dir, "h.sh", "exit 0", 0o750) }, "has mode 0750, must be 0700"},
		{"world executable handler", func(t *testing.T, dir string) { writeScript(t, dir, "h.sh", "exit 0", 0o755) }, "has mode 0755"},
		{"setuid handler", func(t *testing.T, dir string) {
			p := writeScript(t, dir, "h.sh", "exit 0", 0o700)
			require.NoError(t, os.Chmod(p, 0o700|os.ModeSetuid))
		}, "has mode 4700"},
		{"not executable handler", func(t *testing.T, dir string) { writeScript(t, dir, "h.sh", "exit 0", 0o600) }, "has mode 0600"},
		{"directory too open", func(t *testing.T, dir string) {
			writeScript(t, dir, "h.sh", "exit 0", 0o700)
			require.NoError(t, os.Chmod(dir, 0o755))
		}, "handler directory refused"},
		{"missing handler", func(t *testing.T, dir string) {}, "is neither in the handler directory"},
		{"symlink handler", func(t *testing.T, dir string) {
			target := writeScript(t, dir, "real.sh", "exit 0", 0o700)
			require.NoError(t, os.Symlink(target, filepath.Join(dir, "h.sh")))
		}, "symbolic link"},
		{"directory as handler", func(t *testing.T, dir string) {
			require.NoError(t, os.Mkdir(filepath.Join(dir, "h.sh"), 0o700))
		}, "not a regular file"},
		{"handler owned by another uid", func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			p := writeScript(t, dir, "h.sh", "exit 0", 0o700)
			require.NoError(t, os.Chown(p, 65534, 65534))
		}, "owned by uid 65534"},
		{"directory owned by another uid", func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			writeScript(t, dir, "h.sh", "exit 0", 0o700)
			require.NoError(t, os.Chown(dir, 65534, 65534))
		}, "handler directory refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := handlerDir(t)
			marker := filepath.Join(t.TempDir(), "ran")
			tc.setup(t, dir)
			r := newRunner(t, Config{HandlerDir: dir, Env: []string{"MARKER=" + marker}})
			res := r.Run(ctxT(t), handlerStep("h.sh"))
			assert.False(t, res.OK)
			assert.True(t, res.Refused)
			assert.Contains(t, res.Reason, tc.reason)
			assert.NoFileExists(t, marker)
		})
	}
}

func TestHandlerNameAndPathRules(t *testing.T) {
	dir := handlerDir(t)
	other := handlerDir(t)
	writeScript(t, other, "o.sh", "echo other", 0o700)
	r := newRunner(t, Config{HandlerDir: dir, AllowedPaths: []string{other + "/"}})

	for _, name := range []string{"../o.sh", "/bin/sh", "..", ""} {
		res := r.Run(ctxT(t), handlerStep(name))
		assert.True(t, res.Refused, name)
		assert.Contains(t, res.Reason, "must be a plain file name", name)
	}

	s := handlerStep("o.sh")
	s.Action.Path = "/usr/bin"
	res := r.Run(ctxT(t), s)
	assert.True(t, res.Refused)
	assert.Contains(t, res.Reason, `path "/usr/bin" is not an allowed handler directory`)

	s.Action.Path = other
	s.IncludeStdOut = true
	res = r.Run(ctxT(t), s)
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, "other\n", res.Stdout)

	// "default" is the handler directory, where o.sh does not exist.
	s.Action.Path = "default"
	res = r.Run(ctxT(t), s)
	assert.True(t, res.Refused)
	assert.Contains(t, res.Reason, "does not exist")
}

func TestOutputTruncation(t *testing.T) {
	dir := handlerDir(t)
	// 3000 'x', then 100 'é' (2 bytes each), then END, on stderr and stdout.
	writeScript(t, dir, "loud.sh", `i=0; while [ $i -lt 300 ]; do printf 'xxxxxxxxxx'; i=$((i+1)); done >&2
i=0; while [ $i -lt 100 ]; do printf 'é'; i=$((i+1)); done >&2
printf 'END' >&2
i=0; while [ $i -lt 500 ]; do echo "line $i"; i=$((i+1)); done`, 0o700)
	r := newRunner(t, Config{HandlerDir: dir})
	s := handlerStep("loud.sh")
	s.IncludeStdOut = true
	res := r.Run(ctxT(t), s)
	require.True(t, res.OK, res.Reason)
	// The last 1024 characters (AWS counts characters), raw.
	assert.Equal(t, strings.Repeat("x", 1024-103)+strings.Repeat("é", 100)+"END", res.Stderr)
	assert.Equal(t, OutputTailBytes, utf8.RuneCountInString(res.Stdout))
	assert.True(t, strings.HasSuffix(res.Stdout, "line 499\n"))
	assert.NotContains(t, res.Stdout, "line 1\n")
	assert.Equal(t, 1, res.StderrLines)
}

// processGone reports whether pid has exited (absent or a zombie).
func processGone(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	for _, tc := range []struct {
		name string
		trap string
	}{
		{"handler exits on SIGTERM", ""},
		{"handler ignores SIGTERM", "trap '' TERM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := handlerDir(t)
			pidFile := filepath.Join(t.TempDir(), "child.pid")
			ready := pidFile + ".ready"
			writeScript(t, dir, "hang.sh", tc.trap+`
sleep 300 &
echo $! > "$PIDFILE"
touch "$READY"
wait
echo "not reached"`, 0o700)
			r := newRunner(t, Config{HandlerDir: dir, Env: []string{"PIDFILE=" + pidFile, "READY=" + ready, "PATH=" + os.Getenv("PATH")}})
			s := handlerStep("hang.sh")
			s.Timeout = 500 * time.Millisecond
			s.IncludeStdOut = true
			res := r.Run(ctxT(t), s)
			assert.False(t, res.OK)
			assert.True(t, res.TimedOut)
			assert.Contains(t, res.Reason, "timed out after 500ms; process group killed")
			assert.NotContains(t, res.Stdout, "not reached")
			require.FileExists(t, ready, "the handler did not start its child before the timeout")
			data, err := os.ReadFile(pidFile)
			require.NoError(t, err)
			pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
			require.NoError(t, err)
			waitGone(t, pid)
		})
	}
}

func TestCancelKillsStep(t *testing.T) {
	dir := handlerDir(t)
	ready := filepath.Join(t.TempDir(), "ready")
	writeScript(t, dir, "hang.sh", `touch "$READY"; exec sleep 300`, 0o700)
	r := newRunner(t, Config{HandlerDir: dir, Env: []string{"READY=" + ready, "PATH=" + os.Getenv("PATH")}})
	ctx, cancel := context.WithCancel(ctxT(t))
	go func() {
		for {
			if _, err := os.Stat(ready); err == nil {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	res := r.Run(ctx, handlerStep("hang.sh"))
	assert.True(t, res.Canceled)
	assert.False(t, res.OK)
	assert.Equal(t, "canceled; process group killed", res.Reason)
}

func commandStep(command, runAs string) Step {
	argv, err := jobdoc.SplitCommand(command)
	if err != nil {
		panic(err)
	}
	return Step{IncludeStdOut: true, Action: jobdoc.Action{Name: "cmd", Type: jobdoc.TypeRunCommand, Command: command, Argv: argv, RunAsUser: runAs}}
}

func TestRunCommandWithoutShell(t *testing.T) {
	r := newRunner(t, Config{HandlerDir: handlerDir(t)})
	res := r.Run(ctxT(t), commandStep(`echo,Hello\, I am Device Client.,$HOME,;,*`, ""))
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, "Hello, I am Device Client. $HOME ; *\n", res.Stdout)

	res = r.Run(ctxT(t), commandStep("sh,-c,echo oops >&2; exit 7", ""))
	assert.Equal(t, 7, res.ExitCode)
	assert.Equal(t, "oops\n", res.Stderr)

	res = r.Run(ctxT(t), commandStep("no-such-program-xyz", ""))
	assert.False(t, res.OK)
	assert.False(t, res.Refused, "a program that cannot start fails the step")
	assert.Contains(t, res.Reason, `failed to start no-such-program-xyz: no executable "no-such-program-xyz" in the agent's PATH`)
}

// A bare program name of a runCommand step is found exactly as a
// runHandler step's PATH rule finds it: in the absolute entries of the
// steps' PATH, not in the agent process's own PATH, never in the working
// directory.
func TestRunCommandUsesTheStepsPATH(t *testing.T) {
	bin := t.TempDir()
	prog := filepath.Join(bin, "fleet-hello")
	require.NoError(t, os.WriteFile(prog, []byte("#!/bin/sh\necho hello from $0\n"), 0o755))
	r := newRunner(t, Config{HandlerDir: handlerDir(t), Env: []string{"PATH=" + bin + ":/usr/bin:/bin"}})
	res := r.Run(ctxT(t), commandStep("fleet-hello", ""))
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, "hello from "+prog+"\n", res.Stdout)
	assert.Equal(t, []string{"fleet-hello"}, res.Argv)
	// The program sees the name it was called by as its argv[0], as after
	// the Device Client's execvp (its error messages start with it).
	res = r.Run(ctxT(t), commandStep("sh,-c,echo $0", ""))
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, "sh\n", res.Stdout)
	got, err := r.Resolve(jobdoc.Action{Type: jobdoc.TypeRunHandler, Handler: "fleet-hello"})
	require.NoError(t, err)
	assert.Equal(t, Resolution{Path: prog, Rule: RulePATH}, got, "runHandler finds the same program")

	// Relative PATH entries (the working directory) are never searched.
	t.Chdir(bin)
	rel := newRunner(t, Config{HandlerDir: handlerDir(t), Env: []string{"PATH=.:"}})
	res = rel.Run(ctxT(t), commandStep("fleet-hello", ""))
	assert.False(t, res.OK)
	assert.Contains(t, res.Reason, `no executable "fleet-hello" in the agent's PATH (.:)`)
}

func TestRunCommandPolicyIsEnforced(t *testing.T) {
	tmp := t.TempDir()
	off := newRunner(t, Config{HandlerDir: handlerDir(t), RunCommand: jobdoc.RunCommandPolicy{Disabled: true}})
	res := off.Run(ctxT(t), commandStep("touch,"+filepath.Join(tmp, "off"), ""))
	assert.True(t, res.Refused)
	assert.Contains(t, res.Reason, "jobs.runCommand.enabled is false")
	assert.NoFileExists(t, filepath.Join(tmp, "off"))

	only := newRunner(t, Config{HandlerDir: handlerDir(t), RunCommand: jobdoc.RunCommandPolicy{AllowedExecutables: []string{"touch"}}})
	res = only.Run(ctxT(t), commandStep("rm,-f,"+filepath.Join(tmp, "x"), ""))
	assert.True(t, res.Refused)
	assert.Contains(t, res.Reason, `executable "rm" is not in jobs.runCommand.allowedExecutables`)
	res = only.Run(ctxT(t), commandStep("touch,"+filepath.Join(tmp, "ok"), ""))
	require.True(t, res.OK, res.Reason)
	assert.FileExists(t, filepath.Join(tmp, "ok"))

	_, err := New(Config{HandlerDir: "/x", RunCommand: jobdoc.RunCommandPolicy{AllowedExecutables: []string{"bin/sh"}}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "AllowedExecutables[0]")
}

func TestRunCommandAsUser(t *testing.T) {
	me, err := user.Current()
	require.NoError(t, err)
	tmp := t.TempDir()
	record := filepath.Join(tmp, "sudo-args")
	// A fake sudo that records its arguments and runs the command after
	// "-n -u USER --".
	sudo := writeScript(t, tmp, "sudo", `printf '%s\n' "$@" > "`+record+`"
shift 4
exec "$@"`, 0o755)
	r := newRunner(t, Config{HandlerDir: handlerDir(t), SudoPath: sudo})

	res := r.Run(ctxT(t), commandStep("echo,hi", "nobody"))
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, "hi\n", res.Stdout)
	data, err := os.ReadFile(record)
	require.NoError(t, err)
	assert.Equal(t, "-n\n-u\nnobody\n--\necho\nhi\n", string(data))
	assert.Equal(t, []string{sudo, "-n", "-u", "nobody", "--", "echo", "hi"}, res.Argv)

	// The agent's own user needs no sudo.
	require.NoError(t, os.Remove(record))
	res = r.Run(ctxT(t), commandStep("echo,me", me.Username))
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, []string{"echo", "me"}, res.Argv)
	assert.NoFileExists(t, record)

	res = r.Run(ctxT(t), commandStep("echo,hi", "no-such-user-xyz"))
	assert.True(t, res.Refused)
	assert.Contains(t, res.Reason, `runAsUser "no-such-user-xyz": no such user`)

	r = newRunner(t, Config{HandlerDir: handlerDir(t), SudoPath: filepath.Join(tmp, "missing-sudo")})
	res = r.Run(ctxT(t), commandStep("echo,hi", "nobody"))
	assert.True(t, res.Refused)
	assert.Contains(t, res.Reason, "requires sudo, which is not installed")
}

func TestNewValidatesConfig(t *testing.T) {
	_, err := New(Config{})
	assert.ErrorContains(t, err, "HandlerDir is required")
	_, err = New(Config{HandlerDir: "rel"})
	assert.ErrorContains(t, err, "absolute")
	_, err = New(Config{HandlerDir: "/x", AllowedPaths: []string{"y"}})
	assert.ErrorContains(t, err, "AllowedPaths[0]")
}

func TestTail(t *testing.T) {
	assert.Equal(t, "abc", TailChars("abc", 10))
	assert.Equal(t, "cd", TailChars("abcd", 2))
	// Characters, not bytes: "é" counts once.
	assert.Equal(t, "éb", TailChars("aéb", 2))
	assert.Equal(t, "\uFFFD", TailChars("\xff", 10))
	// Beyond 4*max bytes, a character cut in half is dropped, not split.
	assert.Equal(t, "éé", TailChars("aaaaaaaaéé", 2))
	assert.Equal(t, strings.Repeat("é", 3), TailChars(strings.Repeat("é", 10)[1:], 3))
	// Garbage is kept as replacement characters, never dropped whole.
	assert.Equal(t, "\uFFFD", TailChars(strings.Repeat("\x80", 100), 10))

	var tb tailBuffer
	for i := 0; i < 1000; i++ {
		_, _ = tb.Write([]byte("0123456789\n"))
	}
	assert.Equal(t, 1000, tb.Lines())
	assert.Len(t, tb.String(), OutputTailBytes)
	assert.True(t, strings.HasSuffix(tb.String(), "0123456789\n"))
	big := strings.Repeat("y", 5000) + "Z"
	n, err := tb.Write([]byte(big))
	require.NoError(t, err)
	assert.Equal(t, len(big), n)
	assert.True(t, strings.HasSuffix(tb.String(), "yZ"))
}

// AWS's sample echo.json: a runHandler without "path" whose handler is not
// in the handler directory runs the well-known executable from PATH, with
// runAsUser (empty) as its first argument as for every handler, exactly as
// the AWS IoT Device Client runs it (so echo prints " Hello IoT World!").
func TestHandlerFromPATH(t *testing.T) {
	dir := handlerDir(t)
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	r := newRunner(t, Config{HandlerDir: dir, Env: env})
	s := handlerStep("echo", "Hello IoT World!")
	s.IncludeStdOut = true
	res := r.Run(ctxT(t), s)
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, " Hello IoT World!\n", res.Stdout)
	assert.Equal(t, "/usr/bin/echo", res.Argv[0])
	got, err := r.Resolve(s.Action)
	require.NoError(t, err)
	assert.Equal(t, Resolution{Path: "/usr/bin/echo", Rule: RulePATH}, got)

	// Old schema, operation without path: the same rule.
	res = r.Run(ctxT(t), Step{IncludeStdOut: true, Action: jobdoc.Action{Name: "echo", Type: jobdoc.TypeRunHandler, Handler: "echo", Args: []string{`"Hello world!"`}, AllowStdErr: intp(0)}})
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, " \"Hello world!\"\n", res.Stdout)

	// A name in neither place fails, naming both.
	res = r.Run(ctxT(t), handlerStep("no-such-program-anywhere"))
	require.True(t, res.Refused)
	assert.Equal(t, `handler "no-such-program-anywhere" is neither in the handler directory `+dir+` nor an executable in the agent's PATH (/usr/local/bin:/usr/bin:/bin)`, res.Reason)

	// Only absolute PATH entries are searched: an empty or relative entry
	// (the working directory) never is.
	rel := newRunner(t, Config{HandlerDir: dir, Env: []string{"PATH=:.:bin"}})
	res = rel.Run(ctxT(t), handlerStep("echo"))
	require.True(t, res.Refused, res.Reason)
}

// The handler directory comes first; a handler there that fails its checks
// is refused, never replaced by the PATH program of the same name; path
// "default" names the handler directory only.
func TestHandlerDirBeforePATH(t *testing.T) {
	dir := handlerDir(t)
	env := []string{"PATH=/usr/bin:/bin"}
	r := newRunner(t, Config{HandlerDir: dir, Env: env})
	writeScript(t, dir, "echo", `echo "handler-dir echo"`, 0o700)
	s := handlerStep("echo", "x")
	s.IncludeStdOut = true
	res := r.Run(ctxT(t), s)
	require.True(t, res.OK, res.Reason)
	assert.Equal(t, "handler-dir echo\n", res.Stdout)
	got, err := r.Resolve(s.Action)
	require.NoError(t, err)
	assert.Equal(t, RuleHandlerDir, got.Rule)

	require.NoError(t, os.Chmod(filepath.Join(dir, "echo"), 0o755))
	res = r.Run(ctxT(t), s)
	require.True(t, res.Refused)
	assert.Contains(t, res.Reason, "has mode 0755, must be 0700")

	d := handlerStep("true")
	d.Action.Path = jobdoc.DefaultPath
	res = r.Run(ctxT(t), d)
	require.True(t, res.Refused)
	assert.Contains(t, res.Reason, filepath.Join(dir, "true")+" does not exist")
}

// Running a program from PATH is a command chosen by the job document:
// jobs.pathExecutables false refuses it, and so do jobs.runCommand.enabled
// false and an allowedExecutables list without its name. Handlers in the
// handler directory are not affected.
func TestHandlerFromPATHPolicy(t *testing.T) {
	dir := handlerDir(t)
	writeScript(t, dir, "ok.sh", "exit 0", 0o700)
	env := []string{"PATH=/usr/bin:/bin"}
	tests := []struct {
		policy jobdoc.RunCommandPolicy
		reason string
	}{
		{jobdoc.RunCommandPolicy{PathExecutablesDisabled: true}, `handler "echo" is not in the handler directory, and executables from PATH are disabled on this device (agent configuration jobs.pathExecutables is false)`},
		{jobdoc.RunCommandPolicy{Disabled: true}, `handler "echo" is not in the handler directory, and running it from PATH is a command from the job document, which this device refuses (agent configuration jobs.runCommand.enabled is false)`},
		{jobdoc.RunCommandPolicy{AllowedExecutables: []string{"/usr/bin/echo", "apt-get"}}, `handler "echo" is not in the handler directory, and executable "echo" is not in jobs.runCommand.allowedExecutables of this device (allowed: /usr/bin/echo, apt-get)`},
		{jobdoc.RunCommandPolicy{AllowedExecutables: []string{"echo"}}, ""},
	}
	for _, tc := range tests {
		r := newRunner(t, Config{HandlerDir: dir, Env: env, RunCommand: tc.policy})
		res := r.Run(ctxT(t), handlerStep("echo", "hi"))
		if tc.reason == "" {
			require.True(t, res.OK, res.Reason)
		} else {
			require.True(t, res.Refused, "%+v", tc.policy)
			assert.Equal(t, tc.reason, res.Reason)
		}
		res = r.Run(ctxT(t), handlerStep("ok.sh"))
		require.True(t, res.OK, res.Reason)
	}
}
