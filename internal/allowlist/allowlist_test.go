package allowlist

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

func pattern(t testing.TB) *regexp.Regexp {
	t.Helper()
	re, err := CompilePattern(DefaultSerialPattern)
	require.NoError(t, err)
	return re
}

func TestParseRepositoryAllowlist(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "..", "allowlist.txt"))
	require.NoError(t, err)
	defer f.Close()
	serials, err := Parse(f, pattern(t))
	require.NoError(t, err)
	require.NotEmpty(t, serials)
	for _, s := range serials {
		require.Regexp(t, DefaultSerialPattern, s)
	}
}

func TestParseFormat(t *testing.T) {
	in := strings.Join([]string{
		"# header comment",
		"",
		"10000000a1b2c3d4",
		"   ",
		"\t# indented comment",
		"  10000000a1b2c3d5  ",
		"10000000a1b2c3d6 # trailing comment",
		"10000000a1b2c3d7\t#tab before hash",
		"10000000a1b2c3d8\r",
		"0000000000000001", // no newline at the end
	}, "\n")
	serials, err := Parse(strings.NewReader(in), pattern(t))
	require.NoError(t, err)
	require.Equal(t, []string{
		"10000000a1b2c3d4", "10000000a1b2c3d5", "10000000a1b2c3d6",
		"10000000a1b2c3d7", "10000000a1b2c3d8", "0000000000000001",
	}, serials)
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "\n\n", "# only comments\n#\n"} {
		serials, err := Parse(strings.NewReader(in), pattern(t))
		require.NoError(t, err)
		require.Empty(t, serials)
	}
}

func TestParseBadLines(t *testing.T) {
	cases := []struct {
		name   string
		in     string
		line   int
		reason string
	}{
		{"upper case", "10000000a1b2c3d4\n10000000A1B2C3D5\n", 2, `"10000000A1B2C3D5" does not match`},
		{"too short", "# c\n\n1234\n", 3, `"1234" does not match`},
		{"too long", "10000000a1b2c3d4ff\n", 1, "does not match"},
		{"two serials on a line", "10000000a1b2c3d4 10000000a1b2c3d5\n", 1, `unexpected "10000000a1b2c3d5" after serial 10000000a1b2c3d4`},
		{"unknown annotation", "10000000a1b2c3d4\n10000000a1b2c3d5 readmt=T1\n", 2, `unexpected "readmt=T1"`},
		{"two annotations", "10000000a1b2c3d5 readmit=T1 readmit=T2\n", 1, "at most the annotation readmit=TOKEN"},
		{"empty token", "\n10000000a1b2c3d5 readmit=\n", 2, `readmit token ""`},
		{"token with bad characters", "10000000a1b2c3d5 readmit=T/1\n", 1, `readmit token "T/1"`},
		{"token too long", "10000000a1b2c3d5 readmit=" + strings.Repeat("t", 65) + "\n", 1, "1 to 64 characters"},
		{"duplicate with annotation", "10000000a1b2c3d5\n10000000a1b2c3d5 readmit=T1\n", 2, "already listed on line 1"},
		{"hash glued to serial", "10000000a1b2c3d4#x\n", 1, "does not match"},
		{"duplicate", "10000000a1b2c3d4\n10000000a1b2c3d5\n 10000000a1b2c3d4 # again\n", 3, "already listed on line 1"},
		{"huge line", "10000000a1b2c3d4\n" + strings.Repeat("a", MaxLineBytes+10) + "\n", 2, "longer than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			serials, err := Parse(strings.NewReader(c.in), pattern(t))
			require.Error(t, err)
			require.Nil(t, serials, "a bad file yields nothing")
			var le *LineError
			require.True(t, errors.As(err, &le), "error %v is not a *LineError", err)
			assert.Equal(t, c.line, le.Line)
			assert.Contains(t, le.Reason, c.reason)
			assert.Contains(t, err.Error(), fmt.Sprintf("line %d", c.line))
		})
	}
}

