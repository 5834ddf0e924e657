package ota

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Flavor is the mender client command-line dialect.
type Flavor string

const (
	// FlavorAuto detects the flavor at run time.
	FlavorAuto Flavor = ""
	// FlavorMender4 is mender client 4: `mender-update install|commit|rollback`.
	FlavorMender4 Flavor = "mender4"
	// FlavorMender3 is mender client 2.x/3.x: `mender install|commit|rollback`.
	FlavorMender3 Flavor = "mender3"
	// FlavorLegacy is mender client 1.x: `mender -install URL`, `-commit`,
	// `-rollback`.
	FlavorLegacy Flavor = "legacy"
)

// Default mender binary locations.
const (
	DefaultMenderUpdatePath = "/usr/bin/mender-update"
	DefaultMenderPath       = "/usr/bin/mender"
)

// exitNoUpdateInProgress is what mender 3 and 4 return from commit and
// rollback when there is no update in progress.
const exitNoUpdateInProgress = 2

// ErrNoUpdateInProgress is returned by Commit and Rollback when mender says
// there is no update in progress (exit status 2).
var ErrNoUpdateInProgress = errors.New("mender: no update in progress")

// outputTail is how much of a command's output is kept for a failure
// reason (the statusDetails value limit).
const outputTail = 1024

// CommandError is a command that failed: it could not start, exited
// non-zero, or was stopped by its context.
type CommandError struct {
	Args     []string
	ExitCode int    // -1 if it did not exit normally
	Output   string // last outputTail bytes of stdout+stderr
	Err      error
}

func (e *CommandError) Error() string {
	name := filepath.Base(e.Args[0])
	msg := fmt.Sprintf("%s: %v", name, e.Err)
	if e.ExitCode >= 0 {
		msg = fmt.Sprintf("%s: exit status %d", name, e.ExitCode)
	}
	if out := summarize(e.Output); out != "" {
		msg += ": " + out
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

var (
	reMender4Log     = regexp.MustCompile(`^record_id=\S+ severity=(\w+) .*?msg="((?:[^"\\]|\\.)*)"`)
	reLeadingPercent = regexp.MustCompile(`^\s*\d{1,3}%`)
	reMender3Log     = regexp.MustCompile(`^(INFO|WARN|ERRO|FATA|PANI|DEBU)\[\d+\]\s*(.*?)(?:\s+module=\S+)?$`)
	// mender 3 when its stderr is not a terminal (logrus text format);
	// the progress dots before it have no newline.
	reLogrus = regexp.MustCompile(`^\.*\s*time="[^"]*"\s+level=(\w+)\s+msg=(?:"((?:[^"\\]|\\.)*)"|(\S+))`)
)

// summarize picks what explains a failure from a command's output: the
// last (up to 3) error lines, log decoration removed, or else the last
// line.
func summarize(out string) string {
	var errs []string
	last := ""
	for _, l := range strings.FieldsFunc(out, func(r rune) bool { return r == '\n' || r == '\r' }) {
		// mender 4 redraws "NN%" without a newline, so the next log line
		// starts right after it.
		l = strings.TrimSpace(reLeadingPercent.ReplaceAllString(l, ""))
		if l == "" || strings.Trim(l, ".") == "" {
			continue
		}
		isErr := false
		if m := reLogrus.FindStringSubmatch(l); m != nil {
			isErr = m[1] == "error" || m[1] == "fatal" || m[1] == "panic"
			l = m[3]
			if m[2] != "" {
				l = m[2]
				if uq, err := strconv.Unquote(`"` + m[2] + `"`); err == nil {
					l = uq
				}
			}
		} else if m := reMender4Log.FindStringSubmatch(l); m != nil {
			isErr = m[1] == "error" || m[1] == "fatal"
			if uq, err := strconv.Unquote(`"` + m[2] + `"`); err == nil {
				l = uq
			} else {
				l = m[2]
			}
		} else if m := reMender3Log.FindStringSubmatch(l); m != nil {
			isErr = m[1] == "ERRO" || m[1] == "FATA" || m[1] == "PANI"
			l = m[2]
		} else if strings.HasPrefix(l, "Could not fulfill request") {
			isErr = true
		}
		last = l
		// mender 3 logs an error twice, the second time without the
		// context prefix: keep the line with the context.
		if isErr && (len(errs) == 0 || !strings.HasSuffix(errs[len(errs)-1], l)) {
			errs = append(errs, l)
		}
	}
	if len(errs) == 0 {
		return last
	}
	if len(errs) > 3 {
		errs = errs[len(errs)-3:]
	}
	return strings.Join(errs, "; ")
}

// lastLine returns the last non-empty, trimmed line of s.
func lastLine(s string) string {
	lines := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" && strings.Trim(l, ".") != "" {
			return l
		}
	}
	return ""
}

