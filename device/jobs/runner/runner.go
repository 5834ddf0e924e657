// Package runner executes the steps of a job document as real processes:
// runHandler steps run a handler from the handler directory (or an allowed
// path) after checking its ownership and mode, or, for a handler without
// "path" that is not in the handler directory, a well-known executable
// from the agent's PATH (as the AWS IoT Device Client does), runCommand steps run their
// argv directly (no shell), optionally through `sudo -n -u USER --`; a bare
// program name is looked up exactly as runHandler's PATH rule looks it up
// (absolute entries of the steps' PATH only). Each
// step runs in its own process group, so a timeout or cancellation kills the
// handler and everything it started. The tail of stderr (and of stdout when
// the document asks for it) is kept for the job's statusDetails.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
)

// OutputTailBytes is how many characters of the end of stdout/stderr are
// kept: the largest statusDetails value AWS IoT Jobs accepts (1024
// characters, the tail the AWS IoT Device Client reports).
const OutputTailBytes = 1024

// DefaultKillGrace is the time between SIGTERM and SIGKILL to a step's
// process group on timeout or cancellation.
const DefaultKillGrace = 5 * time.Second

// Config configures a Runner.
type Config struct {
	// HandlerDir holds the handlers of runHandler steps whose path is
	// omitted or "default". It must be mode 0700 and owned by the agent.
	HandlerDir string
	// AllowedPaths are the other directories a job document may name in
	// "path" (exact match after cleaning; subdirectories are not
	// included). The same ownership and mode rules apply to them.
	AllowedPaths []string
	// SudoPath is the sudo binary used for runCommand steps with
	// runAsUser. Empty: "sudo" looked up in PATH when a step needs it.
	SudoPath string
	// RunCommand is the device's rule for runCommand steps (agent
	// configuration jobs.runCommand). The engine already rejects documents
	// it refuses; the runner checks again right before running, so that
	// no path around the parser can start a refused program.
	RunCommand jobdoc.RunCommandPolicy
	// KillGrace is the delay between SIGTERM and SIGKILL (default 5s).
	KillGrace time.Duration
	// Env is the environment of steps; nil means the agent's environment.
	Env []string
	// Logger receives step logs; nil means slog.Default().
	Logger *slog.Logger
}

// Runner runs steps. It holds no mutable state; Run may be called
// concurrently.
type Runner struct {
	cfg Config
	uid int
	log *slog.Logger
}

// New validates cfg and returns a Runner.
func New(cfg Config) (*Runner, error) {
	if cfg.HandlerDir == "" {
		return nil, errors.New("runner config: HandlerDir is required")
	}
	if !filepath.IsAbs(cfg.HandlerDir) {
		return nil, fmt.Errorf("runner config: HandlerDir %q must be an absolute path", cfg.HandlerDir)
	}
	for i, x := range cfg.RunCommand.AllowedExecutables {
		if err := jobdoc.ValidateExecutable(x); err != nil {
			return nil, fmt.Errorf("runner config: RunCommand.AllowedExecutables[%d]: %w", i, err)
		}
	}
	for i, p := range cfg.AllowedPaths {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("runner config: AllowedPaths[%d] %q must be an absolute path", i, p)
		}
		cfg.AllowedPaths[i] = filepath.Clean(p)
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = DefaultKillGrace
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Runner{cfg: cfg, uid: os.Geteuid(), log: log}, nil
}

// Step is one action to run.
type Step struct {
	Action jobdoc.Action
	// IncludeStdOut keeps the tail of stdout in the result.
	IncludeStdOut bool
	// Timeout kills the step's process group when it elapses; 0 means none.
	Timeout time.Duration
}

// Result is the outcome of a step.
type Result struct {
	// OK: the step succeeded (exit status 0 and stderr within allowStdErr).
	OK bool
	// Refused: the step was not started (handler checks, path, user).
	Refused bool
	// TimedOut: the step's timeout elapsed and its process group was killed.
	TimedOut bool
	// Canceled: the context was canceled and the process group was killed.
	Canceled bool
	// ExitCode is the exit status, or -1 if the process did not exit
	// normally (signal, not started).
	ExitCode int
	// Reason explains the outcome in one line.
	Reason string
	// Stdout (only with IncludeStdOut) and Stderr are the last
	// OutputTailBytes characters of the raw outputs (line breaks kept),
	// valid UTF-8.
	Stdout, Stderr string
	// StderrLines counts the lines written to stderr.
	StderrLines int
	// Argv is what was executed (for logs; the handler path included).
	Argv []string
}