func TestParseLongBadLineIsTruncatedInError(t *testing.T) {
	_, err := Parse(strings.NewReader(strings.Repeat("z", 1000)), pattern(t))
	require.Error(t, err)
	require.Less(t, len(err.Error()), 300)
}

func TestParseNilPattern(t *testing.T) {
	_, err := Parse(strings.NewReader("x"), nil)
	require.Error(t, err)
}

func TestCompilePatternAnchors(t *testing.T) {
	for _, expr := range []string{"[0-9a-f]{4}", "^[0-9a-f]{4}$", "^[0-9a-f]{4}"} {
		re, err := CompilePattern(expr)
		require.NoError(t, err, expr)
		assert.True(t, re.MatchString("00ff"), expr)
		assert.False(t, re.MatchString("x00ff"), expr)
		assert.False(t, re.MatchString("00ffx"), expr)
	}
	// Alternation must not escape the anchors.
	re, err := CompilePattern("a|b")
	require.NoError(t, err)
	assert.False(t, re.MatchString("ab"))
	assert.True(t, re.MatchString("b"))

	_, err = CompilePattern("")
	require.Error(t, err)
	_, err = CompilePattern("[")
	require.ErrorContains(t, err, `"["`)
}

func TestParseEntriesAnnotations(t *testing.T) {
	in := "# reflashed boards\n10000000a1b2c3d4 readmit=INC-42 # ticket\n10000000a1b2c3d5\n\t10000000a1b2c3d6   readmit=2026-12-05:a_b.c\r\n"
	entries, err := ParseEntries(strings.NewReader(in), pattern(t))
	require.NoError(t, err)
	assert.Equal(t, []Entry{
		{Serial: "10000000a1b2c3d4", ReadmitToken: "INC-42", Line: 2},
		{Serial: "10000000a1b2c3d5", Line: 3},
		{Serial: "10000000a1b2c3d6", ReadmitToken: "2026-12-05:a_b.c", Line: 4},
	}, entries)
	serials, err := Parse(strings.NewReader(in), pattern(t))
	require.NoError(t, err)
	assert.Equal(t, []string{"10000000a1b2c3d4", "10000000a1b2c3d5", "10000000a1b2c3d6"}, serials)
}

func dev(serial string, state registry.State) registry.Device {
	return registry.Device{Serial: serial, State: state, CertificateID: "cert-" + serial}
}

func withToken(d registry.Device, token string) registry.Device {
	d.ReadmitToken = token
	return d
}

func entries(serials ...string) []Entry {
	out := make([]Entry, len(serials))
	for i, s := range serials {
		out[i] = Entry{Serial: s, Line: i + 1}
		if serial, token, ok := strings.Cut(s, " readmit="); ok {
			out[i] = Entry{Serial: serial, ReadmitToken: token, Line: i + 1}
		}
	}
	return out
}

// fleet returns n provisioned devices "p00".."p<n-1>" and their entries.
func fleet(n int) ([]registry.Device, []Entry) {
	var devs []registry.Device
	var serials []string
	for i := range n {
		s := fmt.Sprintf("p%02d", i)
		devs = append(devs, dev(s, registry.StateProvisioned))
		serials = append(serials, s)
	}
	return devs, entries(serials...)
}

func serialsOf(ds []registry.Device) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Serial)
	}
	return out
}

