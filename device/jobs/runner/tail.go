package runner

import (
	"bytes"
	"strings"
	"sync"
	"unicode/utf8"
)

// tailBuffer keeps the end of what is written to it (enough bytes for the
// last OutputTailBytes characters) and counts lines. It is safe for the concurrent use os/exec makes of it.
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
	// A character is at most 4 bytes of UTF-8: 4*OutputTailBytes bytes
	// always hold the last OutputTailBytes characters.
	const keep = 4 * OutputTailBytes
	if len(p) >= keep {
		p = p[len(p)-keep:]
		t.buf = t.buf[:0]
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*keep {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-keep:]...)
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

// String returns the last OutputTailBytes characters of the output as
// valid UTF-8 (an invalid byte becomes U+FFFD), line breaks and all.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return TailChars(string(t.buf), OutputTailBytes)
}

// TailChars returns the last max characters of s as valid UTF-8 (invalid
// bytes become U+FFFD first). AWS IoT Jobs counts a statusDetails value's
// length in characters.
func TailChars(s string, max int) string {
	if len(s) > 4*max {
		s = s[len(s)-4*max:]
		// Drop the rest of a character cut in half (at most 3 bytes).
		for i := 0; i < utf8.UTFMax-1 && len(s) > 0 && !utf8.RuneStart(s[0]); i++ {
			s = s[1:]
		}
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	n := utf8.RuneCountInString(s)
	for n > max {
		_, size := utf8.DecodeRuneInString(s)
		s = s[size:]
		n--
	}
	return s
}
