package registrytest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

const (
	keyA = "aaaa000000000000000000000000000000000000000000000000000000000000"
	keyB = "bbbb000000000000000000000000000000000000000000000000000000000000"
)

// provisionedWithKey admits serial and provisions it with cert and key.
func provisionedWithKey(t *testing.T, ctx context.Context, s registry.Store, serial, cert, key string) registry.Device {
	t.Helper()
	require.NoError(t, s.PutAllowed(ctx, serial))
	d, err := s.RecordProvisioned(ctx, serial, "dev-"+serial, registry.Certificate{ID: cert, PublicKeySHA256: key})
	require.NoError(t, err)
	return d
}

func get(t *testing.T, ctx context.Context, s registry.Store, serial string) registry.Device {
	t.Helper()
	d, err := s.Get(ctx, serial)
	require.NoError(t, err)
	return d
}

// historyIDs lists the history as "id reason" strings.
func historyIDs(d registry.Device) []string {
	var out []string
	for _, h := range d.CertificateHistory {
		out = append(out, h.CertificateID+" "+h.Reason)
	}
	return out
}

// runAdmission is the contract of admission and revocation: cloned
// serials, same-key retries, re-admission and the revoking state.
func runAdmission(t *testing.T, setup setupFunc) {
	t.Run("RecordProvisionedKeepsPublicKey", func(t *testing.T) {
		s, _, ctx := setup(t)
		d := provisionedWithKey(t, ctx, s, "a1", "cert1", keyA)
		require.Equal(t, keyA, d.PublicKeySHA256)
		require.Equal(t, keyA, get(t, ctx, s, "a1").PublicKeySHA256)
		// A retried hook with the same certificate keeps it.
		d, err := s.RecordProvisioned(ctx, "a1", "", registry.Certificate{ID: "cert1", PublicKeySHA256: keyA})
		require.NoError(t, err)
		require.Equal(t, keyA, d.PublicKeySHA256)
	})

	t.Run("SecondCertificateForProvisionedSerialRefused", func(t *testing.T) {
		s, _, ctx := setup(t)
		before := provisionedWithKey(t, ctx, s, "a1", "cert1", keyA)
		for _, key := range []string{keyA, keyB, ""} {
			_, err := s.RecordProvisioned(ctx, "a1", "dev-a1", registry.Certificate{ID: "cert2", PublicKeySHA256: key})
			require.ErrorIs(t, err, registry.ErrConflict, "key %q", key)
		}
		after := get(t, ctx, s, "a1")
		assertDevice(t, before, after)
		require.Equal(t, keyA, after.PublicKeySHA256)
		require.Empty(t, after.CertificateHistory)
	})

	// Only an allowed record, or a provisioned one repeating its own
	// certificate, records a provisioning: a readmitted, revoking or
	// revoked record is refused even with the certificate it names.
	t.Run("RecordProvisionedOnlyAllowedOrRepeat", func(t *testing.T) {
		s, _, ctx := setup(t)
		for _, tc := range []struct {
			state registry.State
			to    func(serial string)
		}{
			{registry.StateReadmitted, func(serial string) {
				_, _, err := s.Readmit(ctx, serial, "T-1", "")
				require.NoError(t, err)
			}},
			{registry.StateRevoking, func(serial string) {
				_, err := s.MarkRevoking(ctx, serial, "cert1")
				require.NoError(t, err)
			}},
			{registry.StateRevoked, func(serial string) {
				_, err := s.MarkRevoking(ctx, serial, "cert1")
				require.NoError(t, err)
				require.NoError(t, s.MarkRevoked(ctx, serial, "cert1"))
			}},
		} {
			serial := "s-" + string(tc.state)
			provisionedWithKey(t, ctx, s, serial, "cert1", keyA)
			tc.to(serial)
			before := get(t, ctx, s, serial)
			require.Equal(t, tc.state, before.State)
			require.Equal(t, "cert1", before.CertificateID)
			_, err := s.RecordProvisioned(ctx, serial, "dev-"+serial, registry.Certificate{ID: "cert1", PublicKeySHA256: keyA})
			require.ErrorIs(t, err, registry.ErrConflict, "state %s", tc.state)
			assertDevice(t, before, get(t, ctx, s, serial))
		}
	})

	t.Run("ReplaceCertificateKeepsHistory", func(t *testing.T) {
		s, clock, ctx := setup(t)
		provisionedWithKey(t, ctx, s, "a1", "cert1", keyA)
		clock.Advance(time.Minute)
		notAfter := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		d, err := s.ReplaceCertificate(ctx, "a1", "dev-a1", registry.Certificate{ID: "cert2", NotAfter: notAfter, PublicKeySHA256: keyA},
			registry.RetiredCertificate{CertificateID: "cert1", Reason: registry.RetiredSameKey})
		require.NoError(t, err)
		require.Equal(t, registry.StateProvisioned, d.State)
		require.Equal(t, "cert2", d.CertificateID)
		require.Equal(t, keyA, d.PublicKeySHA256)
		require.True(t, notAfter.Equal(d.CertNotAfter))
		require.Equal(t, []string{"cert1 " + registry.RetiredSameKey}, historyIDs(d))
		require.True(t, stampOf(clock).Equal(d.CertificateHistory[0].RetiredAt), "retiredAt %v", d.CertificateHistory[0].RetiredAt)
		got := get(t, ctx, s, "a1")
		require.Equal(t, historyIDs(d), historyIDs(got))
		require.True(t, stampOf(clock).Equal(got.CertificateHistory[0].RetiredAt))
		require.Equal(t, []string{"a1"}, expiring(t, ctx, s, notAfter.Add(time.Hour), 0), "the new certificate is in the expiry index")

		// A repeat (the hook retried) changes nothing.
		clock.Advance(time.Minute)
		d, err = s.ReplaceCertificate(ctx, "a1", "dev-a1", registry.Certificate{ID: "cert2", PublicKeySHA256: keyA},
			registry.RetiredCertificate{CertificateID: "cert1", Reason: registry.RetiredSameKey})
		require.NoError(t, err)
		require.Len(t, d.CertificateHistory, 1)
		require.True(t, got.UpdatedAt.Equal(get(t, ctx, s, "a1").UpdatedAt))

		// Retiring a certificate the record does not name is refused.
		_, err = s.ReplaceCertificate(ctx, "a1", "", registry.Certificate{ID: "cert3"},
			registry.RetiredCertificate{CertificateID: "cert1", Reason: registry.RetiredSameKey})
		require.ErrorIs(t, err, registry.ErrConflict)
		require.Equal(t, "cert2", get(t, ctx, s, "a1").CertificateID)
	})

	t.Run("ReplaceCertificateValidates", func(t *testing.T) {
		s, _, ctx := setup(t)
		provisionedWithKey(t, ctx, s, "a1", "cert1", keyA)
		for _, c := range []struct {
			cert    registry.Certificate
			retired registry.RetiredCertificate
		}{
			{registry.Certificate{}, registry.RetiredCertificate{CertificateID: "cert1", Reason: "x"}},
			{registry.Certificate{ID: "cert2"}, registry.RetiredCertificate{Reason: "x"}},
			{registry.Certificate{ID: "cert1"}, registry.RetiredCertificate{CertificateID: "cert1", Reason: "x"}},
			{registry.Certificate{ID: "cert2"}, registry.RetiredCertificate{CertificateID: "cert1"}},
		} {
			_, err := s.ReplaceCertificate(ctx, "a1", "", c.cert, c.retired)
			require.Error(t, err, "%+v", c)
		}
		require.Equal(t, "cert1", get(t, ctx, s, "a1").CertificateID)
	})

	t.Run("ReplaceCertificateNeedsProvisionedOrReadmitted", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "allowed"))
		provisionedWithKey(t, ctx, s, "revoking", "c1", keyA)
		_, err := s.MarkRevoking(ctx, "revoking", "c1")
		require.NoError(t, err)
		provisionedWithKey(t, ctx, s, "revoked", "c1", keyA)
		require.NoError(t, s.MarkRevoked(ctx, "revoked", "c1"))
		for _, serial := range []string{"allowed", "revoking", "revoked"} {
			before := get(t, ctx, s, serial)
			_, err := s.ReplaceCertificate(ctx, serial, "", registry.Certificate{ID: "c2", PublicKeySHA256: keyA},
				registry.RetiredCertificate{CertificateID: "c1", Reason: registry.RetiredSameKey})
			require.ErrorIs(t, err, registry.ErrConflict, serial)
			assertDevice(t, before, get(t, ctx, s, serial))
		}
		_, err = s.ReplaceCertificate(ctx, "nobody", "", registry.Certificate{ID: "c2"},
			registry.RetiredCertificate{CertificateID: "c1", Reason: registry.RetiredSameKey})
		require.ErrorIs(t, err, registry.ErrNotFound)
	})

	t.Run("ReadmitOncePerToken", func(t *testing.T) {
		s, clock, ctx := setup(t)
		provisionedWithKey(t, ctx, s, "a1", "cert1", keyA)
		clock.Advance(time.Minute)
		d, changed, err := s.Readmit(ctx, "a1", "TICKET-1", "alice")
		require.NoError(t, err)
		require.True(t, changed)
		require.Equal(t, registry.StateReadmitted, d.State)
		require.Equal(t, "TICKET-1", d.ReadmitToken)
		require.Equal(t, "alice", d.ReadmittedBy)
		require.True(t, stampOf(clock).Equal(d.ReadmittedAt))
		require.Equal(t, "cert1", d.CertificateID, "the certificate to retire stays recorded")
		got := get(t, ctx, s, "a1")
		require.Equal(t, registry.StateReadmitted, got.State)
		require.Equal(t, "alice", got.ReadmittedBy)
		require.True(t, stampOf(clock).Equal(got.ReadmittedAt))

		// The same token again: nothing changes.
		clock.Advance(time.Minute)
		_, changed, err = s.Readmit(ctx, "a1", "TICKET-1", "bob")
		require.NoError(t, err)
		require.False(t, changed)
		require.Equal(t, "alice", get(t, ctx, s, "a1").ReadmittedBy)

		// A readmitted record takes one new certificate.
		d, err = s.ReplaceCertificate(ctx, "a1", "", registry.Certificate{ID: "cert2", PublicKeySHA256: keyB},
			registry.RetiredCertificate{CertificateID: "cert1", Reason: registry.RetiredReadmitted})
		require.NoError(t, err)
		require.Equal(t, registry.StateProvisioned, d.State)
		require.Equal(t, keyB, d.PublicKeySHA256)
		require.Equal(t, "TICKET-1", d.ReadmitToken, "the token stays on record")
		require.Equal(t, []string{"cert1 " + registry.RetiredReadmitted}, historyIDs(d))
		_, err = s.MarkProvisioned(ctx, "a1", "cert3", "")
		require.ErrorIs(t, err, registry.ErrConflict, "re-admission is used up")

		// The old token does not re-admit again; a new one does.
		_, changed, err = s.Readmit(ctx, "a1", "TICKET-1", "alice")
		require.NoError(t, err)
		require.False(t, changed)
		require.Equal(t, registry.StateProvisioned, get(t, ctx, s, "a1").State)
		d, changed, err = s.Readmit(ctx, "a1", "2026-12-05", "")
		require.NoError(t, err)
		require.True(t, changed)
		require.Equal(t, registry.StateReadmitted, d.State)
		require.Empty(t, d.ReadmittedBy)
		require.Empty(t, get(t, ctx, s, "a1").ReadmittedBy)
	})

	// Every token a serial used is kept: an older readmit line brought
	// back (a git revert of allowlist.txt) does not re-admit the device.
	t.Run("ReadmitNeverReplaysAnOlderToken", func(t *testing.T) {
		s, _, ctx := setup(t)
		provisionedWithKey(t, ctx, s, "a1", "c1", keyA)
		readmitAndProvision(t, ctx, s, "a1", "T1", "c1", "c2")
		d := readmitAndProvision(t, ctx, s, "a1", "T2", "c2", "c3")
		require.Equal(t, []string{"T1", "T2"}, d.ReadmitTokens)
		require.Equal(t, []string{"T1", "T2"}, get(t, ctx, s, "a1").ReadmitTokens)
		require.True(t, d.ReadmitTokenUsed("T1"))
		require.False(t, d.ReadmitTokenUsed("T3"))

		for _, token := range []string{"T1", "T2"} {
			_, changed, err := s.Readmit(ctx, "a1", token, "revert")
			require.NoError(t, err)
			require.False(t, changed, "token %s was used", token)
			got := get(t, ctx, s, "a1")
			require.Equal(t, registry.StateProvisioned, got.State, "token %s", token)
			require.Equal(t, "T2", got.ReadmitToken)
		}
		_, err := s.MarkProvisioned(ctx, "a1", "c4", "")
		require.ErrorIs(t, err, registry.ErrConflict, "no re-admission: a new certificate is refused")
	})

	// Re-admitted with T1, later T2, then revoked in an emergency: neither
	// T1 nor T2 lifts the hold, only a token never used for the serial.
	t.Run("EmergencyHoldNotLiftedByAnyUsedToken", func(t *testing.T) {
		s, _, ctx := setup(t)
		provisionedWithKey(t, ctx, s, "a1", "c1", keyA)
		readmitAndProvision(t, ctx, s, "a1", "T1", "c1", "c2")
		readmitAndProvision(t, ctx, s, "a1", "T2", "c2", "c3")
		_, err := s.MarkEmergencyRevoking(ctx, "a1", "c3", registry.Revocation{Reason: "stolen", By: "alice"})
		require.NoError(t, err)
		require.NoError(t, s.MarkRevoked(ctx, "a1", "c3"))
		for _, token := range []string{"T1", "T2"} {
			_, changed, err := s.Readmit(ctx, "a1", token, "revert")
			require.NoError(t, err)
			require.False(t, changed, "token %s", token)
			d := get(t, ctx, s, "a1")
			require.Equal(t, registry.StateRevoked, d.State, "token %s", token)
			require.True(t, d.HeldOut(), "token %s", token)
		}
		d, changed, err := s.Readmit(ctx, "a1", "T3", "carol")
		require.NoError(t, err)
		require.True(t, changed)
		require.Equal(t, registry.StateAllowed, d.State)
		require.Equal(t, []string{"T1", "T2", "T3"}, d.ReadmitTokens)
		require.Equal(t, []string{"T1", "T2", "T3"}, get(t, ctx, s, "a1").ReadmitTokens)
	})

	t.Run("ReadmitAllowedKeepsStateAndToken", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		d, changed, err := s.Readmit(ctx, "a1", "T1", "allowlist")
		require.NoError(t, err)
		require.True(t, changed)
		require.Equal(t, registry.StateAllowed, d.State)
		_, err = s.RecordProvisioned(ctx, "a1", "", registry.Certificate{ID: "c1", PublicKeySHA256: keyA})
		require.NoError(t, err)
		// The annotation left in the file does not re-admit the device
		// it admitted.
		_, changed, err = s.Readmit(ctx, "a1", "T1", "allowlist")
		require.NoError(t, err)
		require.False(t, changed)
		require.Equal(t, registry.StateProvisioned, get(t, ctx, s, "a1").State)
	})

	t.Run("ReadmitRejects", func(t *testing.T) {
		s, _, ctx := setup(t)
		_, _, err := s.Readmit(ctx, "nobody", "T1", "")
		require.ErrorIs(t, err, registry.ErrNotFound)
		provisionedWithKey(t, ctx, s, "a1", "c1", keyA)
		for _, bad := range []string{"", "has space", "semi;colon", fmt.Sprintf("%065d", 0), "é"} {
			_, _, err := s.Readmit(ctx, "a1", bad, "")
			require.Error(t, err, "token %q", bad)
			require.NotErrorIs(t, err, registry.ErrConflict)
		}
		require.Equal(t, registry.StateProvisioned, get(t, ctx, s, "a1").State)
		_, err = s.MarkRevoking(ctx, "a1", "c1")
		require.NoError(t, err)
		_, _, err = s.Readmit(ctx, "a1", "T1", "")
		require.ErrorIs(t, err, registry.ErrConflict)
		require.NoError(t, s.MarkRevoked(ctx, "a1", "c1"))
		_, _, err = s.Readmit(ctx, "a1", "T1", "")
		require.ErrorIs(t, err, registry.ErrConflict)
		require.Equal(t, registry.StateRevoked, get(t, ctx, s, "a1").State)
	})

	t.Run("RevokingBlocksProvisioning", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		_, err := s.MarkRevoking(ctx, "a1", "cert0")
		require.ErrorIs(t, err, registry.ErrConflict, "certificate guard")
		d, err := s.MarkRevoking(ctx, "a1", "")
		require.NoError(t, err)
		require.Equal(t, registry.StateRevoking, d.State)
		_, err = s.MarkRevoking(ctx, "a1", "")
		require.NoError(t, err, "repeating MarkRevoking is harmless")

		_, err = s.RecordProvisioned(ctx, "a1", "", registry.Certificate{ID: "c1"})
		require.ErrorIs(t, err, registry.ErrConflict)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		require.Equal(t, registry.StateRevoking, get(t, ctx, s, "a1").State, "PutAllowed does not cut a revocation short")

		require.NoError(t, s.MarkRevoked(ctx, "a1", ""))
		require.Equal(t, registry.StateRevoked, get(t, ctx, s, "a1").State)
		_, err = s.MarkRevoking(ctx, "a1", "")
		require.ErrorIs(t, err, registry.ErrConflict)
		_, err = s.MarkRevoking(ctx, "nobody", "")
		require.ErrorIs(t, err, registry.ErrNotFound)

		require.NoError(t, s.PutAllowed(ctx, "a1"))
		require.Equal(t, registry.StateAllowed, get(t, ctx, s, "a1").State)
	})

	t.Run("RevocationRecordsHistory", func(t *testing.T) {
		s, clock, ctx := setup(t)
		provisionedWithKey(t, ctx, s, "a1", "c1", keyA)
		_, _, err := s.Readmit(ctx, "a1", "T1", "ops")
		require.NoError(t, err)
		d, err := s.MarkRevoking(ctx, "a1", "c1")
		require.NoError(t, err)
		require.Equal(t, registry.StateRevoking, d.State)
		clock.Advance(time.Hour)
		require.NoError(t, s.MarkRevoked(ctx, "a1", "c1"))
		d = get(t, ctx, s, "a1")
		require.Equal(t, registry.StateRevoked, d.State)
		require.Equal(t, []string{"c1 " + registry.RetiredRevoked}, historyIDs(d))
		require.True(t, stampOf(clock).Equal(d.CertificateHistory[0].RetiredAt))

		// Listed again: allowed, no certificate or key, history kept.
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		d = get(t, ctx, s, "a1")
		require.Equal(t, registry.StateAllowed, d.State)
		require.Empty(t, d.CertificateID)
		require.Empty(t, d.PublicKeySHA256)
		require.Equal(t, []string{"c1 " + registry.RetiredRevoked}, historyIDs(d))
		_, err = s.RecordProvisioned(ctx, "a1", "", registry.Certificate{ID: "c2", PublicKeySHA256: keyB})
		require.NoError(t, err)
	})

	t.Run("HistoryIsBounded", func(t *testing.T) {
		s, _, ctx := setup(t)
		provisionedWithKey(t, ctx, s, "a1", "c0", keyA)
		n := registry.MaxHistory + 3
		for i := 1; i <= n; i++ {
			_, err := s.ReplaceCertificate(ctx, "a1", "", registry.Certificate{ID: fmt.Sprintf("c%d", i), PublicKeySHA256: keyA},
				registry.RetiredCertificate{CertificateID: fmt.Sprintf("c%d", i-1), Reason: registry.RetiredSameKey})
			require.NoError(t, err)
		}
		d := get(t, ctx, s, "a1")
		require.Len(t, d.CertificateHistory, registry.MaxHistory)
		assert.Equal(t, fmt.Sprintf("c%d", n-1), d.CertificateHistory[registry.MaxHistory-1].CertificateID)
		assert.Equal(t, fmt.Sprintf("c%d", n-registry.MaxHistory), d.CertificateHistory[0].CertificateID)
	})

	t.Run("RotationForgetsTheOldKey", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		notAfter := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		_, err := s.RecordProvisioned(ctx, "a1", "dev-a1", registry.Certificate{ID: "old", NotAfter: notAfter, PublicKeySHA256: keyA})
		require.NoError(t, err)
		_, err = s.RequestRotation(ctx, "a1", "r1", 0)
		require.NoError(t, err)
		_, err = s.IssueRotation(ctx, "a1", "r1", registry.Certificate{ID: "new", NotAfter: notAfter})
		require.NoError(t, err)
		d, err := s.CompleteRotation(ctx, "a1", "r1", "new")
		require.NoError(t, err)
		require.Empty(t, d.PublicKeySHA256, "the retired key must not count as the device's")
		require.Empty(t, get(t, ctx, s, "a1").PublicKeySHA256)
	})

	// An emergency revocation records why, who and when, moves the record
	// to revoking under the certificate guard, and holds the serial out:
	// PutAllowed leaves it revoked, a stale token does nothing, a new
	// token admits it again.
	t.Run("EmergencyRevocationHoldsOut", func(t *testing.T) {
		s, clock, ctx := setup(t)
		provisionedWithKey(t, ctx, s, "a1", "cert1", keyA)
		_, _, err := s.Readmit(ctx, "a1", "T1", "ops")
		require.NoError(t, err)
		d := get(t, ctx, s, "a1")
		require.Equal(t, registry.StateReadmitted, d.State)
		rev := registry.Revocation{Reason: "stolen from site 4", By: "alice"}

		_, err = s.MarkEmergencyRevoking(ctx, "a1", "other-cert", rev)
		require.ErrorIs(t, err, registry.ErrConflict, "certificate guard")
		_, err = s.MarkEmergencyRevoking(ctx, "nope", "", rev)
		require.ErrorIs(t, err, registry.ErrNotFound)
		_, err = s.MarkEmergencyRevoking(ctx, "a1", d.CertificateID, registry.Revocation{By: "alice"})
		require.ErrorContains(t, err, "empty reason")
		_, err = s.MarkEmergencyRevoking(ctx, "a1", d.CertificateID, registry.Revocation{Reason: "x"})
		require.ErrorContains(t, err, "empty by")

		d, err = s.MarkEmergencyRevoking(ctx, "a1", d.CertificateID, rev)
		require.NoError(t, err)
		assert.Equal(t, registry.StateRevoking, d.State)
		assert.True(t, d.RevokeEmergency)
		assert.True(t, d.HeldOut())
		assert.Equal(t, "stolen from site 4", d.RevokeReason)
		assert.Equal(t, "alice", d.RevokedBy)
		assert.True(t, d.RevokedAt.Equal(stampOf(clock)), "revokedAt %v", d.RevokedAt)
		assertDevice(t, d, get(t, ctx, s, "a1"))
		_, err = s.RecordProvisioned(ctx, "a1", "", registry.Certificate{ID: "cert9"})
		require.ErrorIs(t, err, registry.ErrConflict, "revoking refuses provisioning")

		require.NoError(t, s.MarkRevoked(ctx, "a1", d.CertificateID))
		require.NoError(t, s.PutAllowed(ctx, "a1"))
		d = get(t, ctx, s, "a1")
		assert.Equal(t, registry.StateRevoked, d.State, "listing a held-out serial does not admit it")
		assert.True(t, d.HeldOut())

		// Again on a revoked record: the record is updated, the state kept.
		clock.Advance(time.Minute)
		d, err = s.MarkEmergencyRevoking(ctx, "a1", "ignored-when-revoked", registry.Revocation{Reason: "again", By: "bob"})
		require.NoError(t, err)
		assert.Equal(t, registry.StateRevoked, d.State)
		assert.Equal(t, "bob", d.RevokedBy)

		_, changed, err := s.Readmit(ctx, "a1", "T1", "ops")
		require.NoError(t, err)
		assert.False(t, changed, "the token of an earlier re-admission does not lift the hold")
		assert.Equal(t, registry.StateRevoked, get(t, ctx, s, "a1").State)

		d, changed, err = s.Readmit(ctx, "a1", "T2", "carol")
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Equal(t, registry.StateAllowed, d.State)
		assert.False(t, d.RevokeEmergency)
		assert.False(t, d.HeldOut())
		assert.Empty(t, d.CertificateID)
		assert.Equal(t, "T2", d.ReadmitToken)
		assert.Equal(t, "carol", d.ReadmittedBy)
		assert.Equal(t, "again", d.RevokeReason, "the revocation stays on record")
		assertDevice(t, d, get(t, ctx, s, "a1"))
		_, err = s.RecordProvisioned(ctx, "a1", "dev-a1", registry.Certificate{ID: "cert2"})
		require.NoError(t, err, "re-admitted: it may provision")
	})

	// ReadmitAdmitted re-admits as Readmit does but never lifts an
	// emergency hold, whatever the token.
	t.Run("ReadmitAdmittedRefusesHeldOut", func(t *testing.T) {
		s, _, ctx := setup(t)
		provisionedWithKey(t, ctx, s, "a1", "c1", keyA)
		d, changed, err := s.ReadmitAdmitted(ctx, "a1", "T1", "ops")
		require.NoError(t, err)
		require.True(t, changed)
		require.Equal(t, registry.StateReadmitted, d.State)
		_, err = s.MarkEmergencyRevoking(ctx, "a1", "c1", registry.Revocation{Reason: "stolen", By: "alice"})
		require.NoError(t, err)
		for _, revoked := range []bool{false, true} {
			if revoked {
				require.NoError(t, s.MarkRevoked(ctx, "a1", "c1"))
			}
			before := get(t, ctx, s, "a1")
			_, _, err = s.ReadmitAdmitted(ctx, "a1", "T2", "ops")
			require.ErrorIs(t, err, registry.ErrHeldOut)
			require.ErrorIs(t, err, registry.ErrConflict)
			require.ErrorContains(t, err, "stolen")
			after := get(t, ctx, s, "a1")
			assertDevice(t, before, after)
			require.True(t, after.HeldOut())
			require.False(t, after.ReadmitTokenUsed("T2"), "the refused token stays unused")
		}
		_, changed, err = s.Readmit(ctx, "a1", "T2", "ops")
		require.NoError(t, err)
		require.True(t, changed, "the allowlist's Readmit lifts it")
	})

	// An emergency revocation of an allowed serial (never provisioned).
	t.Run("EmergencyRevocationOfAllowed", func(t *testing.T) {
		s, _, ctx := setup(t)
		require.NoError(t, s.PutAllowed(ctx, "a2"))
		d, err := s.MarkEmergencyRevoking(ctx, "a2", "", registry.Revocation{Reason: "r", By: "b"})
		require.NoError(t, err)
		assert.Equal(t, registry.StateRevoking, d.State)
		require.NoError(t, s.MarkRevoked(ctx, "a2", ""))
		require.NoError(t, s.PutAllowed(ctx, "a2"))
		assert.Equal(t, registry.StateRevoked, get(t, ctx, s, "a2").State)
	})
}

// readmitAndProvision re-admits the provisioned serial with token and
// provisions it again with certificate next (replacing prev).
func readmitAndProvision(t *testing.T, ctx context.Context, s registry.Store, serial, token, prev, next string) registry.Device {
	t.Helper()
	d, changed, err := s.Readmit(ctx, serial, token, "ops")
	require.NoError(t, err)
	require.True(t, changed, "token %s", token)
	require.Equal(t, registry.StateReadmitted, d.State)
	d, err = s.ReplaceCertificate(ctx, serial, "", registry.Certificate{ID: next, PublicKeySHA256: keyB},
		registry.RetiredCertificate{CertificateID: prev, Reason: registry.RetiredReadmitted})
	require.NoError(t, err)
	require.Equal(t, registry.StateProvisioned, d.State)
	return d
}