func TestPlanChanges(t *testing.T) {
	current := []registry.Device{
		dev("05", registry.StateProvisioned),                  // unlisted: revoke
		dev("01", registry.StateAllowed),                      // listed: keep
		dev("02", registry.StateProvisioned),                  // listed: keep
		dev("03", registry.StateRevoked),                      // listed again: re-add
		dev("04", registry.StateRevoked),                      // unlisted and revoked: nothing
		dev("06", registry.StateAllowed),                      // unlisted: revoke
		dev("09", registry.StateReadmitted),                   // unlisted: revoke
		dev("10", registry.StateRevoking),                     // unlisted, stuck: finish
		dev("11", registry.StateRevoking),                     // listed again, stuck: finish, then add
		withToken(dev("12", registry.StateProvisioned), "T1"), // token acted on already
		withToken(dev("13", registry.StateProvisioned), "T1"), // new token: re-admit
		dev("14", registry.StateProvisioned),                  // first token: re-admit
		withToken(dev("15", registry.StateReadmitted), "T1"),  // pending, same token: nothing
	}
	list := entries("07", "01", "03", "02", "08", "11", "12 readmit=T1", "13 readmit=T2", "14 readmit=T1", "15 readmit=T1", "16 readmit=T9")
	ch := Plan(current, list, Limits{})
	assert.Equal(t, []string{"07", "03", "08", "11", "16"}, ch.Add)
	assert.Equal(t, []Readmission{{Serial: "13", Token: "T2"}, {Serial: "14", Token: "T1"}, {Serial: "16", Token: "T9"}}, ch.Readmit)
	assert.Equal(t, []string{"05", "06", "09"}, serialsOf(ch.Remove))
	assert.Equal(t, dev("05", registry.StateProvisioned), ch.Remove[0], "records are passed on whole")
	assert.Equal(t, []string{"10", "11"}, serialsOf(ch.Resume))
	assert.Equal(t, 11, ch.Listed)
	assert.Equal(t, 9, ch.Admitted)
	assert.Equal(t, 5, ch.Limit)
	assert.False(t, ch.Refused)
	assert.False(t, ch.Confirmed)

	// Applying the changes leaves nothing to do.
	var next []registry.Device
	for _, e := range list {
		next = append(next, withToken(dev(e.Serial, registry.StateAllowed), e.ReadmitToken))
	}
	for _, s := range []string{"04", "05", "06", "09", "10"} {
		next = append(next, dev(s, registry.StateRevoked))
	}
	ch = Plan(next, list, Limits{})
	assert.Empty(t, ch.Add)
	assert.Empty(t, ch.Readmit)
	assert.Empty(t, ch.Remove)
	assert.Empty(t, ch.Resume)
}

// A serial revoked in an emergency stays out while it is listed; a stale
// token does not re-admit it, a new one does (through Readmit, not Add).
func TestPlanEmergencyRevocationHoldsOut(t *testing.T) {
	revokedAt := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	held := func(serial string, state registry.State, token string) registry.Device {
		d := withToken(dev(serial, state), token)
		d.RevokeEmergency, d.RevokeReason, d.RevokedBy, d.RevokedAt = true, "stolen", "alice", revokedAt
		return d
	}
	current := []registry.Device{
		held("01", registry.StateRevoked, ""),   // listed: held
		held("02", registry.StateRevoked, "T1"), // listed with the old token: held
		held("03", registry.StateRevoked, "T1"), // listed with a new token: re-admit
		held("04", registry.StateRevoking, ""),  // listed, stuck: finish, held
		held("05", registry.StateRevoked, ""),   // unlisted: nothing
	}
	ch := Plan(current, entries("01", "02 readmit=T1", "03 readmit=T2", "04"), Limits{})
	assert.Empty(t, ch.Add)
	assert.Equal(t, []string{"01", "02", "04"}, ch.Held)
	assert.Equal(t, []Readmission{{Serial: "03", Token: "T2", LiftsHold: true, RevokeReason: "stolen", RevokedBy: "alice", RevokedAt: revokedAt}}, ch.Readmit)
	assert.Equal(t, []string{"04"}, serialsOf(ch.Resume))
	assert.Empty(t, ch.Remove)

	// Without the hold, the same records listed again are added.
	for i := range current {
		current[i].RevokeEmergency = false
	}
	ch = Plan(current, entries("01", "02 readmit=T1", "03 readmit=T2", "04"), Limits{})
	assert.Equal(t, []string{"01", "02", "03", "04"}, ch.Add)
	assert.Empty(t, ch.Held)
}

