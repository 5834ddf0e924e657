// Package ssmstatetest is the contract every ssmstate.Store implementation
// must meet; the DynamoDB and in-memory stores both run it.
package ssmstatetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
)

// Env is what one sub-test gets: a store and the registry under it.
type Env struct {
	Store    ssmstate.Store
	Registry registry.Store
}

// NewEnv returns an empty registry and an SSM state store on it whose
// timestamps come from now.
type NewEnv func(t *testing.T, now func() time.Time) Env

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Run runs the contract.
func Run(t *testing.T, newEnv NewEnv) {
	start := time.Date(2025, 6, 1, 10, 0, 0, 500, time.FixedZone("X", 7200))
	const serial, thing, cert = "00000000000000a1", "dev-00000000000000a1", "c0ffee"
	setup := func(t *testing.T) (Env, *clock, context.Context) {
		c := &clock{now: start}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		env := newEnv(t, c.Now)
		require.NoError(t, env.Registry.PutAllowed(ctx, serial))
		_, err := env.Registry.MarkProvisioned(ctx, serial, cert, thing)
		require.NoError(t, err)
		return env, c, ctx
	}
	stamp := func(c *clock) time.Time { return c.Now().UTC().Truncate(time.Second) }

	t.Run("MissingDevice", func(t *testing.T) {
		env, _, ctx := setup(t)
		s := env.Store
		_, err := s.Get(ctx, "ffffffffffffffff")
		require.ErrorIs(t, err, ssmstate.ErrNotFound)
		_, err = s.Reserve(ctx, "ffffffffffffffff", "r1")
		require.ErrorIs(t, err, ssmstate.ErrNotFound)
		_, err = s.BeginDeactivation(ctx, "ffffffffffffffff", "r1")
		require.ErrorIs(t, err, ssmstate.ErrNotFound)
		require.ErrorIs(t, s.Clear(ctx, "ffffffffffffffff", ssmstate.Guard{}), ssmstate.ErrNotFound)
		_, err = env.Registry.Get(ctx, "ffffffffffffffff")
		require.ErrorIs(t, err, registry.ErrNotFound, "no registry item was created")
	})

	t.Run("NewDeviceIsInactive", func(t *testing.T) {
		env, _, ctx := setup(t)
		r, err := env.Store.Get(ctx, serial)
		require.NoError(t, err)
		assert.Equal(t, ssmstate.Record{Serial: serial, State: ssmstate.StateInactive}, r)
	})

	t.Run("EmptyArguments", func(t *testing.T) {
		env, _, ctx := setup(t)
		s := env.Store
		_, err := s.Get(ctx, "")
		require.Error(t, err)
		_, err = s.Reserve(ctx, serial, "")
		require.Error(t, err)
		_, err = s.SetActivation(ctx, serial, "r", "", time.Now())
		require.Error(t, err)
		_, err = s.MarkActive(ctx, serial, "a", "")
		require.Error(t, err)
	})

	t.Run("Lifecycle", func(t *testing.T) {
		env, c, ctx := setup(t)
		s := env.Store
		r, err := s.Reserve(ctx, serial, "req-1")
		require.NoError(t, err)
		assert.Equal(t, ssmstate.Record{Serial: serial, State: ssmstate.StateActivating, RequestID: "req-1", UpdatedAt: stamp(c)}, r)

		_, err = s.Reserve(ctx, serial, "req-2")
		require.ErrorIs(t, err, ssmstate.ErrConflict, "a second activation cannot reserve")

		_, err = s.SetActivation(ctx, serial, "req-2", "act-1", start.Add(time.Hour))
		require.ErrorIs(t, err, ssmstate.ErrConflict, "only the reserving request sets the activation")

		c.Advance(time.Minute)
		expiry := start.Add(time.Hour + 300*time.Millisecond)
		r, err = s.SetActivation(ctx, serial, "req-1", "act-1", expiry)
		require.NoError(t, err)
		assert.Equal(t, "act-1", r.ActivationID)
		assert.Equal(t, expiry.UTC().Truncate(time.Second), r.ActivationExpiry)
		assert.Equal(t, stamp(c), r.UpdatedAt)
		got, err := s.Get(ctx, serial)
		require.NoError(t, err)
		assert.Equal(t, r, got)

		_, err = s.MarkActive(ctx, serial, "act-other", "mi-0123456789abcdef0")
		require.ErrorIs(t, err, ssmstate.ErrConflict, "an instance of another activation is refused")

		r, err = s.MarkActive(ctx, serial, "act-1", "mi-0123456789abcdef0")
		require.NoError(t, err)
		assert.Equal(t, ssmstate.StateActive, r.State)
		assert.Equal(t, "mi-0123456789abcdef0", r.InstanceID)
		assert.Equal(t, "req-1", r.RequestID)

		_, err = s.MarkActive(ctx, serial, "act-1", "mi-0123456789abcdef0")
		require.NoError(t, err, "a repeated registration event is harmless")
		_, err = s.MarkActive(ctx, serial, "act-1", "mi-0000000000000000f")
		require.ErrorIs(t, err, ssmstate.ErrConflict, "a second instance of the same activation is refused")

		_, err = s.Reserve(ctx, serial, "req-3")
		require.ErrorIs(t, err, ssmstate.ErrConflict, "an active device cannot be reserved")

		r, err = s.BeginDeactivation(ctx, serial, "req-4")
		require.NoError(t, err)
		assert.Equal(t, ssmstate.StateDeactivating, r.State)
		assert.Equal(t, "req-4", r.RequestID)
		assert.Equal(t, "act-1", r.ActivationID, "ids are kept for the cleanup")
		assert.Equal(t, "mi-0123456789abcdef0", r.InstanceID)

		_, err = s.MarkActive(ctx, serial, "act-1", "mi-0123456789abcdef0")
		require.ErrorIs(t, err, ssmstate.ErrConflict, "a late registration event does not revive a deactivating device")

		require.ErrorIs(t, s.Clear(ctx, serial, ssmstate.Guard{RequestID: "req-1"}), ssmstate.ErrConflict)
		require.ErrorIs(t, s.Clear(ctx, serial, ssmstate.Guard{ActivationID: "act-2"}), ssmstate.ErrConflict)
		require.ErrorIs(t, s.Clear(ctx, serial, ssmstate.Guard{State: ssmstate.StateActivating}), ssmstate.ErrConflict)
		require.NoError(t, s.Clear(ctx, serial, ssmstate.Guard{RequestID: "req-4", ActivationID: "act-1", State: ssmstate.StateDeactivating}))
		r, err = s.Get(ctx, serial)
		require.NoError(t, err)
		assert.Equal(t, ssmstate.Record{Serial: serial, State: ssmstate.StateInactive, UpdatedAt: stamp(c)}, r)

		require.NoError(t, s.Clear(ctx, serial, ssmstate.Guard{State: ssmstate.StateInactive}), "clearing twice is harmless")
		_, err = s.Reserve(ctx, serial, "req-5")
		require.NoError(t, err, "a cleared device can be activated again")
	})

	t.Run("RegistryAttributesUntouched", func(t *testing.T) {
		env, c, ctx := setup(t)
		before, err := env.Registry.Get(ctx, serial)
		require.NoError(t, err)
		c.Advance(time.Hour)
		_, err = env.Store.Reserve(ctx, serial, "r")
		require.NoError(t, err)
		_, err = env.Store.SetActivation(ctx, serial, "r", "a", start.Add(2*time.Hour))
		require.NoError(t, err)
		require.NoError(t, env.Store.Clear(ctx, serial, ssmstate.Guard{}))
		after, err := env.Registry.Get(ctx, serial)
		require.NoError(t, err)
		assert.Equal(t, before, after)
		assert.Equal(t, registry.StateProvisioned, after.State)
		assert.Equal(t, thing, after.ThingName)
	})

	t.Run("ConcurrentReserveHasOneWinner", func(t *testing.T) {
		env, _, ctx := setup(t)
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = env.Store.Reserve(ctx, serial, fmt.Sprintf("req-%d", i))
			}()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			if err == nil {
				won++
			} else {
				require.ErrorIs(t, err, ssmstate.ErrConflict)
			}
		}
		assert.Equal(t, 1, won)
	})

	t.Run("ScanPending", func(t *testing.T) {
		env, _, ctx := setup(t)
		s := env.Store
		want := map[string]ssmstate.State{}
		for i := range 12 {
			sn := fmt.Sprintf("%016x", 0x100+i)
			require.NoError(t, env.Registry.PutAllowed(ctx, sn))
			switch i % 4 {
			case 0:
				_, err := s.Reserve(ctx, sn, "r")
				require.NoError(t, err)
				want[sn] = ssmstate.StateActivating
			case 1:
				_, err := s.BeginDeactivation(ctx, sn, "r")
				require.NoError(t, err)
				want[sn] = ssmstate.StateDeactivating
			case 2:
				_, err := s.Reserve(ctx, sn, "r")
				require.NoError(t, err)
				_, err = s.SetActivation(ctx, sn, "r", "a-"+sn, start.Add(time.Hour))
				require.NoError(t, err)
				_, err = s.MarkActive(ctx, sn, "a-"+sn, "mi-"+sn)
				require.NoError(t, err)
			}
		}
		got := map[string]ssmstate.State{}
		cursor, pages := "", 0
		for {
			page, err := s.ScanPending(ctx, cursor, 5)
			require.NoError(t, err)
			pages++
			for _, r := range page.Records {
				got[r.Serial] = r.State
			}
			if page.Next == "" {
				break
			}
			cursor = page.Next
			require.Less(t, pages, 10, "scan does not terminate")
		}
		assert.Equal(t, want, got)
		assert.Greater(t, pages, 1, "the scan was paginated")

		all := map[string]ssmstate.State{}
		require.NoError(t, ssmstate.ScanAllPending(ctx, s, func(r ssmstate.Record) error {
			all[r.Serial] = r.State
			return nil
		}))
		assert.Equal(t, want, all)
	})
}
