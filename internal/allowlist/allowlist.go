// Package allowlist reads allowlist.txt, the list of device serials that may
// provision, and compares it with the device registry.
//
// File format, one entry per line:
//
//   - a serial, which must match the serial pattern in full;
//   - blank lines (only spaces/tabs) are ignored;
//   - a line whose first non-blank character is '#' is a comment;
//   - a serial may be followed by a trailing comment that starts with
//     whitespace and '#' ("10000000a1b2c3d4  # lab bench 3"); a '#' without
//     whitespace before it is part of the serial and fails the pattern;
//   - leading/trailing whitespace and a CRLF line end are trimmed.
//
// A serial listed twice is an error: deleting one copy to revoke a device
// would otherwise silently keep it admitted.
package allowlist

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// DefaultSerialPattern is the serial pattern of the stack configuration's
// default: Raspberry Pi serials, 16 lower-case hex digits.
const DefaultSerialPattern = `^[0-9a-f]{16}$`

// MaxLineBytes bounds one line of the file.
const MaxLineBytes = 4096

// CompilePattern compiles a serial pattern so that it must match a whole
// serial, whether or not expr carries its own ^ and $ anchors.
func CompilePattern(expr string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, errors.New("serial pattern: empty")
	}
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fmt.Errorf("serial pattern %q: %w", expr, err)
	}
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return nil, fmt.Errorf("serial pattern %q: %w", expr, err)
	}
	return re, nil
}

// LineError is a bad line of the file. Line counts from 1.
type LineError struct {
	Line   int
	Reason string
}

func (e *LineError) Error() string {
	return fmt.Sprintf("allowlist line %d: %s", e.Line, e.Reason)
}

// Parse reads the allowlist from r and returns its serials in file order.
// pattern must match a serial in full (see CompilePattern). The first bad
// line fails the parse with a *LineError; nothing is returned then.
func Parse(r io.Reader, pattern *regexp.Regexp) ([]string, error) {
	if pattern == nil {
		return nil, errors.New("allowlist: nil serial pattern")
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1024), MaxLineBytes)
	var serials []string
	seen := map[string]int{} // serial → line
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if i := commentStart(text); i >= 0 {
			text = strings.TrimSpace(text[:i])
		}
		if text == "" {
			continue
		}
		if !pattern.MatchString(text) {
			return nil, &LineError{Line: line, Reason: fmt.Sprintf("%q does not match the serial pattern %s", truncate(text, 80), pattern)}
		}
		if first, dup := seen[text]; dup {
			return nil, &LineError{Line: line, Reason: fmt.Sprintf("serial %s is already listed on line %d", text, first)}
		}
		seen[text] = line
		serials = append(serials, text)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, &LineError{Line: line + 1, Reason: fmt.Sprintf("line longer than %d bytes", MaxLineBytes)}
		}
		return nil, fmt.Errorf("allowlist: read after line %d: %w", line, err)
	}
	return serials, nil
}

// commentStart returns where the comment of a trimmed line starts: 0 for a
// comment line, the index of a '#' preceded by a space or tab, or -1.
func commentStart(s string) int {
	if strings.HasPrefix(s, "#") {
		return 0
	}
	for i := 1; i < len(s); i++ {
		if s[i] == '#' && (s[i-1] == ' ' || s[i-1] == '\t') {
			return i
		}
	}
	return -1
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Changes is what it takes to make the registry match the allowlist.
type Changes struct {
	// Add are listed serials with no record or a revoked one, in file
	// order: they become allowed.
	Add []string
	// Remove are records in state allowed or provisioned whose serial is
	// no longer listed, sorted by serial: they are revoked. Their current
	// records are included because revocation needs the certificate id and
	// thing name.
	Remove []registry.Device
}

// Diff compares the registry's records with the desired serials in O(n).
// Records already revoked and still unlisted need nothing.
func Diff(current []registry.Device, desired []string) Changes {
	want := make(map[string]struct{}, len(desired))
	for _, s := range desired {
		want[s] = struct{}{}
	}
	admitted := make(map[string]struct{}, len(current))
	var ch Changes
	for _, d := range current {
		if !d.State.Admitted() {
			continue
		}
		admitted[d.Serial] = struct{}{}
		if _, ok := want[d.Serial]; !ok {
			ch.Remove = append(ch.Remove, d)
		}
	}
	for _, s := range desired {
		if _, ok := admitted[s]; !ok {
			ch.Add = append(ch.Add, s)
		}
	}
	slices.SortFunc(ch.Remove, func(a, b registry.Device) int { return strings.Compare(a.Serial, b.Serial) })
	return ch
}
