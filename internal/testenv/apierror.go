package testenv

import (
	"errors"
	"testing"

	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// RequireAPIError checks that err is the AWS error code with HTTP status
// and a message, as an AWS SDK client surfaces it.
func RequireAPIError(t testing.TB, err error, code string, status int) {
	t.Helper()
	require.Error(t, err)
	var api smithy.APIError
	require.True(t, errors.As(err, &api), "not an API error: %v", err)
	assert.Equal(t, code, api.ErrorCode(), "%v", err)
	var re interface{ HTTPStatusCode() int }
	require.True(t, errors.As(err, &re), "no HTTP status in %v", err)
	assert.Equal(t, status, re.HTTPStatusCode(), "%v", err)
	assert.NotEmpty(t, api.ErrorMessage())
}
