package registry

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// RecordProvisioned implements Store.
func (m *Memory) RecordProvisioned(ctx context.Context, serial, thingName string, cert Certificate) (Device, error) {
	if err := check(ctx, serial); err != nil {
		return Device{}, err
	}
	if cert.ID == "" {
		return Device{}, fmt.Errorf("registry: mark %s provisioned: empty certificate id", serial)
	}
	return m.update(serial, func(d *Device, _ time.Time) (bool, error) {
		switch {
		case d.State == StateAllowed:
		case d.State == StateProvisioned && d.CertificateID == cert.ID:
		default:
			return false, fmt.Errorf("%w: %s is %s with certificate %q", ErrConflict, serial, d.State, d.CertificateID)
		}
		d.State = StateProvisioned
		d.CertificateID = cert.ID
		d.CertNotAfter = stored(cert.NotAfter)
		d.PublicKeySHA256 = cert.PublicKeySHA256
		if thingName != "" {
			d.ThingName = thingName
		}
		return true, nil
	})
}

// stored is t as the registry keeps it (UTC, whole seconds; zero stays zero).
func stored(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Second)
}

// ExpiringBefore implements Store. The cursor is "<certNotAfter>|<serial>"
// of the last record of the previous page.
func (m *Memory) ExpiringBefore(ctx context.Context, t time.Time, cursor string, limit int) (Page, error) {
	limit, after, err := expiryPageArgs(ctx, limit, cursor)
	if err != nil {
		return Page{}, err
	}
	before := FormatTime(t)
	m.mu.Lock()
	var hits []Device
	for _, d := range m.devices {
		if d.State != StateProvisioned || d.CertNotAfter.IsZero() {
			continue
		}
		if FormatTime(d.CertNotAfter) >= before {
			continue
		}
		if cursor != "" && !after.less(expiryKey{FormatTime(d.CertNotAfter), d.Serial}) {
			continue
		}
		hits = append(hits, d)
	}
	m.mu.Unlock()
	sort.Slice(hits, func(i, j int) bool { return keyOf(hits[i]).less(keyOf(hits[j])) })
	page := Page{Devices: hits}
	if len(hits) > limit {
		page.Devices = hits[:limit]
		page.Next = keyOf(hits[limit-1]).String()
	}
	return page, nil
}

// expiryKey is a position in the expiry index.
type expiryKey struct{ notAfter, serial string }

func keyOf(d Device) expiryKey { return expiryKey{FormatTime(d.CertNotAfter), d.Serial} }

func (k expiryKey) less(o expiryKey) bool {
	if k.notAfter != o.notAfter {
		return k.notAfter < o.notAfter
	}
	return k.serial < o.serial
}

func (k expiryKey) String() string { return k.notAfter + "|" + k.serial }

// expiryPageArgs checks ExpiringBefore's arguments: ctx, the page size
// (see pageSize) and the cursor.
func expiryPageArgs(ctx context.Context, limit int, cursor string) (int, expiryKey, error) {
	limit, err := pageSize(ctx, limit)
	if err != nil {
		return 0, expiryKey{}, err
	}
	after, err := parseExpiryCursor(cursor)
	if err != nil {
		return 0, expiryKey{}, err
	}
	return limit, after, nil
}

func parseExpiryCursor(cursor string) (expiryKey, error) {
	if cursor == "" {
		return expiryKey{}, nil
	}
	notAfter, serial, ok := strings.Cut(cursor, "|")
	if !ok || serial == "" {
		return expiryKey{}, fmt.Errorf("registry: invalid expiry cursor %q", cursor)
	}
	if _, err := time.Parse(time.RFC3339, notAfter); err != nil {
		return expiryKey{}, fmt.Errorf("registry: invalid expiry cursor %q: %w", cursor, err)
	}
	return expiryKey{notAfter, serial}, nil
}

// RequestRotation implements Store.
func (m *Memory) RequestRotation(ctx context.Context, serial, rotationID string, resendAfter time.Duration) (Device, error) {
	if err := checkRotation(ctx, serial, rotationID); err != nil {
		return Device{}, err
	}
	return m.update(serial, func(d *Device, now time.Time) (bool, error) {
		if d.State != StateProvisioned {
			return false, fmt.Errorf("%w: %s is %s", ErrConflict, serial, d.State)
		}
		if d.RotationID != "" {
			if now.Sub(d.RotationRequestedAt) < resendAfter {
				return false, fmt.Errorf("%w: %s has rotation %s requested at %s", ErrRotationPending, serial, d.RotationID, FormatTime(d.RotationRequestedAt))
			}
		} else {
			d.RotationID = rotationID
			d.RotationState = RotationRequested
		}
		d.RotationRequestedAt = now
		return true, nil
	})
}

