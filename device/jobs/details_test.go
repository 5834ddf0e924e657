package jobs

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	simjobs "github.com/iot-fleet/iot-fleet/sim/jobs"
)

// Output tails are reported as the AWS IoT Device Client reports them:
// the last 1024 characters of the raw output, line feeds and tabs kept,
// every other control or invalid character a space. Whatever a step
// prints, the values are ones the local IoT Core (AWS's documented
// limits) accepts, or the update would be rejected forever.
func TestClampDetailsKeepsOutputAsTheDeviceClientReportsIt(t *testing.T) {
	long := strings.Repeat("é line\n", 400)
	in := map[string]string{
		DetailReason: "exited with status 1",
		"stderr":     "first\r\nsecond\tcol\x00\x1b[31mred\u200b\xff\u0378\n",
		"stdout":     long,
		"blank":      "\n \n",
		"empty":      "",
	}
	out := clampDetails(in)
	require.NotContains(t, out, "empty", "an empty value is left out (AWS requires at least one character)")
	require.Equal(t, "\n \n", out["blank"], "white space is output too")
	require.Equal(t, "first \nsecond\tcol  [31mred \uFFFD \n", out["stderr"])
	require.Equal(t, long[len(long)-utf8RuneBytes(long, 1024):], out["stdout"], "the last 1024 characters, line breaks kept")
	require.Equal(t, 1024, utf8.RuneCountInString(out["stdout"]))
	require.NoError(t, simjobs.ValidateStatusDetails(out))

	// The Device Client's documented describe-job-execution output.
	dc := "mv: cannot stat '/sbin/reboot-invalid': No such file or directory\n"
	require.Equal(t, dc, clampDetails(map[string]string{DetailStderr: dc})[DetailStderr])
}

// utf8RuneBytes is the byte length of the last n characters of s.
func utf8RuneBytes(s string, n int) int {
	b := 0
	for i := 0; i < n; i++ {
		_, size := utf8.DecodeLastRuneInString(s[:len(s)-b])
		b += size
	}
	return b
}

// Every byte a step may print becomes a value the service accepts.
func FuzzDetailValueIsAccepted(f *testing.F) {
	f.Add("plain\n")
	f.Add("\r\n\x00\x1b\u200b\uE000\U000E0FFF\u0378\xff")
	f.Add(strings.Repeat("é", 2000))
	f.Fuzz(func(t *testing.T, s string) {
		v := detailValue(s)
		if v == "" {
			return
		}
		if n := utf8.RuneCountInString(v); n > protocol.MaxStatusDetailsValueBytes {
			t.Fatalf("%d characters", n)
		}
		if err := simjobs.ValidateStatusDetails(map[string]string{"stdout": v}); err != nil {
			t.Fatalf("%q -> %q: %v", s, v, err)
		}
	})
}
