package registrytest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

type setupFunc func(t *testing.T) (registry.Store, *Clock, context.Context)

// provisioned admits and provisions serial with a certificate expiring at
// notAfter (zero: unknown).
func provisioned(t *testing.T, ctx context.Context, s registry.Store, serial, cert string, notAfter time.Time) registry.Device {
	t.Helper()
	require.NoError(t, s.PutAllowed(ctx, serial))
	d, err := s.RecordProvisioned(ctx, serial, "dev-"+serial, registry.Certificate{ID: cert, NotAfter: notAfter})
	require.NoError(t, err)
	return d
}

// expiring lists every device ExpiringBefore returns for before, paging
// with limit, in order.
func expiring(t *testing.T, ctx context.Context, s registry.Store, before time.Time, limit int) []string {
	t.Helper()
	var out []string
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 100, "ExpiringBefore does not terminate")
		page, err := s.ExpiringBefore(ctx, before, cursor, limit)
		require.NoError(t, err)
		if limit > 0 {
			require.LessOrEqual(t, len(page.Devices), limit)
		}
		for _, d := range page.Devices {
			out = append(out, d.Serial)
		}
		if page.Next == "" {
			return out
		}
		cursor = page.Next
	}
}

func runExpiry(t *testing.T, setup setupFunc) {
	t.Run("RecordProvisionedKeepsExpiry", func(t *testing.T) {
		s, _, ctx := setup(t)
		// Sub-second digits and a zone: stored as whole seconds in UTC.
		notAfter := time.Date(2026, 1, 2, 3, 4, 5, 600, time.FixedZone("Y", -7200))
		d := provisioned(t, ctx, s, "a1", "cert1", notAfter)
		want := notAfter.UTC().Truncate(time.Second)
		require.True(t, want.Equal(d.CertNotAfter), "got %v", d.CertNotAfter)
		got, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		require.True(t, want.Equal(got.CertNotAfter), "got %v", got.CertNotAfter)
		require.Equal(t, "2026-01-02T05:04:05Z", registry.FormatTime(got.CertNotAfter))

		// MarkProvisioned (expiry unknown) drops the recorded expiry.
		d, err = s.MarkProvisioned(ctx, "a1", "cert1", "")
		require.NoError(t, err)
		require.True(t, d.CertNotAfter.IsZero())
		require.Empty(t, expiring(t, ctx, s, notAfter.AddDate(10, 0, 0), 0))
	})

	t.Run("ExpiringBeforeUsesIndex", func(t *testing.T) {
		s, _, ctx := setup(t)
		base := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
		var want []string
		for i := range 17 {
			serial := fmt.Sprintf("%016x", 5000+i)
			// Expiries in reverse serial order, two sharing a second.
			notAfter := base.Add(time.Duration(17-i) * time.Hour)
			if i == 3 {
				notAfter = base.Add(13 * time.Hour) // same as i == 4
			}
			provisioned(t, ctx, s, serial, "cert"+serial, notAfter)
		}
		// Soonest first; equal expiries by serial.
		for i := 16; i >= 0; i-- {
			if i == 4 {
				want = append(want, fmt.Sprintf("%016x", 5003), fmt.Sprintf("%016x", 5004))
				continue
			}
			if i == 3 {
				continue
			}
			want = append(want, fmt.Sprintf("%016x", 5000+i))
		}
		// Not in the index: unknown expiry, allowed, revoked.
		require.NoError(t, s.PutAllowed(ctx, "allowed"))
		provisioned(t, ctx, s, "unknown", "certU", time.Time{})
		provisioned(t, ctx, s, "revoked", "certR", base)
		require.NoError(t, s.MarkRevoked(ctx, "revoked", "certR"))

		all := expiring(t, ctx, s, base.Add(100*time.Hour), 4)
		require.Equal(t, want, all)
		require.Equal(t, want, expiring(t, ctx, s, base.Add(100*time.Hour), 0))
		// The bound is exclusive.
		require.Equal(t, want[:5], expiring(t, ctx, s, base.Add(6*time.Hour), 2))
		require.Empty(t, expiring(t, ctx, s, base, 3))

		// A revoked device leaves the index; re-admitted and provisioned
		// again it comes back with its new certificate's expiry.
		require.NoError(t, s.MarkRevoked(ctx, want[0], "cert"+want[0]))
		require.Equal(t, want[1:], expiring(t, ctx, s, base.Add(100*time.Hour), 5))
		require.NoError(t, s.PutAllowed(ctx, want[0]))
		d, err := s.Get(ctx, want[0])
		require.NoError(t, err)
		require.True(t, d.CertNotAfter.IsZero(), "re-admitted record keeps no expiry")
		provisioned(t, ctx, s, want[0], "new", base.Add(200*time.Hour))
		require.Equal(t, append(want[1:], want[0]), expiring(t, ctx, s, base.Add(300*time.Hour), 5))

		_, err = s.ExpiringBefore(ctx, base, "garbage", 1)
		require.Error(t, err)
	})
}

