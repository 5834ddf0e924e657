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
//   - leading/trailing whitespace and a CRLF line end are trimmed;
//   - a serial may carry one annotation, "SERIAL readmit=TOKEN" (TOKEN: 1
//     to 64 characters of [A-Za-z0-9._:-], e.g. a ticket id or a date): it
//     re-admits a provisioned serial (or lifts an emergency hold) once per
//     TOKEN never used for that serial before, so that a re-flashed or
//     replaced board can provision again (see Plan); an old line brought
//     back (a git revert) re-admits nothing;
//   - anything else on a line is an error naming the line.
//
// A serial listed twice is an error: deleting one copy to revoke a device
// would otherwise silently keep it admitted.
//
// Plan turns the parsed file and the registry's records into the changes a
// sync makes, and refuses plans that revoke more devices than a limit
// (an empty or truncated file must not revoke the fleet).
package allowlist

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

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

// Entry is one serial of the file.
type Entry struct {
	Serial string
	// ReadmitToken is the readmit=TOKEN annotation ("" if none).
	ReadmitToken string
	// Line is the entry's line number (from 1).
	Line int
}

// ReadmitPrefix starts the only annotation a serial may carry.
const ReadmitPrefix = "readmit="

// Parse reads the allowlist from r and returns its serials in file order.
// pattern must match a serial in full (see CompilePattern). Bad lines fail
// the parse (see ParseEntries); nothing is returned then.
func Parse(r io.Reader, pattern *regexp.Regexp) ([]string, error) {
	entries, err := ParseEntries(r, pattern)
	if err != nil {
		return nil, err
	}
	serials := make([]string, len(entries))
	for i, e := range entries {
		serials[i] = e.Serial
	}
	return serials, nil
}

// ParseEntries is Parse that also returns each serial's annotation and
// line. Every bad line is reported (up to MaxLineErrors of them), each as a
// *LineError joined into the returned error (errors.As finds the first), so
// an operator fixes a file in one pass; nothing is returned then.
func ParseEntries(r io.Reader, pattern *regexp.Regexp) ([]Entry, error) {
	if pattern == nil {
		return nil, errors.New("allowlist: nil serial pattern")
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1024), MaxLineBytes)
	var (
		entries []Entry
		bad     []error
		more    int
	)
	fail := func(le *LineError) {
		if len(bad) < MaxLineErrors {
			bad = append(bad, le)
		} else {
			more++
		}
	}
	seen := map[string]int{} // serial → line
	line := 0
	for sc.Scan() {
		line++
		e, le := parseLine(sc.Text(), line, pattern)
		switch {
		case le != nil:
			fail(le)
		case e.Serial == "":
		case seen[e.Serial] != 0:
			fail(&LineError{Line: line, Reason: fmt.Sprintf("serial %s is already listed on line %d", e.Serial, seen[e.Serial])})
		default:
			seen[e.Serial] = line
			entries = append(entries, e)
		}
	}
	if err := sc.Err(); err != nil {
		if !errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("allowlist: read after line %d: %w", line, err)
		}
		fail(&LineError{Line: line + 1, Reason: fmt.Sprintf("line longer than %d bytes (the file was not read further)", MaxLineBytes)})
	}
	if len(bad) > 0 {
		if more > 0 {
			bad = append(bad, fmt.Errorf("allowlist: and %d more bad line(s)", more))
		}
		return nil, errors.Join(bad...)
	}
	return entries, nil
}

// MaxLineErrors bounds how many bad lines one parse reports.
const MaxLineErrors = 20

