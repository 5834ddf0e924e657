package jobs

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// AWS IoT Jobs refuses statusDetails values that are empty, longer than
// 1024 characters or contain control characters ([^\p{C}]+); the engine
// must never send one, or the update is rejected forever.
func TestClampDetailsProducesValuesAWSAccepts(t *testing.T) {
	long := strings.Repeat("é line\n", 400)
	in := map[string]string{
		DetailReason: "exited with status 1",
		"stderr":     "first\r\nsecond\tcol\x00\x1b[31mred\n",
		"stdout":     long,
		"empty":      "\n \n",
	}
	out := clampDetails(in)
	require.NotContains(t, out, "empty", "values that sanitise to nothing are left out")
	require.Equal(t, "first | second col  [31mred", out["stderr"])
	require.True(t, strings.HasSuffix(out["stdout"], "é line"), "the tail is kept")
	for k, v := range out {
		require.NotEmpty(t, v, k)
		require.LessOrEqual(t, len(v), protocol.MaxStatusDetailsValueBytes, k)
		require.True(t, utf8.ValidString(v), k)
		for _, r := range v {
			require.False(t, unicode.Is(unicode.C, r), "%s holds control character %U", k, r)
		}
	}
}