// MenderConfig locates the mender client.
type MenderConfig struct {
	// Flavor forces a dialect; empty detects it.
	Flavor Flavor `json:"flavor,omitempty"`
	// UpdatePath is mender 4's mender-update (default /usr/bin/mender-update).
	UpdatePath string `json:"menderUpdatePath,omitempty"`
	// Path is mender 1-3's mender (default /usr/bin/mender).
	Path string `json:"menderPath,omitempty"`
}

// Mender drives one detected mender client.
type Mender struct {
	Flavor  Flavor
	Path    string
	Version string // as printed by --version, may be empty
}

var reVersion = regexp.MustCompile(`(?m)^\s*(?:mender(?:-update)?\s+(?:version\s+)?)?v?(\d+)\.(\d+)(?:\.(\d+))?`)

// DetectMender finds the mender client: mender-update (client 4) if it
// exists, else mender, whose --version (or -version) decides between the
// subcommand dialect (2.x and later) and the legacy flags (1.x).
func DetectMender(ctx context.Context, cfg MenderConfig) (*Mender, error) {
	updatePath := cfg.UpdatePath
	if updatePath == "" {
		updatePath = DefaultMenderUpdatePath
	}
	path := cfg.Path
	if path == "" {
		path = DefaultMenderPath
	}
	switch cfg.Flavor {
	case FlavorMender4:
		return &Mender{Flavor: FlavorMender4, Path: updatePath, Version: versionOf(ctx, updatePath)}, nil
	case FlavorMender3:
		return &Mender{Flavor: FlavorMender3, Path: path, Version: versionOf(ctx, path)}, nil
	case FlavorLegacy:
		return &Mender{Flavor: FlavorLegacy, Path: path, Version: versionOf(ctx, path)}, nil
	case FlavorAuto:
	default:
		return nil, fmt.Errorf("mender flavor %q: want %q, %q, %q or empty (detect)", cfg.Flavor, FlavorMender4, FlavorMender3, FlavorLegacy)
	}
	if isExecutable(updatePath) {
		return &Mender{Flavor: FlavorMender4, Path: updatePath, Version: versionOf(ctx, updatePath)}, nil
	}
	if !isExecutable(path) {
		return nil, fmt.Errorf("mender client not found: neither %s nor %s is an executable file", updatePath, path)
	}
	out, err := runQuiet(ctx, path, "--version")
	major, ok := parseMajor(out)
	if err != nil || !ok {
		// Go's flag package (mender 1.x) accepts -version; try it too.
		out2, err2 := runQuiet(ctx, path, "-version")
		if m, ok2 := parseMajor(out2); err2 == nil && ok2 {
			major, ok, out, err = m, true, out2, nil
		}
	}
	if !ok {
		return nil, fmt.Errorf("detect mender version of %s: cannot parse --version output %q (set the flavor explicitly)", path, lastLine(out))
	}
	m := &Mender{Path: path, Version: firstLine(out)}
	switch {
	case major >= 4:
		// A mender 4 installation that only ships a compatibility "mender".
		m.Flavor = FlavorMender4
	case major >= 2:
		m.Flavor = FlavorMender3
	default:
		m.Flavor = FlavorLegacy
	}
	return m, nil
}

func parseMajor(out string) (int, bool) {
	m := reVersion.FindStringSubmatch(out)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return s
}

func versionOf(ctx context.Context, path string) string {
	out, err := runQuiet(ctx, path, "--version")
	if err != nil {
		return ""
	}
	return firstLine(out)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// runQuiet runs a short command and returns its combined output.
func runQuiet(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	err := RunCommand(ctx, append([]string{name}, args...), nil, &out)
	return out.String(), err
}

// InstallArgs returns the command line that installs url.
func (m *Mender) InstallArgs(url string) []string {
	switch m.Flavor {
	case FlavorLegacy:
		return []string{m.Path, "-install", url}
	default:
		return []string{m.Path, "install", url}
	}
}

// CommitArgs returns the command line that commits the pending update.
func (m *Mender) CommitArgs() []string {
	if m.Flavor == FlavorLegacy {
		return []string{m.Path, "-commit"}
	}
	return []string{m.Path, "commit"}
}

// RollbackArgs returns the command line that rolls the pending update back.
func (m *Mender) RollbackArgs() []string {
	if m.Flavor == FlavorLegacy {
		return []string{m.Path, "-rollback"}
	}
	return []string{m.Path, "rollback"}
}

// ShowArtifactArgs returns the command line that prints the name of the
// running (committed) artifact.
func (m *Mender) ShowArtifactArgs() []string {
	if m.Flavor == FlavorLegacy {
		return []string{m.Path, "-show-artifact"}
	}
	return []string{m.Path, "show-artifact"}
}

// ShowArtifact returns the name of the committed artifact: the last line
// mender prints on its standard output (its log goes to standard error).
func (m *Mender) ShowArtifact(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	args := m.ShowArtifactArgs()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		ce := &CommandError{Args: args, ExitCode: -1, Output: clip(stdout.String()+stderr.String(), outputTail), Err: err}
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Exited() && ctx.Err() == nil {
			ce.ExitCode = ee.ExitCode()
		}
		return "", ce
	}
	name := lastLine(stdout.String())
	if name == "" {
		return "", &CommandError{Args: args, ExitCode: -1, Output: clip(stderr.String(), outputTail), Err: errors.New("printed no artifact name")}
	}
	return name, nil
}