func TestPlanLimit(t *testing.T) {
	devs50, list50 := fleet(50)
	devs200, list200 := fleet(200)
	cases := []struct {
		name      string
		current   []registry.Device
		list      []Entry
		lim       Limits
		remove    int
		limit     int
		refused   bool
		confirmed bool
		reason    []string
	}{
		{"nothing to do", devs50, list50, Limits{}, 0, 5, false, false, nil},
		{"empty file refused", devs50, nil, Limits{}, 50, 5, true, false, []string{"lists no serial", "all 50", "never revokes"}},
		{"empty file refused even when confirmed", devs50, nil, Limits{Confirm: 50}, 50, 5, true, false, []string{"lists no serial"}},
		{"empty file, empty registry", nil, nil, Limits{}, 0, 5, false, false, nil},
		{"truncated file refused", devs50, list50[:20], Limits{}, 30, 5, true, false,
			[]string{"revoke 30 of 50", "limit of 5", "MAX_REVOCATIONS_PER_SYNC", "no confirm-revocations metadata", "confirm-revocations=30", "allowlistConfirmRevocations: 30"}},
		{"default limit is 5 for a small fleet", devs50, list50[:45], Limits{}, 5, 5, false, false, nil},
		{"one over the default", devs50, list50[:44], Limits{}, 6, 5, true, false, []string{"revoke 6"}},
		{"default limit is 10% of a large fleet", devs200, list200[:180], Limits{}, 20, 20, false, false, nil},
		{"10% rounds up", append(devs200, dev("x", registry.StateProvisioned)), list200[:179], Limits{}, 22, 21, true, false, []string{"limit of 21"}},
		{"serials listed ahead of manufacturing do not raise the limit", append(append([]registry.Device{}, devs50[:10]...), allowedDevs(90)...), allowedEntries(90), Limits{}, 10, 5, true, false, []string{"revoke 10"}},
		{"configured limit", devs50, list50[:40], Limits{MaxRevocations: 10}, 10, 10, false, false, nil},
		{"configured limit exceeded", devs50, list50[:40], Limits{MaxRevocations: 9}, 10, 9, true, false, []string{"limit of 9"}},
		{"exact confirmation lifts the limit", devs50, list50[:20], Limits{Confirm: 30}, 30, 5, false, true, nil},
		{"wrong confirmation", devs50, list50[:20], Limits{Confirm: 29}, 30, 5, true, false, []string{"confirm-revocations=29, which is not the number", "confirm-revocations=30"}},
		{"confirmation under the limit is harmless", devs50, list50[:48], Limits{Confirm: 7}, 2, 5, false, false, nil},
		{"additions alone are never limited", devs50, append(list50, entries("a1", "a2", "a3", "a4", "a5", "a6", "a7")...), Limits{MaxRevocations: 1}, 0, 1, false, false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := Plan(c.current, c.list, c.lim)
			assert.Len(t, ch.Remove, c.remove)
			assert.Equal(t, c.limit, ch.Limit)
			assert.Equal(t, c.refused, ch.Refused, ch.Reason)
			assert.Equal(t, c.confirmed, ch.Confirmed)
			for _, r := range c.reason {
				assert.Contains(t, ch.Reason, r)
			}
			if !c.refused {
				assert.Empty(t, ch.Reason)
			}
		})
	}
}

func TestPlanResumeDoesNotCount(t *testing.T) {
	devs, list := fleet(10)
	for i := range 8 {
		devs = append(devs, dev(fmt.Sprintf("r%d", i), registry.StateRevoking))
	}
	ch := Plan(devs, list, Limits{})
	assert.False(t, ch.Refused)
	assert.Len(t, ch.Resume, 8)
	assert.Equal(t, 10, ch.Admitted)
}

func TestDefaultMaxRevocations(t *testing.T) {
	for admitted, want := range map[int]int{0: 5, 1: 5, 50: 5, 51: 6, 100: 10, 101: 11, 1000: 100} {
		assert.Equal(t, want, DefaultMaxRevocations(admitted), "admitted %d", admitted)
	}
}