func refused(format string, args ...any) Result {
	return Result{Refused: true, ExitCode: -1, Reason: fmt.Sprintf(format, args...)}
}

// Run runs s and returns its result. It never panics on bad input: anything
// that prevents the step from starting is a Refused result with a reason.
func (r *Runner) Run(ctx context.Context, s Step) Result {
	var argv []string
	switch s.Action.Type {
	case jobdoc.TypeRunHandler:
		res, err := r.Resolve(s.Action)
		if err != nil {
			return refused("%v", err)
		}
		path := res.Path
		r.log.Info("job step handler resolved", "step", s.Action.Name, "rule", res.Rule, "path", path)
		// Like the AWS IoT Device Client: the handler runs as the agent's
		// user and receives runAsUser (possibly empty) as its first
		// argument, then the job's args.
		argv = append([]string{path, s.Action.RunAsUser}, s.Action.Args...)
	case jobdoc.TypeRunCommand:
		var err error
		argv, err = r.commandArgv(s.Action)
		if err != nil {
			return refused("%v", err)
		}
		if !strings.Contains(argv[0], "/") {
			// A bare program name runs what the steps' PATH holds, found
			// as runHandler's PATH rule finds it; the program still sees
			// the name as its argv[0], as after the AWS IoT Device
			// Client's execvp. Not found, the step fails (the program
			// could not start), as there.
			full, pathEnv, ok := r.lookPath(argv[0])
			if !ok {
				return Result{ExitCode: -1, Argv: argv, Reason: fmt.Sprintf("failed to start %s: no executable %q in the agent's PATH (%s)", argv[0], argv[0], pathEnv)}
			}
			return r.exec(ctx, s, full, argv)
		}
	default:
		return refused("step type %q cannot be run as a process", s.Action.Type)
	}
	return r.exec(ctx, s, argv[0], argv)
}

// Rules that resolve a runHandler step's program (Resolution.Rule).
const (
	// RuleHandlerDir: the handler is in the handler directory.
	RuleHandlerDir = "handler directory"
	// RuleAllowedPath: the handler is in a directory the job document
	// named in "path" and the agent's configuration allows.
	RuleAllowedPath = "allowed path"
	// RulePATH: the handler is not in the handler directory and runs as a
	// well-known executable from the agent's PATH (echo, apt-get), as the
	// AWS IoT Device Client does for a handler without "path".
	RulePATH = jobdoc.RulePATH
)

// Resolution is where a runHandler step's program was found and by which
// rule.
type Resolution struct {
	Path string
	Rule string
}

// ResolveHandler returns the path of a runHandler step's handler; see
// Resolve.
func (r *Runner) ResolveHandler(a jobdoc.Action) (string, error) {
	res, err := r.Resolve(a)
	return res.Path, err
}

