package stack_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// FollowAllowlist deploys the file at once (a bad file is refused with
// its line and nothing is followed), then on each change and reload;
// Close stops following.
func TestFollowAllowlist(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logs := &testenv.LogBuffer{}
	s, err := stack.Start(ctx, stack.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "allowlist.txt")
	other := "10000000000000b2"

	require.NoError(t, os.WriteFile(path, []byte(serial+"\nnot-a-serial\n"), 0o644))
	_, err = s.FollowAllowlist(ctx, path, stack.FollowOptions{Interval: 10 * time.Millisecond})
	require.ErrorContains(t, err, "line 2")
	_, err = s.Registry.Get(ctx, serial)
	require.ErrorIs(t, err, registry.ErrNotFound, "a bad file changes nothing")

	require.NoError(t, os.WriteFile(path, []byte(serial+"\n"), 0o644))
	reload := make(chan os.Signal, 1)
	res, err := s.FollowAllowlist(ctx, path, stack.FollowOptions{Interval: 10 * time.Millisecond, Reload: reload})
	require.NoError(t, err)
	assert.Equal(t, 1, res.Added)
	state := func(serial string) registry.State {
		d, err := s.Registry.Get(ctx, serial)
		if err != nil {
			return ""
		}
		return d.State
	}
	assert.Equal(t, registry.StateAllowed, state(serial))

	// An edit: other admitted, serial revoked.
	require.NoError(t, os.WriteFile(path, []byte(other+"\n"), 0o644))
	require.Eventually(t, func() bool { return state(other) == registry.StateAllowed && state(serial) == registry.StateRevoked },
		30*time.Second, 10*time.Millisecond)

	// A bad edit is reported and changes nothing; a reload deploys the
	// file again.
	require.NoError(t, os.WriteFile(path, []byte("junk\n"), 0o644))
	notDeployed := func() int { return logs.CountJSON("allowlist not deployed: the sync refused it or failed", nil) }
	require.Eventually(t, func() bool { return notDeployed() == 1 }, 30*time.Second, 10*time.Millisecond)
	assert.Contains(t, logs.String(), "line 1")
	assert.Equal(t, registry.StateAllowed, state(other))
	reload <- os.Interrupt
	require.Eventually(t, func() bool { return notDeployed() == 2 }, 30*time.Second, 10*time.Millisecond, "reload deploys again")

	// After Close (which waits for the follower), edits are not followed.
	require.NoError(t, s.Close())
	require.NoError(t, os.WriteFile(path, []byte(other+"\n"+serial+" readmit=T1\n"), 0o644))
	assert.Equal(t, 2, notDeployed())
	assert.Equal(t, registry.StateRevoked, state(serial))
}