// Install runs mender install for url; onLine receives every output line
// (stdout and stderr, split at "\n" and "\r") as it arrives.
func (m *Mender) Install(ctx context.Context, url string, onLine func(string)) error {
	return RunCommand(ctx, m.InstallArgs(url), onLine, nil)
}

// Commit commits the running update. ErrNoUpdateInProgress (wrapped in a
// *CommandError) means there was nothing to commit.
func (m *Mender) Commit(ctx context.Context) error {
	return noUpdate(RunCommand(ctx, m.CommitArgs(), nil, nil))
}

// Rollback rolls the pending update back. ErrNoUpdateInProgress (wrapped
// in a *CommandError) means there was nothing to roll back.
func (m *Mender) Rollback(ctx context.Context) error {
	return noUpdate(RunCommand(ctx, m.RollbackArgs(), nil, nil))
}

func noUpdate(err error) error {
	var ce *CommandError
	if errors.As(err, &ce) && ce.ExitCode == exitNoUpdateInProgress {
		ce.Err = ErrNoUpdateInProgress
	}
	return err
}

// RunCommand runs args[0] with args[1:] in its own process group, feeding
// each output line to onLine and copying the output to out (either may be
// nil). When ctx ends the whole process group is killed. A failure is a
// *CommandError carrying the exit code and the output's tail.
func RunCommand(ctx context.Context, args []string, onLine func(string), out io.Writer) error {
	if len(args) == 0 || args[0] == "" {
		return errors.New("run command: empty command")
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// Negative pid: the whole process group (mender's children too).
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return &CommandError{Args: args, ExitCode: -1, Err: err}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return &CommandError{Args: args, ExitCode: -1, Err: err}
	}
	if err := cmd.Start(); err != nil {
		return &CommandError{Args: args, ExitCode: -1, Err: err}
	}
	var (
		mu   sync.Mutex
		tail tailBuffer
		wg   sync.WaitGroup
	)
	read := func(r io.Reader) {
		defer wg.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
		sc.Split(ScanMenderOutput())
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			tail.add(line)
			if out != nil {
				_, _ = io.WriteString(out, line+"\n")
			}
			if onLine != nil {
				onLine(line)
			}
			mu.Unlock()
		}
		// Drain whatever is left (a line over 1 MiB) so the child never
		// blocks on a full pipe.
		_, _ = io.Copy(io.Discard, r)
	}
	wg.Add(2)
	go read(stdout)
	go read(stderr)
	wg.Wait()
	err = cmd.Wait()
	if err == nil {
		return nil
	}
	ce := &CommandError{Args: args, ExitCode: -1, Output: tail.String(), Err: err}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		ce.ExitCode = ee.ExitCode()
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		ce.Err = fmt.Errorf("%w (%v)", ctxErr, err)
		ce.ExitCode = -1
	}
	return ce
}

// tailBuffer keeps the last outputTail bytes of the lines added to it,
// skipping progress-only lines so the tail holds the messages that explain
// a failure.
type tailBuffer struct {
	buf []byte
}

func (t *tailBuffer) add(line string) {
	if strings.TrimSpace(strings.Trim(line, ".")) == "" || rePercent.MatchString(line) || reDots.MatchString(line) {
		return
	}
	t.buf = append(t.buf, line...)
	t.buf = append(t.buf, '\n')
	if len(t.buf) > 4*outputTail {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-outputTail:]...)
	}
}

func (t *tailBuffer) String() string {
	return clip(string(t.buf), outputTail)
}

// clip returns the last n bytes of s, cut at a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	for i := 0; i < len(s) && i < 4; i++ {
		if s[i]&0xC0 != 0x80 {
			return s[i:]
		}
	}
	return s
}