func runRotation(t *testing.T, setup setupFunc) {
	notAfter := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	newNotAfter := time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)

	t.Run("RotationCompletes", func(t *testing.T) {
		s, clock, ctx := setup(t)
		provisioned(t, ctx, s, "a1", "old", notAfter)

		d, err := s.RequestRotation(ctx, "a1", "r1", time.Hour)
		require.NoError(t, err)
		require.Equal(t, "r1", d.RotationID)
		require.Equal(t, registry.RotationRequested, d.RotationState)
		require.Equal(t, stampOf(clock), d.RotationRequestedAt.UTC())

		// A young pending rotation is not asked again; another id does not
		// replace it.
		clock.Advance(30 * time.Minute)
		_, err = s.RequestRotation(ctx, "a1", "r2", time.Hour)
		require.ErrorIs(t, err, registry.ErrRotationPending)
		require.ErrorIs(t, err, registry.ErrConflict)
		// Once old enough, the same rotation is asked again.
		clock.Advance(31 * time.Minute)
		d, err = s.RequestRotation(ctx, "a1", "r3", time.Hour)
		require.NoError(t, err)
		require.Equal(t, "r1", d.RotationID)
		require.Equal(t, stampOf(clock), d.RotationRequestedAt.UTC())

		// The certificate is issued once; the same one again is a repeat.
		_, err = s.IssueRotation(ctx, "a1", "r2", registry.Certificate{ID: "new", NotAfter: newNotAfter})
		require.ErrorIs(t, err, registry.ErrConflict)
		_, err = s.IssueRotation(ctx, "a1", "r1", registry.Certificate{ID: "new"})
		require.Error(t, err, "expiry is required")
		d, err = s.IssueRotation(ctx, "a1", "r1", registry.Certificate{ID: "new", NotAfter: newNotAfter})
		require.NoError(t, err)
		require.Equal(t, registry.RotationIssued, d.RotationState)
		require.Equal(t, "new", d.RotationCertID)
		require.True(t, newNotAfter.Equal(d.RotationCertNotAfter))
		require.Equal(t, "old", d.CertificateID, "the old certificate stays current until confirmed")
		_, err = s.IssueRotation(ctx, "a1", "r1", registry.Certificate{ID: "new", NotAfter: newNotAfter})
		require.NoError(t, err)
		_, err = s.IssueRotation(ctx, "a1", "r1", registry.Certificate{ID: "other", NotAfter: newNotAfter})
		require.ErrorIs(t, err, registry.ErrConflict)

		// Only the issued certificate of this rotation completes it.
		_, err = s.CompleteRotation(ctx, "a1", "r1", "other")
		require.ErrorIs(t, err, registry.ErrConflict)
		_, err = s.CompleteRotation(ctx, "a1", "r9", "new")
		require.ErrorIs(t, err, registry.ErrConflict)
		d, err = s.CompleteRotation(ctx, "a1", "r1", "new")
		require.NoError(t, err)
		checkCompleted := func(d registry.Device) {
			t.Helper()
			require.Equal(t, "new", d.CertificateID)
			require.True(t, newNotAfter.Equal(d.CertNotAfter), "certNotAfter %v", d.CertNotAfter)
			require.Equal(t, "old", d.RetiredCertificateID)
			require.Equal(t, "r1", d.LastRotationID)
			require.Equal(t, registry.RotationCompleted, d.LastRotationStatus)
			require.Empty(t, d.RotationID)
			require.Empty(t, d.RotationState)
			require.Empty(t, d.RotationCertID)
			require.True(t, d.RotationRequestedAt.IsZero())
			require.True(t, d.RotationCertNotAfter.IsZero())
			require.Equal(t, registry.StateProvisioned, d.State)
		}
		checkCompleted(d)
		got, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		checkCompleted(got)

		// Replays: completing again is a repeat; a late failure or a
		// late certificate for the finished rotation is refused.
		d, err = s.CompleteRotation(ctx, "a1", "r1", "new")
		require.NoError(t, err)
		checkCompleted(d)
		_, err = s.FailRotation(ctx, "a1", "r1")
		require.ErrorIs(t, err, registry.ErrConflict)
		_, err = s.IssueRotation(ctx, "a1", "r1", registry.Certificate{ID: "third", NotAfter: newNotAfter})
		require.ErrorIs(t, err, registry.ErrConflict)
		got, err = s.Get(ctx, "a1")
		require.NoError(t, err)
		checkCompleted(got)

		// The expiry index follows the new certificate.
		require.Empty(t, expiring(t, ctx, s, notAfter.Add(time.Hour), 0))
		require.Equal(t, []string{"a1"}, expiring(t, ctx, s, newNotAfter.Add(time.Hour), 0))

		// A new rotation can start.
		d, err = s.RequestRotation(ctx, "a1", "r4", time.Hour)
		require.NoError(t, err)
		require.Equal(t, "r4", d.RotationID)
	})

	t.Run("RotationFails", func(t *testing.T) {
		s, _, ctx := setup(t)
		provisioned(t, ctx, s, "a1", "old", notAfter)
		_, err := s.FailRotation(ctx, "a1", "r1")
		require.ErrorIs(t, err, registry.ErrConflict, "no rotation in progress")

		_, err = s.RequestRotation(ctx, "a1", "r1", time.Hour)
		require.NoError(t, err)
		_, err = s.IssueRotation(ctx, "a1", "r1", registry.Certificate{ID: "new", NotAfter: newNotAfter})
		require.NoError(t, err)
		_, err = s.FailRotation(ctx, "a1", "r2")
		require.ErrorIs(t, err, registry.ErrConflict)
		d, err := s.FailRotation(ctx, "a1", "r1")
		require.NoError(t, err)
		check := func(d registry.Device) {
			t.Helper()
			require.Equal(t, "old", d.CertificateID)
			require.True(t, notAfter.Equal(d.CertNotAfter))
			require.Equal(t, "new", d.RetiredCertificateID, "the refused certificate is retired")
			require.Equal(t, registry.RotationFailed, d.LastRotationStatus)
			require.Equal(t, "r1", d.LastRotationID)
			require.Empty(t, d.RotationID)
			require.Empty(t, d.RotationCertID)
		}
		check(d)
		d, err = s.FailRotation(ctx, "a1", "r1")
		require.NoError(t, err, "repeat")
		check(d)
		_, err = s.CompleteRotation(ctx, "a1", "r1", "new")
		require.ErrorIs(t, err, registry.ErrConflict, "a failed rotation cannot complete")
		got, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		check(got)

		// Failing before any certificate was issued retires nothing.
		_, err = s.RequestRotation(ctx, "a1", "r5", time.Hour)
		require.NoError(t, err)
		d, err = s.FailRotation(ctx, "a1", "r5")
		require.NoError(t, err)
		require.Empty(t, d.RetiredCertificateID)
		require.Equal(t, "old", d.CertificateID)
	})

	t.Run("RotationNeedsProvisionedDevice", func(t *testing.T) {
		s, _, ctx := setup(t)
		_, err := s.RequestRotation(ctx, "nobody", "r1", 0)
		require.ErrorIs(t, err, registry.ErrNotFound)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		_, err = s.RequestRotation(ctx, "a1", "r1", 0)
		require.ErrorIs(t, err, registry.ErrConflict)
		_, err = s.RequestRotation(ctx, "a1", "", 0)
		require.Error(t, err)

		provisioned(t, ctx, s, "a2", "old", notAfter)
		_, err = s.RequestRotation(ctx, "a2", "r1", 0)
		require.NoError(t, err)
		require.NoError(t, s.MarkRevoked(ctx, "a2", "old"))
		_, err = s.IssueRotation(ctx, "a2", "r1", registry.Certificate{ID: "new", NotAfter: newNotAfter})
		require.ErrorIs(t, err, registry.ErrConflict, "a revoked device gets no certificate")
		// Re-admitting a revoked device forgets its rotation.
		require.NoError(t, s.PutAllowed(ctx, "a2"))
		d, err := s.Get(ctx, "a2")
		require.NoError(t, err)
		require.Empty(t, d.RotationID)
	})

	t.Run("ReprovisionKeepsRotation", func(t *testing.T) {
		s, _, ctx := setup(t)
		provisioned(t, ctx, s, "a1", "old", notAfter)
		_, err := s.RequestRotation(ctx, "a1", "r1", 0)
		require.NoError(t, err)
		d, err := s.RecordProvisioned(ctx, "a1", "", registry.Certificate{ID: "old", NotAfter: notAfter})
		require.NoError(t, err)
		require.Equal(t, "r1", d.RotationID, "a retried hook leaves the rotation alone")
	})
}

func stampOf(c *Clock) time.Time { return c.Now().UTC().Truncate(time.Second) }