// parseLine reads one line: an entry, an empty Entry for a blank or comment
// line, or the line's error.
func parseLine(raw string, line int, pattern *regexp.Regexp) (Entry, *LineError) {
	text := strings.TrimSpace(raw)
	if i := commentStart(text); i >= 0 {
		text = strings.TrimSpace(text[:i])
	}
	if text == "" {
		return Entry{}, nil
	}
	// Most lines are a bare serial: no allocation for those.
	serial, rest := text, ""
	if i := strings.IndexAny(text, " \t"); i >= 0 {
		serial, rest = text[:i], strings.TrimSpace(text[i+1:])
	}
	if !pattern.MatchString(serial) {
		return Entry{}, &LineError{Line: line, Reason: fmt.Sprintf("%q does not match the serial pattern %s", truncate(serial, 80), pattern)}
	}
	e := Entry{Serial: serial, Line: line}
	if rest != "" {
		token, ok := strings.CutPrefix(rest, ReadmitPrefix)
		switch {
		case !ok || strings.ContainsAny(rest, " \t"):
			return Entry{}, &LineError{Line: line, Reason: fmt.Sprintf("unexpected %q after serial %s: a line holds one serial and at most the annotation %sTOKEN",
				truncate(strings.Join(strings.Fields(rest), " "), 80), serial, ReadmitPrefix)}
		case !registry.ValidReadmitToken(token):
			return Entry{}, &LineError{Line: line, Reason: fmt.Sprintf("readmit token %q of serial %s must be 1 to 64 characters of [A-Za-z0-9._:-]", truncate(token, 80), serial)}
		}
		e.ReadmitToken = token
	}
	return e, nil
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

// Names of the revocation limit's settings, as the refusal message gives
// them to the operator.
const (
	// ConfirmMetadata is the allowlist object's S3 user metadata key
	// (x-amz-meta-confirm-revocations) that lifts the limit for that
	// object when it equals the number of revocations.
	ConfirmMetadata = "confirm-revocations"
	// ConfirmStackConfig is the stack configuration key that sets it.
	ConfirmStackConfig = "allowlistConfirmRevocations"
	// LimitEnv and LimitStackConfig set the limit itself.
	LimitEnv         = "MAX_REVOCATIONS_PER_SYNC"
	LimitStackConfig = "maxRevocationsPerSync"
)

// DefaultMaxRevocations is the revocation limit of a fleet of devices
// (provisioned or readmitted) when none is configured:
// max(5, ceil(10% of the fleet)).
func DefaultMaxRevocations(fleet int) int {
	return max(5, (fleet+9)/10)
}

// Limits are the revocation limit of one sync.
type Limits struct {
	// MaxRevocations is the most devices one sync may revoke; 0 or less:
	// DefaultMaxRevocations of the fleet (provisioned or readmitted).
	MaxRevocations int
	// Confirm is the confirm-revocations value of the allowlist object (0:
	// none). A plan over the limit goes ahead only when it revokes exactly
	// Confirm devices.
	Confirm int
}

// Readmission is a readmit=TOKEN annotation whose token the serial never
// used (registry.Device.ReadmitTokenUsed).
type Readmission struct {
	Serial string
	Token  string
	// LiftsHold is set when the serial is held out by an emergency
	// revocation (registry.Device.HeldOut), which this re-admission lifts;
	// the revocation's record is copied here so that a review shows it.
	LiftsHold    bool
	RevokeReason string
	RevokedBy    string
	RevokedAt    time.Time
}

// Changes is what it takes to make the registry match the allowlist.
type Changes struct {
	// Add are listed serials with no record, a revoked or a revoking one,
	// in file order: they become allowed (a revoking one once its
	// revocation is finished, see Resume). A record held out by an
	// emergency revocation (registry.Device.HeldOut) is not added: only a
	// readmit=TOKEN annotation with a token the serial never used admits
	// it again (Readmit).
	Add []string
	// Held are listed serials held out by an emergency revocation and not
	// re-admitted by a new token, in file order: listing them changes
	// nothing.
	Held []string
	// Readmit are annotated serials whose token the serial never used
	// (registry.Device.ReadmitTokenUsed), in file order; the sync applies
	// them after Add. One with LiftsHold lifts an emergency hold.
	Readmit []Readmission
	// Remove are records in state allowed, provisioned or readmitted whose
	// serial is no longer listed, sorted by serial: they are revoked.
	// Their current records are included because revocation needs the
	// certificate id and thing name.
	Remove []registry.Device
	// Resume are records in state revoking (a sync stopped half-way),
	// listed or not, sorted by serial: their revocation is finished
	// first. They were counted when that revocation was planned and do
	// not count against the limit.
	Resume []registry.Device

	// Listed is the number of serials in the file, Admitted the number of
	// records in state allowed, provisioned or readmitted, Fleet those of
	// them that hold an identity (provisioned or readmitted): the default
	// limit is a share of the Fleet, so serials listed ahead of
	// manufacturing (allowed, never provisioned) cannot raise it.
	Listed, Admitted, Fleet int
	// Limit is the revocation limit in force; Confirmed says the plan is
	// over it and the confirmation lifted it.
	Limit     int
	Confirmed bool
	// Refused is set when the plan must not be applied at all; Reason
	// says why and how to override (when that is possible).
	Refused bool
	Reason  string
}

// Plan compares the registry's records with the allowlist's entries in
// O(n) and returns the changes, refused when they would revoke:
//
//   - any device while the file lists no serial at all (an empty or
//     blanked file never revokes, whatever the confirmation), or
//   - more devices than the limit, unless lim.Confirm equals the exact
//     number of revocations.
//
// Admissions and re-admissions alone are never limited. Plan is pure: it
// changes nothing.
func Plan(current []registry.Device, entries []Entry, lim Limits) Changes {
	listed := make(map[string]struct{}, len(entries))
	for _, e := range entries {
		listed[e.Serial] = struct{}{}
	}
	// Pointers into current: a map of whole records would allocate one
	// per record (the value is too large to keep inline).
	records := make(map[string]*registry.Device, len(current))
	ch := Changes{Listed: len(entries)}
	for i := range current {
		d := current[i]
		records[d.Serial] = &current[i]
		_, ok := listed[d.Serial]
		switch {
		case d.State == registry.StateRevoking:
			ch.Resume = append(ch.Resume, d)
		case d.State.Admitted():
			ch.Admitted++
			if d.State != registry.StateAllowed {
				ch.Fleet++
			}
			if !ok {
				ch.Remove = append(ch.Remove, d)
			}
		}
	}
	for _, e := range entries {
		d, ok := records[e.Serial]
		// A token is acted on once per serial, ever: an old readmit line
		// brought back (a git revert) re-admits nothing.
		readmit := e.ReadmitToken != "" && (!ok || !d.ReadmitTokenUsed(e.ReadmitToken))
		held := ok && d.HeldOut()
		switch {
		case held:
			if !readmit {
				ch.Held = append(ch.Held, e.Serial)
			}
		case !ok || !d.State.Admitted():
			ch.Add = append(ch.Add, e.Serial)
		}
		if readmit {
			r := Readmission{Serial: e.Serial, Token: e.ReadmitToken}
			if held {
				r.LiftsHold, r.RevokeReason, r.RevokedBy, r.RevokedAt = true, d.RevokeReason, d.RevokedBy, d.RevokedAt
			}
			ch.Readmit = append(ch.Readmit, r)
		}
	}
	bySerial := func(a, b registry.Device) int { return strings.Compare(a.Serial, b.Serial) }
	slices.SortFunc(ch.Remove, bySerial)
	slices.SortFunc(ch.Resume, bySerial)

	ch.Limit = lim.MaxRevocations
	if ch.Limit <= 0 {
		ch.Limit = DefaultMaxRevocations(ch.Fleet)
	}
	n := len(ch.Remove)
	switch {
	case n == 0:
	case ch.Listed == 0:
		ch.Refused = true
		ch.Reason = fmt.Sprintf("the allowlist lists no serial, which would revoke all %d admitted device(s); an empty allowlist never revokes (revocation is permanent), whatever %s says: restore the file", n, ConfirmMetadata)
	case n <= ch.Limit:
	case lim.Confirm == n:
		ch.Confirmed = true
	default:
		got := "no " + ConfirmMetadata + " metadata"
		if lim.Confirm > 0 {
			got = fmt.Sprintf("%s=%d, which is not the number of revocations", ConfirmMetadata, lim.Confirm)
		}
		ch.Refused = true
		ch.Reason = fmt.Sprintf("the allowlist would revoke %d of %d admitted device(s), more than the limit of %d per sync (%s / stack config %s), and the object has %s; "+
			"if the removals are intended (revocation is permanent), deploy the same allowlist with object metadata %s=%d (stack config %s: %d)",
			n, ch.Admitted, ch.Limit, LimitEnv, LimitStackConfig, got, ConfirmMetadata, n, ConfirmStackConfig, n)
	}
	return ch
}
