package qemu

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Line is one line of the guest's serial console, as it arrived: escape
// sequences (colours, cursor moves) and carriage returns removed.
type Line struct {
	// N is the line's index in the console (0-based, across every run of
	// the machine).
	N    int
	At   time.Time
	Text string
}

// Console collects the serial console of every run of a machine: each byte
// goes to the log file as it arrives, and complete lines are kept in
// memory to be matched.
type Console struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever a line is added
	lines   []Line
	partial []byte
	log     *os.File
}

func newConsole(path string) (*Console, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("qemu: console log: %w", err)
	}
	return &Console{changed: make(chan struct{}), log: f}, nil
}

// csi matches the escape sequences a Linux console and systemd print
// (ECMA-48 CSI sequences, and the two-byte ESC sequences).
var csi = regexp.MustCompile(`\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])`)

// write takes a chunk of console output.
func (c *Console) write(p []byte) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = c.log.Write(p)
	added := false
	for _, b := range p {
		if b != '\n' {
			c.partial = append(c.partial, b)
			continue
		}
		c.addLocked(now)
		added = true
	}
	if added {
		close(c.changed)
		c.changed = make(chan struct{})
	}
}

func (c *Console) addLocked(at time.Time) {
	text := csi.ReplaceAllString(string(c.partial), "")
	text = strings.ReplaceAll(text, "\r", "")
	c.lines = append(c.lines, Line{N: len(c.lines), At: at, Text: text})
	c.partial = c.partial[:0]
}

// Mark appends a line written by the harness (not by the guest), e.g.
// "qemu: started"; it is matched like any other line.
func (c *Console) Mark(text string) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) > 0 {
		_, _ = c.log.Write([]byte("\n"))
		c.addLocked(now)
	}
	_, _ = c.log.Write([]byte(text + "\n"))
	c.partial = append(c.partial, text...)
	c.addLocked(now)
	close(c.changed)
	c.changed = make(chan struct{})
}

// flush ends a pending partial line (the guest stopped mid-line).
func (c *Console) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) == 0 {
		return
	}
	_, _ = c.log.Write([]byte("\n"))
	c.addLocked(time.Now())
	close(c.changed)
	c.changed = make(chan struct{})
}

// Len is the number of complete lines so far: a cursor at Len sees only
// lines that arrive later.
func (c *Console) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// Lines returns the lines from index from on.
func (c *Console) Lines(from int) []Line {
	c.mu.Lock()
	defer c.mu.Unlock()
	if from < 0 {
		from = 0
	}
	if from >= len(c.lines) {
		return nil
	}
	return append([]Line(nil), c.lines[from:]...)
}

// Tail returns the last n lines as text, for error messages.
func (c *Console) Tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	from := max(len(c.lines)-n, 0)
	var b strings.Builder
	for _, l := range c.lines[from:] {
		b.WriteString(l.Text)
		b.WriteByte('\n')
	}
	if len(c.partial) > 0 {
		b.WriteString(csi.ReplaceAllString(string(c.partial), ""))
		b.WriteString(" <partial line>\n")
	}
	return b.String()
}

// Cursor returns a cursor that matches lines arriving from now on.
func (c *Console) Cursor() *Cursor { return &Cursor{c: c, next: c.Len()} }

// CursorAt returns a cursor that matches lines from index n on.
func (c *Console) CursorAt(n int) *Cursor { return &Cursor{c: c, next: n} }

func (c *Console) close() error {
	c.flush()
	return c.log.Close()
}

// Cursor reads the console line by line: each Expect matches lines after
// the last one it consumed.
type Cursor struct {
	c    *Console
	next int
}

// Pos is the index of the next line the cursor will look at.
func (k *Cursor) Pos() int { return k.next }

// Expect waits until a line after the cursor matches re, moves the cursor
// past it and returns it. It fails when ctx ends (the error carries the
// console's last lines) or, with a non-nil stop, when stop is closed
// first (the machine exited).
func (k *Cursor) Expect(ctx context.Context, re *regexp.Regexp, stop <-chan struct{}) (Line, error) {
	l, _, err := k.ExpectAny(ctx, []*regexp.Regexp{re}, stop)
	return l, err
}

// ExpectAny is Expect for the first line matching any of res; it also
// returns which one matched.
func (k *Cursor) ExpectAny(ctx context.Context, res []*regexp.Regexp, stop <-chan struct{}) (Line, int, error) {
	for {
		k.c.mu.Lock()
		lines := k.c.lines
		changed := k.c.changed
		k.c.mu.Unlock()
		for ; k.next < len(lines); k.next++ {
			for i, re := range res {
				if re.MatchString(lines[k.next].Text) {
					l := lines[k.next]
					k.next++
					return l, i, nil
				}
			}
		}
		select {
		case <-changed:
		case <-stop:
			// Lines that arrived with the exit are still matched.
			if k.next < k.c.Len() {
				continue
			}
			return Line{}, -1, fmt.Errorf("console: the machine stopped before a line matched %s; last lines:\n%s", describe(res), k.c.Tail(30))
		case <-ctx.Done():
			return Line{}, -1, fmt.Errorf("console: no line matched %s: %w; last lines:\n%s", describe(res), ctx.Err(), k.c.Tail(30))
		}
	}
}

func describe(res []*regexp.Regexp) string {
	s := make([]string, len(res))
	for i, re := range res {
		s[i] = "/" + re.String() + "/"
	}
	return strings.Join(s, " or ")
}

// pump copies r (QEMU's stdout) into the console until r ends.
func (c *Console) pump(r io.Reader) {
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			c.write(buf[:n])
		}
		if err != nil {
			c.flush()
			return
		}
	}
}
