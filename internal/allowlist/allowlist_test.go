package allowlist

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

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
		{"two serials on a line", "10000000a1b2c3d4 10000000a1b2c3d5\n", 1, "does not match"},
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

func dev(serial string, state registry.State) registry.Device {
	return registry.Device{Serial: serial, State: state, CertificateID: "cert-" + serial}
}

func TestDiff(t *testing.T) {
	current := []registry.Device{
		dev("05", registry.StateProvisioned), // unlisted: remove
		dev("01", registry.StateAllowed),     // listed: keep
		dev("02", registry.StateProvisioned), // listed: keep
		dev("03", registry.StateRevoked),     // listed again: re-add
		dev("04", registry.StateRevoked),     // unlisted and revoked: nothing
		dev("06", registry.StateAllowed),     // unlisted: remove
	}
	desired := []string{"07", "01", "03", "02", "08"}
	ch := Diff(current, desired)
	assert.Equal(t, []string{"07", "03", "08"}, ch.Add)
	assert.Equal(t, []registry.Device{dev("05", registry.StateProvisioned), dev("06", registry.StateAllowed)}, ch.Remove)

	// Applying the changes leaves nothing to do.
	next := []registry.Device{}
	for _, s := range desired {
		next = append(next, dev(s, registry.StateAllowed))
	}
	for _, d := range current {
		if d.Serial == "04" || d.Serial == "05" || d.Serial == "06" {
			next = append(next, dev(d.Serial, registry.StateRevoked))
		}
	}
	ch = Diff(next, desired)
	assert.Empty(t, ch.Add)
	assert.Empty(t, ch.Remove)
}

func TestDiffEmpty(t *testing.T) {
	ch := Diff(nil, nil)
	assert.Empty(t, ch.Add)
	assert.Empty(t, ch.Remove)
	ch = Diff([]registry.Device{dev("a", registry.StateAllowed)}, nil)
	assert.Len(t, ch.Remove, 1)
	ch = Diff(nil, []string{"a"})
	assert.Equal(t, []string{"a"}, ch.Add)
}

// BenchmarkParseDiff100k parses a 100,000-serial allowlist and diffs it
// against a registry of 100,000 records that overlaps by 90%.
func BenchmarkParseDiff100k(b *testing.B) {
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
		serials, err := Parse(strings.NewReader(file), re)
		if err != nil {
			b.Fatal(err)
		}
		ch := Diff(current, serials)
		if len(ch.Add) != n/10 || len(ch.Remove) != n/10 {
			b.Fatalf("add %d remove %d", len(ch.Add), len(ch.Remove))
		}
	}
}