// Resolve finds the program of a runHandler step. The name must be a plain
// file name. With "path" naming a directory, that directory must be an
// allowed path; with "path" "default", the handler directory. In both
// cases the directory and the handler must be owned by the agent's uid
// with mode 0700 (the handler a regular file, not a symlink). Without
// "path" (and for an old-schema operation without "path") the handler
// directory is tried first under the same rules; a name that is not there
// runs a well-known executable from the agent's PATH, as the AWS IoT
// Device Client does, if the runCommand rule allows it
// (RunCommandPolicy.CheckPathExecutable). A handler that is in the handler
// directory but fails its checks is refused, never replaced by the PATH
// program of the same name.
func (r *Runner) Resolve(a jobdoc.Action) (Resolution, error) {
	name := a.Handler
	if name == "" || strings.ContainsAny(name, `/\`) || strings.Contains(name, "..") || name == "." {
		return Resolution{}, fmt.Errorf("handler name %q refused: it must be a plain file name", name)
	}
	if a.Path != "" && a.Path != jobdoc.DefaultPath {
		clean := filepath.Clean(a.Path)
		if !slices.Contains(r.cfg.AllowedPaths, clean) {
			return Resolution{}, fmt.Errorf("path %q is not an allowed handler directory in the agent's configuration", a.Path)
		}
		full, err := r.checkHandler(clean, name)
		return Resolution{Path: full, Rule: RuleAllowedPath}, err
	}
	dir := r.cfg.HandlerDir
	if a.Path == "" {
		_, dirErr := os.Stat(dir)
		_, fileErr := os.Lstat(filepath.Join(dir, name))
		if errors.Is(dirErr, os.ErrNotExist) || (dirErr == nil && errors.Is(fileErr, os.ErrNotExist)) {
			return r.resolvePATH(name)
		}
	}
	full, err := r.checkHandler(dir, name)
	return Resolution{Path: full, Rule: RuleHandlerDir}, err
}

func (r *Runner) checkHandler(dir, name string) (string, error) {
	if err := r.checkOwnerOnly(dir, true); err != nil {
		return "", fmt.Errorf("handler directory refused: %w", err)
	}
	full := filepath.Join(dir, name)
	if err := r.checkOwnerOnly(full, false); err != nil {
		return "", fmt.Errorf("handler refused: %w", err)
	}
	return full, nil
}

// resolvePATH looks name up in the PATH of the steps' environment. Only
// absolute PATH entries are searched (an empty or relative entry would
// mean the working directory).
func (r *Runner) resolvePATH(name string) (Resolution, error) {
	if err := r.cfg.RunCommand.CheckPathExecutable(name); err != nil {
		return Resolution{}, err
	}
	full, pathEnv, ok := r.lookPath(name)
	if !ok {
		return Resolution{}, fmt.Errorf("handler %q is neither in the handler directory %s nor an executable in the agent's PATH (%s)", name, r.cfg.HandlerDir, pathEnv)
	}
	return Resolution{Path: full, Rule: RulePATH}, nil
}

// lookPath finds the executable name in the PATH of the steps'
// environment (Config.Env, else the agent's): the one lookup behind
// runHandler's PATH rule and runCommand's bare program names, so check-job,
// a handler and a command agree on what "echo" runs. Only absolute PATH
// entries are searched; pathEnv is the PATH searched.
func (r *Runner) lookPath(name string) (full, pathEnv string, found bool) {
	pathEnv = os.Getenv("PATH")
	if r.cfg.Env != nil {
		pathEnv = ""
		for _, kv := range r.cfg.Env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				pathEnv = v
			}
		}
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if !filepath.IsAbs(dir) {
			continue
		}
		full := filepath.Join(dir, name)
		fi, err := os.Stat(full)
		if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return full, pathEnv, true
		}
	}
	return "", pathEnv, false
}

func (r *Runner) checkOwnerOnly(p string, dir bool) error {
	var fi os.FileInfo
	var err error
	if dir {
		fi, err = os.Stat(p)
	} else {
		fi, err = os.Lstat(p)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s does not exist", p)
		}
		return fmt.Errorf("%s: %w", p, err)
	}
	switch {
	case dir && !fi.IsDir():
		return fmt.Errorf("%s is not a directory", p)
	case !dir && fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link; handlers must be regular files", p)
	case !dir && !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", p)
	}
	if perm := fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky); perm != 0o700 {
		return fmt.Errorf("%s has mode %04o, must be 0700 (owner only)", p, unixMode(fi.Mode()))
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: cannot read the owner", p)
	}
	if int(st.Uid) != r.uid {
		return fmt.Errorf("%s is owned by uid %d, must be owned by the agent's uid %d", p, st.Uid, r.uid)
	}
	return nil
}

func unixMode(m os.FileMode) uint32 {
	v := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		v |= 0o1000
	}
	return v
}

// commandArgv builds the argv of a runCommand step. With runAsUser naming
// another user than the agent's, the command runs through
// `sudo -n -u USER -- argv...`; if sudo is not installed or the user does
// not exist the step is refused (the Device Client would silently run it as
// the agent's user instead).
func (r *Runner) commandArgv(a jobdoc.Action) ([]string, error) {
	if len(a.Argv) == 0 || a.Argv[0] == "" {
		return nil, errors.New("runCommand step without a program")
	}
	if err := r.cfg.RunCommand.Check(a.Argv[0]); err != nil {
		return nil, err
	}
	if a.RunAsUser == "" {
		return a.Argv, nil
	}
	target, err := user.Lookup(a.RunAsUser)
	if err != nil {
		return nil, fmt.Errorf("runAsUser %q: no such user on this device", a.RunAsUser)
	}
	if target.Uid == fmt.Sprint(r.uid) {
		return a.Argv, nil
	}
	sudo := r.cfg.SudoPath
	if sudo == "" {
		sudo, err = exec.LookPath("sudo")
		if err != nil {
			return nil, fmt.Errorf("runAsUser %q requires sudo, which is not installed", a.RunAsUser)
		}
	} else if _, err := os.Stat(sudo); err != nil {
		return nil, fmt.Errorf("runAsUser %q requires sudo, which is not installed at %s", a.RunAsUser, sudo)
	}
	return append([]string{sudo, "-n", "-u", a.RunAsUser, "--"}, a.Argv...), nil
}

// exec runs the program at path with argv (argv[0] as the program sees
// its name).
func (r *Runner) exec(ctx context.Context, s Step, path string, argv []string) Result {
	stdout := &tailBuffer{}
	stderr := &tailBuffer{}
	cmd := exec.Command(path, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.Env = r.cfg.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Stray background processes keeping the output pipes open do not
	// hold the step forever once the handler itself has exited.
	cmd.WaitDelay = r.cfg.KillGrace
	res := Result{ExitCode: -1, Argv: argv}
	if err := cmd.Start(); err != nil {
		res.Reason = fmt.Sprintf("failed to start %s: %v", argv[0], err)
		return res
	}
	pgid := cmd.Process.Pid
	r.log.Info("job step started", "step", s.Action.Name, "pid", pgid, "argv0", argv[0], "path", path)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var timeout <-chan time.Time
	if s.Timeout > 0 {
		t := time.NewTimer(s.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	var waitErr error
	killed := false
	select {
	case waitErr = <-done:
	case <-timeout:
		res.TimedOut, killed = true, true
	case <-ctx.Done():
		res.Canceled, killed = true, true
	}
	if killed {
		waitErr = r.killGroup(pgid, done)
	}
	res.Stderr = stderr.String()
	res.StderrLines = stderr.Lines()
	if s.IncludeStdOut {
		res.Stdout = stdout.String()
	}
	state := cmd.ProcessState
	if state != nil {
		res.ExitCode = state.ExitCode()
	}
	switch {
	case res.TimedOut:
		res.Reason = fmt.Sprintf("timed out after %s; process group killed", s.Timeout)
	case res.Canceled:
		res.Reason = "canceled; process group killed"
	case state == nil:
		res.Reason = fmt.Sprintf("wait failed: %v", waitErr)
	case res.ExitCode == -1:
		if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Reason = fmt.Sprintf("killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
		} else {
			res.Reason = "did not exit normally: " + state.String()
		}
	case res.ExitCode != 0:
		res.Reason = fmt.Sprintf("exited with status %d", res.ExitCode)
	case s.Action.AllowStdErr != nil && res.StderrLines > *s.Action.AllowStdErr:
		res.Reason = fmt.Sprintf("exited with status 0 but wrote %d line(s) to stderr, more than allowStdErr %d", res.StderrLines, *s.Action.AllowStdErr)
	default:
		res.OK = true
		res.Reason = "exited with status 0"
		if errors.Is(waitErr, exec.ErrWaitDelay) {
			r.log.Warn("job step left processes holding its output open", "step", s.Action.Name)
		}
	}
	r.log.Info("job step finished", "step", s.Action.Name, "ok", res.OK, "reason", res.Reason)
	return res
}

// killGroup sends SIGTERM to the process group, SIGKILL after the grace
// period if the leader has not exited, and SIGKILL again after it exited to
// catch members that ignored SIGTERM.
func (r *Runner) killGroup(pgid int, done <-chan error) error {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	grace := time.NewTimer(r.cfg.KillGrace)
	defer grace.Stop()
	var err error
	select {
	case err = <-done:
	case <-grace.C:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-done
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	return err
}
