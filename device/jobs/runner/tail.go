package runner

import (
	"bytes"
	"strings"
	"sync"
	"unicode/utf8"
)

// tailBuffer keeps the last OutputTailBytes bytes written to it and counts
// lines. It is safe for the concurrent use os/exec makes of it.
type tailBuffer struct {
	mu       sync.Mutex
	buf      []byte
	newlines int
	last     byte
	total    int64
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if n == 0 {
		return 0, nil
	}
	t.newlines += bytes.Count(p, []byte{'\n'})
	t.last = p[len(p)-1]
	t.total += int64(len(p))
	if len(p) >= 2*OutputTailBytes {
		p = p[len(p)-2*OutputTailBytes:]
		t.buf = t.buf[:0]
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*OutputTailBytes {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-OutputTailBytes:]...)
	}
	return n, nil
}

// Lines is the number of lines written (a last line without a newline
// counts).
func (t *tailBuffer) Lines() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.newlines
	if t.total > 0 && t.last != '\n' {
		n++
	}
	return n
}

// String returns at most OutputTailBytes bytes of valid UTF-8 from the end
// of the output.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Tail(string(t.buf), OutputTailBytes)
}

// Tail returns the end of s as valid UTF-8 of at most max bytes, cut at a
// character boundary.
func Tail(s string, max int) string {
	if len(s) > 4*max {
		s = s[len(s)-4*max:]
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= max {
		return s
	}
	s = s[len(s)-max:]
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return s
}
