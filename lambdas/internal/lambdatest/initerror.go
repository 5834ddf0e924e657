package lambdatest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// RequireInitError starts bin under a fresh Runtime API with only env and
// requires it to report the initialisation error want (error type
// Runtime.InitError) and then to exit non-zero.
func RequireInitError(t testing.TB, bin string, env map[string]string, want string) {
	t.Helper()
	api := StartRuntimeAPI(t)
	p := Start(t, bin, api, env)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	initErr, err := api.InitError(ctx)
	require.NoError(t, err)
	require.Equal(t, want, initErr.ErrorMessage)
	require.Equal(t, "Runtime.InitError", initErr.ErrorType)
	require.Error(t, p.Wait(ctx), "the process exits non-zero")
}