// BenchmarkParsePlan100k parses a 100,000-serial allowlist and plans it
// against a registry of 100,000 records that overlaps by 90%.
func BenchmarkParsePlan100k(b *testing.B) {
	const n = 100_000
	var sb strings.Builder
	sb.WriteString("# generated\n")
	for i := range n {
		fmt.Fprintf(&sb, "%016x\n", i)
	}
	file := sb.String()
	current := make([]registry.Device, 0, n)
	for i := n / 10; i < n+n/10; i++ {
		current = append(current, registry.Device{Serial: fmt.Sprintf("%016x", i), State: registry.StateProvisioned})
	}
	re := pattern(b)
	b.SetBytes(int64(len(file)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		list, err := ParseEntries(strings.NewReader(file), re)
		if err != nil {
			b.Fatal(err)
		}
		ch := Plan(current, list, Limits{Confirm: n / 10})
		if len(ch.Add) != n/10 || len(ch.Remove) != n/10 {
			b.Fatalf("add %d remove %d", len(ch.Add), len(ch.Remove))
		}
	}
}

func TestParseReportsEveryBadLine(t *testing.T) {
	in := "10000000a1b2c3d4\nBAD1\n10000000a1b2c3d5 oops\n10000000a1b2c3d4\n10000000a1b2c3d6\n"
	_, err := ParseEntries(strings.NewReader(in), pattern(t))
	require.Error(t, err)
	for _, want := range []string{"line 2:", "line 3:", "line 4: serial 10000000a1b2c3d4 is already listed on line 1"} {
		assert.Contains(t, err.Error(), want)
	}
	assert.NotContains(t, err.Error(), "line 5")
	var le *LineError
	require.True(t, errors.As(err, &le))
	assert.Equal(t, 2, le.Line, "errors.As finds the first bad line")

	var many strings.Builder
	for range MaxLineErrors + 7 {
		many.WriteString("nope\n")
	}
	_, err = ParseEntries(strings.NewReader(many.String()), pattern(t))
	require.Error(t, err)
	assert.Contains(t, err.Error(), fmt.Sprintf("line %d:", MaxLineErrors))
	assert.NotContains(t, err.Error(), fmt.Sprintf("line %d:", MaxLineErrors+1))
	assert.Contains(t, err.Error(), "and 7 more bad line(s)")
}

// allowedDevs are n records in state allowed (listed, never provisioned)
// and allowedEntries their allowlist lines.
func allowedDevs(n int) []registry.Device {
	out := make([]registry.Device, n)
	for i := range out {
		out[i] = dev(fmt.Sprintf("allowed-%d", i), registry.StateAllowed)
	}
	return out
}

func allowedEntries(n int) []Entry {
	out := make([]Entry, n)
	for i := range out {
		out[i] = Entry{Serial: fmt.Sprintf("allowed-%d", i), Line: i + 1}
	}
	return out
}

// A git revert of allowlist.txt brings back an older readmit line: the
// serial used that token before, so it re-admits nothing, neither a
// provisioned device nor one held out by an emergency revocation.
func TestPlanOlderTokenNeverReplays(t *testing.T) {
	used := func(d registry.Device, tokens ...string) registry.Device {
		d.ReadmitTokens = tokens
		d.ReadmitToken = tokens[len(tokens)-1]
		return d
	}
	held := used(dev("02", registry.StateRevoked), "T1", "T2")
	held.RevokeEmergency, held.RevokeReason, held.RevokedBy = true, "stolen", "alice"
	current := []registry.Device{
		used(dev("01", registry.StateProvisioned), "T1", "T2"), // re-admitted with T1, then T2
		held, // re-admitted with T1, then T2, then revoked in an emergency
	}
	ch := Plan(current, entries("01 readmit=T1", "02 readmit=T1"), Limits{})
	assert.Empty(t, ch.Readmit, "the reverted line's token was used")
	assert.Empty(t, ch.Add)
	assert.Equal(t, []string{"02"}, ch.Held)

	ch = Plan(current, entries("01 readmit=T3", "02 readmit=T3"), Limits{})
	assert.Equal(t, []Readmission{{Serial: "01", Token: "T3"}, {Serial: "02", Token: "T3", LiftsHold: true, RevokeReason: "stolen", RevokedBy: "alice"}}, ch.Readmit)
	assert.Empty(t, ch.Held)
}
