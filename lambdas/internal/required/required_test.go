package required

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFields(t *testing.T) {
	require.NoError(t, Fields("x: missing", Field("A", true), Field("B", true)))
	require.NoError(t, Fields("x: missing"))
	require.EqualError(t, Fields("x: missing", Field("A", false), Field("B", true), Field("C", false)), "x: missing A, C")
	require.EqualError(t, Fields("y: missing configuration:", Field("Z", false)), "y: missing configuration: Z")
}