// IssueRotation implements Store.
func (m *Memory) IssueRotation(ctx context.Context, serial, rotationID string, cert Certificate) (Device, error) {
	if err := checkRotation(ctx, serial, rotationID); err != nil {
		return Device{}, err
	}
	if err := checkCert(cert, true); err != nil {
		return Device{}, err
	}
	return m.update(serial, func(d *Device, _ time.Time) (bool, error) {
		if d.State != StateProvisioned || d.RotationID != rotationID {
			return false, issueConflict(*d, rotationID)
		}
		switch {
		case d.RotationState == RotationIssued && d.RotationCertID == cert.ID:
			return false, nil
		case d.RotationState != RotationRequested:
			return false, issueConflict(*d, rotationID)
		}
		d.RotationState = RotationIssued
		d.RotationCertID = cert.ID
		d.RotationCertNotAfter = stored(cert.NotAfter)
		return true, nil
	})
}

// CompleteRotation implements Store.
func (m *Memory) CompleteRotation(ctx context.Context, serial, rotationID, certID string) (Device, error) {
	if err := checkRotation(ctx, serial, rotationID); err != nil {
		return Device{}, err
	}
	if certID == "" {
		return Device{}, errors.New("registry: complete rotation: empty certificate id")
	}
	return m.update(serial, func(d *Device, _ time.Time) (bool, error) {
		if completedAlready(*d, rotationID, certID) {
			return false, nil
		}
		if d.State != StateProvisioned || d.RotationID != rotationID || d.RotationState != RotationIssued || d.RotationCertID != certID {
			return false, completeConflict(*d, rotationID, certID)
		}
		d.RetiredCertificateID = d.CertificateID
		d.CertificateID = d.RotationCertID
		d.CertNotAfter = d.RotationCertNotAfter
		// The new certificate has a new key the registry does not know:
		// the old key must no longer count as the device's.
		d.PublicKeySHA256 = ""
		d.LastRotationID = rotationID
		d.LastRotationStatus = RotationCompleted
		clearRotation(d)
		return true, nil
	})
}

// FailRotation implements Store.
func (m *Memory) FailRotation(ctx context.Context, serial, rotationID string) (Device, error) {
	if err := checkRotation(ctx, serial, rotationID); err != nil {
		return Device{}, err
	}
	return m.update(serial, func(d *Device, _ time.Time) (bool, error) {
		if failedAlready(*d, rotationID) {
			return false, nil
		}
		if d.RotationID != rotationID {
			return false, fmt.Errorf("%w: %s has no rotation %s in progress (current %q)", ErrConflict, serial, rotationID, d.RotationID)
		}
		d.RetiredCertificateID = d.RotationCertID // empty if none was issued
		d.LastRotationID = rotationID
		d.LastRotationStatus = RotationFailed
		clearRotation(d)
		return true, nil
	})
}

func clearRotation(d *Device) {
	d.RotationID = ""
	d.RotationState = ""
	d.RotationRequestedAt = time.Time{}
	d.RotationCertID = ""
	d.RotationCertNotAfter = time.Time{}
}

func completedAlready(d Device, rotationID, certID string) bool {
	return d.RotationID == "" && d.LastRotationID == rotationID && d.LastRotationStatus == RotationCompleted && d.CertificateID == certID
}

func failedAlready(d Device, rotationID string) bool {
	return d.RotationID == "" && d.LastRotationID == rotationID && d.LastRotationStatus == RotationFailed
}

func issueConflict(d Device, rotationID string) error {
	return fmt.Errorf("%w: %s (state %s) has rotation %q in state %q with certificate %q, not rotation %s awaiting a certificate",
		ErrConflict, d.Serial, d.State, d.RotationID, d.RotationState, d.RotationCertID, rotationID)
}

func completeConflict(d Device, rotationID, certID string) error {
	return fmt.Errorf("%w: %s (state %s) has rotation %q in state %q with certificate %q, not rotation %s with certificate %s",
		ErrConflict, d.Serial, d.State, d.RotationID, d.RotationState, d.RotationCertID, rotationID, certID)
}

func checkRotation(ctx context.Context, serial, rotationID string) error {
	if err := check(ctx, serial); err != nil {
		return err
	}
	if rotationID == "" {
		return errors.New("registry: empty rotation id")
	}
	return nil
}

func checkCert(cert Certificate, needExpiry bool) error {
	if cert.ID == "" {
		return errors.New("registry: empty certificate id")
	}
	if needExpiry && cert.NotAfter.IsZero() {
		return fmt.Errorf("registry: certificate %s: unknown expiry", cert.ID)
	}
	return nil
}
