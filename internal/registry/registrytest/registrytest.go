// Package registrytest is the contract every registry.Store implementation
// must meet. The DynamoDB and in-memory stores run it; so can any other
// implementation (e.g. one the local IoT Core builds on top of Memory).
package registrytest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// Clock is a settable clock for the contract's timestamp checks.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock reading start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// NewStore returns an empty store for one sub-test whose timestamps come
// from now.
type NewStore func(t *testing.T, now func() time.Time) registry.Store

// Run runs the contract against stores made by newStore.
func Run(t *testing.T, newStore NewStore) {
	// A start time with sub-second digits and a non-UTC zone checks that
	// stores keep whole seconds in UTC.
	start := time.Date(2025, 3, 4, 5, 6, 7, 890, time.FixedZone("X", 3600))
	setup := func(t *testing.T) (registry.Store, *Clock, context.Context) {
		clock := NewClock(start)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		return newStore(t, clock.Now), clock, ctx
	}
	stamp := func(c *Clock) time.Time { return c.Now().UTC().Truncate(time.Second) }

	t.Run("GetMissing", func(t *testing.T) {
		s, _, ctx := setup(t)
		_, err := s.Get(ctx, "0000000000000001")
		require.ErrorIs(t, err, registry.ErrNotFound)
	})

	t.Run("EmptySerialRejected", func(t *testing.T) {
		s, _, ctx := setup(t)
		_, err := s.Get(ctx, "")
		require.Error(t, err)
		require.Error(t, s.PutAllowed(ctx, ""))
		_, err = s.MarkProvisioned(ctx, "", "c", "")
		require.Error(t, err)
		require.Error(t, s.MarkRevoked(ctx, "", ""))
	})

	t.Run("PutAllowedCreatesAndIsIdempotent", func(t *testing.T) {
		s, clock, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		d, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		want := registry.Device{Serial: "a1", State: registry.StateAllowed, CreatedAt: stamp(clock), UpdatedAt: stamp(clock)}
		assertDevice(t, want, d)

		clock.Advance(time.Minute)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		d, err = s.Get(ctx, "a1")
		require.NoError(t, err)
		assertDevice(t, want, d) // unchanged, not even updatedAt
	})

	t.Run("MarkProvisionedMissing", func(t *testing.T) {
		s, _, ctx := setup(t)
		_, err := s.MarkProvisioned(ctx, "nobody", "cert1", "")
		require.ErrorIs(t, err, registry.ErrNotFound)
		_, err = s.Get(ctx, "nobody")
		require.ErrorIs(t, err, registry.ErrNotFound, "a failed MarkProvisioned must not create a record")
	})

	t.Run("MarkProvisionedFromAllowedAndRepeat", func(t *testing.T) {
		s, clock, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		created := stamp(clock)
		clock.Advance(time.Minute)

		d, err := s.MarkProvisioned(ctx, "a1", "cert1", "dev-a1")
		require.NoError(t, err)
		want := registry.Device{Serial: "a1", State: registry.StateProvisioned, ThingName: "dev-a1",
			CertificateID: "cert1", CreatedAt: created, UpdatedAt: stamp(clock)}
		assertDevice(t, want, d)
		got, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		assertDevice(t, want, got)

		// A retried hook records the same certificate again.
		clock.Advance(time.Minute)
		d, err = s.MarkProvisioned(ctx, "a1", "cert1", "")
		require.NoError(t, err)
		want.UpdatedAt = stamp(clock)
		assertDevice(t, want, d) // empty thing name keeps the recorded one

		// Another certificate for a provisioned serial (a clone, or a
		// re-flashed device) is refused: it needs ReplaceCertificate.
		_, err = s.MarkProvisioned(ctx, "a1", "cert2", "")
		require.ErrorIs(t, err, registry.ErrConflict)
		got, err = s.Get(ctx, "a1")
		require.NoError(t, err)
		assertDevice(t, want, got)
	})

	t.Run("MarkProvisionedRejectsEmptyCertificate", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		_, err := s.MarkProvisioned(ctx, "a1", "", "")
		require.Error(t, err)
		d, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		require.Equal(t, registry.StateAllowed, d.State)
	})

	t.Run("PutAllowedLeavesProvisionedAlone", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		before, err := s.MarkProvisioned(ctx, "a1", "cert1", "dev-a1")
		require.NoError(t, err)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		after, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		assertDevice(t, before, after)
	})

	t.Run("MarkRevokedGuardsCertificate", func(t *testing.T) {
		s, clock, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		_, err := s.MarkProvisioned(ctx, "a1", "cert1", "dev-a1")
		require.NoError(t, err)

		err = s.MarkRevoked(ctx, "a1", "cert0")
		require.ErrorIs(t, err, registry.ErrConflict)
		err = s.MarkRevoked(ctx, "a1", "")
		require.ErrorIs(t, err, registry.ErrConflict)
		d, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		require.Equal(t, registry.StateProvisioned, d.State)

		clock.Advance(time.Hour)
		require.NoError(t, s.MarkRevoked(ctx, "a1", "cert1"))
		d, err = s.Get(ctx, "a1")
		require.NoError(t, err)
		require.Equal(t, registry.StateRevoked, d.State)
		require.Equal(t, "cert1", d.CertificateID, "the revoked certificate stays on record")
		require.Equal(t, stamp(clock), d.UpdatedAt)

		// Repeating a revocation is a no-op, whatever certificate is named.
		require.NoError(t, s.MarkRevoked(ctx, "a1", "cert1"))
		require.NoError(t, s.MarkRevoked(ctx, "a1", "other"))
	})

	t.Run("MarkRevokedAllowedWithoutCertificate", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		require.ErrorIs(t, s.MarkRevoked(ctx, "a1", "cert1"), registry.ErrConflict)
		require.NoError(t, s.MarkRevoked(ctx, "a1", ""))
		d, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		require.Equal(t, registry.StateRevoked, d.State)
	})

	t.Run("MarkRevokedMissing", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.ErrorIs(t, s.MarkRevoked(ctx, "nobody", ""), registry.ErrNotFound)
		_, err := s.Get(ctx, "nobody")
		require.ErrorIs(t, err, registry.ErrNotFound)
	})

	t.Run("RevokedCannotProvision", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		require.NoError(t, s.MarkRevoked(ctx, "a1", ""))
		_, err := s.MarkProvisioned(ctx, "a1", "cert1", "")
		require.ErrorIs(t, err, registry.ErrConflict)
		require.NotErrorIs(t, err, registry.ErrNotFound)
		d, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		require.Equal(t, registry.StateRevoked, d.State)
		require.Empty(t, d.CertificateID)
	})

	t.Run("PutAllowedReadmitsRevoked", func(t *testing.T) {
		s, clock, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		created := stamp(clock)
		_, err := s.MarkProvisioned(ctx, "a1", "cert1", "dev-a1")
		require.NoError(t, err)
		require.NoError(t, s.MarkRevoked(ctx, "a1", "cert1"))

		clock.Advance(24 * time.Hour)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		d, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		assertDevice(t, registry.Device{Serial: "a1", State: registry.StateAllowed, CreatedAt: created, UpdatedAt: stamp(clock)}, d)

		_, err = s.MarkProvisioned(ctx, "a1", "cert2", "")
		require.NoError(t, err)
	})

	t.Run("ScanPaginates", func(t *testing.T) {
		s, _, ctx := setup(t)
		page, err := s.Scan(ctx, "", 0)
		require.NoError(t, err)
		require.Empty(t, page.Devices)
		require.Empty(t, page.Next)

		want := map[string]registry.State{}
		for i := range 23 {
			serial := fmt.Sprintf("%016x", 1000+i*7)
			require.NoError(t, s.PutAllowed(ctx, serial))
			want[serial] = registry.StateAllowed
			if i%3 == 0 {
				_, err := s.MarkProvisioned(ctx, serial, "cert"+serial, "")
				require.NoError(t, err)
				want[serial] = registry.StateProvisioned
			}
		}
		got := map[string]registry.State{}
		cursor, pages := "", 0
		for {
			page, err := s.Scan(ctx, cursor, 5)
			require.NoError(t, err)
			require.LessOrEqual(t, len(page.Devices), 5)
			for _, d := range page.Devices {
				_, dup := got[d.Serial]
				require.False(t, dup, "serial %s returned twice", d.Serial)
				got[d.Serial] = d.State
			}
			pages++
			require.Less(t, pages, 50, "scan does not terminate")
			if page.Next == "" {
				break
			}
			cursor = page.Next
		}
		require.Equal(t, want, got)
		require.GreaterOrEqual(t, pages, 5)

		all := map[string]registry.State{}
		require.NoError(t, registry.ScanAll(ctx, s, func(d registry.Device) error {
			all[d.Serial] = d.State
			return nil
		}))
		require.Equal(t, want, all)
	})

	t.Run("ConcurrentPutAllowed", func(t *testing.T) {
		s, _, ctx := setup(t)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- s.PutAllowed(ctx, "a1")
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		n := 0
		require.NoError(t, registry.ScanAll(ctx, s, func(registry.Device) error { n++; return nil }))
		require.Equal(t, 1, n)
	})

	runExpiry(t, setup)
	runRotation(t, setup)
	runAdmission(t, setup)

	t.Run("CanceledContext", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := s.Get(cctx, "a1")
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorIs(t, s.PutAllowed(cctx, "a2"), context.Canceled)
		_, err = s.Get(ctx, "a2")
		require.ErrorIs(t, err, registry.ErrNotFound)
	})
}

func assertDevice(t *testing.T, want, got registry.Device) {
	t.Helper()
	assert.Equal(t, want.Serial, got.Serial, "serial")
	assert.Equal(t, want.State, got.State, "state")
	assert.Equal(t, want.ThingName, got.ThingName, "thing name")
	assert.Equal(t, want.CertificateID, got.CertificateID, "certificate id")
	assert.True(t, want.CreatedAt.Equal(got.CreatedAt), "createdAt: want %v, got %v", want.CreatedAt, got.CreatedAt)
	assert.True(t, want.UpdatedAt.Equal(got.UpdatedAt), "updatedAt: want %v, got %v", want.UpdatedAt, got.UpdatedAt)
	assert.True(t, want.CertNotAfter.Equal(got.CertNotAfter), "certNotAfter: want %v, got %v", want.CertNotAfter, got.CertNotAfter)
}
