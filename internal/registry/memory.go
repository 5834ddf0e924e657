package registry

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// Memory is an in-memory Store with the same semantics as the DynamoDB
// implementation. The local IoT Core simulator embeds it; tests use it
// where the backend does not matter. It is safe for concurrent use.
type Memory struct {
	opts options

	mu      sync.Mutex
	devices map[string]Device
	keys    []string // every serial in devices; sorted when sorted is true
	sorted  bool
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory registry.
func NewMemory(opts ...Option) *Memory {
	return &Memory{opts: buildOptions(opts), devices: map[string]Device{}, sorted: true}
}

// Len returns the number of records.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.devices)
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, serial string) (Device, error) {
	if err := check(ctx, serial); err != nil {
		return Device{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.devices[serial]
	if !ok {
		return Device{}, fmt.Errorf("%w: %s", ErrNotFound, serial)
	}
	return d, nil
}

// PutAllowed implements Store.
func (m *Memory) PutAllowed(ctx context.Context, serial string) error {
	if err := check(ctx, serial); err != nil {
		return err
	}
	now := m.opts.stamp()
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.devices[serial]
	switch {
	case !ok:
		m.devices[serial] = Device{Serial: serial, State: StateAllowed, CreatedAt: now, UpdatedAt: now}
		m.keys = append(m.keys, serial)
		if n := len(m.keys); n > 1 && m.keys[n-2] > serial {
			m.sorted = false
		}
	case d.State == StateRevoked && !d.RevokeEmergency:
		allowRevoked(&d)
		d.UpdatedAt = now
		m.devices[serial] = d
	}
	return nil
}

// allowRevoked makes a revoked record allowed again: no certificate, no
// thing, no rotation.
func allowRevoked(d *Device) {
	d.State = StateAllowed
	d.CertificateID = ""
	d.ThingName = ""
	d.CertNotAfter = time.Time{}
	d.PublicKeySHA256 = ""
	clearRotation(d)
}

// MarkProvisioned implements Store: RecordProvisioned with an unknown
// expiry.
func (m *Memory) MarkProvisioned(ctx context.Context, serial, certificateID, thingName string) (Device, error) {
	return m.RecordProvisioned(ctx, serial, thingName, Certificate{ID: certificateID})
}

// MarkRevoked implements Store.
func (m *Memory) MarkRevoked(ctx context.Context, serial, expectedCertificateID string) error {
	if err := check(ctx, serial); err != nil {
		return err
	}
	_, err := m.update(serial, func(d *Device, now time.Time) (bool, error) {
		if d.State == StateRevoked {
			return false, nil
		}
		if d.CertificateID != expectedCertificateID {
			return false, fmt.Errorf("%w: %s has certificate %q, expected %q", ErrConflict, serial, d.CertificateID, expectedCertificateID)
		}
		d.State = StateRevoked
		if d.CertificateID != "" {
			d.CertificateHistory = appendHistory(d.CertificateHistory, RetiredCertificate{CertificateID: d.CertificateID, RetiredAt: now, Reason: RetiredRevoked})
		}
		return true, nil
	})
	return err
}

// MarkEmergencyRevoking implements Store.
func (m *Memory) MarkEmergencyRevoking(ctx context.Context, serial, expectedCertificateID string, rev Revocation) (Device, error) {
	if err := check(ctx, serial); err != nil {
		return Device{}, err
	}
	if err := rev.Valid(); err != nil {
		return Device{}, err
	}
	return m.update(serial, func(d *Device, now time.Time) (bool, error) {
		switch {
		case d.State == StateRevoking || d.State == StateRevoked:
		case d.CertificateID != expectedCertificateID:
			return false, fmt.Errorf("%w: %s has certificate %q, expected %q", ErrConflict, serial, d.CertificateID, expectedCertificateID)
		default:
			d.State = StateRevoking
		}
		d.RevokeReason, d.RevokedBy, d.RevokedAt, d.RevokeEmergency = rev.Reason, rev.By, now, true
		return true, nil
	})
}

// MarkRevoking implements Store.
func (m *Memory) MarkRevoking(ctx context.Context, serial, expectedCertificateID string) (Device, error) {
	if err := check(ctx, serial); err != nil {
		return Device{}, err
	}
	return m.update(serial, func(d *Device, _ time.Time) (bool, error) {
		if d.CertificateID != expectedCertificateID {
			return false, fmt.Errorf("%w: %s has certificate %q, expected %q", ErrConflict, serial, d.CertificateID, expectedCertificateID)
		}
		switch {
		case d.State == StateRevoking:
			return false, nil
		case !d.State.Admitted():
			return false, fmt.Errorf("%w: %s is %s", ErrConflict, serial, d.State)
		}
		d.State = StateRevoking
		return true, nil
	})
}

// ReplaceCertificate implements Store.
func (m *Memory) ReplaceCertificate(ctx context.Context, serial, thingName string, cert Certificate, retired RetiredCertificate) (Device, error) {
	if err := checkReplace(ctx, serial, cert, retired); err != nil {
		return Device{}, err
	}
	return m.update(serial, func(d *Device, now time.Time) (bool, error) {
		if d.State == StateProvisioned && d.CertificateID == cert.ID {
			return false, nil
		}
		if (d.State != StateProvisioned && d.State != StateReadmitted) || d.CertificateID != retired.CertificateID {
			return false, fmt.Errorf("%w: %s is %s with certificate %q, not provisioned or readmitted with %q", ErrConflict, serial, d.State, d.CertificateID, retired.CertificateID)
		}
		d.State = StateProvisioned
		d.CertificateID = cert.ID
		d.CertNotAfter = stored(cert.NotAfter)
		d.PublicKeySHA256 = cert.PublicKeySHA256
		if thingName != "" {
			d.ThingName = thingName
		}
		clearRotation(d)
		retired.RetiredAt = now
		d.CertificateHistory = appendHistory(d.CertificateHistory, retired)
		return true, nil
	})
}

// Readmit implements Store.
func (m *Memory) Readmit(ctx context.Context, serial, token, by string) (Device, bool, error) {
	return m.readmit(ctx, serial, token, by, true)
}

// ReadmitAdmitted implements Store.
func (m *Memory) ReadmitAdmitted(ctx context.Context, serial, token, by string) (Device, bool, error) {
	return m.readmit(ctx, serial, token, by, false)
}

// readmit is Readmit; liftHold false refuses a held-out record.
func (m *Memory) readmit(ctx context.Context, serial, token, by string, liftHold bool) (Device, bool, error) {
	if err := checkReadmit(ctx, serial, token); err != nil {
		return Device{}, false, err
	}
	changed := false
	d, err := m.update(serial, func(d *Device, now time.Time) (bool, error) {
		if d.HeldOut() && !liftHold {
			return false, heldOut(*d)
		}
		held := d.State == StateRevoked && d.RevokeEmergency
		if !d.State.Admitted() && !held {
			return false, fmt.Errorf("%w: %s is %s; list it on the allowlist again before re-admitting it", ErrConflict, serial, d.State)
		}
		if d.ReadmitTokenUsed(token) {
			return false, nil
		}
		if held {
			allowRevoked(d)
			d.RevokeEmergency = false
		} else {
			d.State = readmittedState(d.State)
		}
		d.ReadmitTokens = addTokens(d.ReadmitTokens, token, d.ReadmitToken)
		d.ReadmitToken, d.ReadmittedBy, d.ReadmittedAt = token, by, now
		changed = true
		return true, nil
	})
	return d, changed, err
}

// update changes serial's record under the lock. change edits *d and
// reports whether it changed it; a changed record is stored with
// UpdatedAt now (stamped before the lock is taken). The record is
// returned as it is after the call; an error from change leaves it as it
// was.
func (m *Memory) update(serial string, change func(d *Device, now time.Time) (changed bool, err error)) (Device, error) {
	now := m.opts.stamp()
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.devices[serial]
	if !ok {
		return Device{}, fmt.Errorf("%w: %s", ErrNotFound, serial)
	}
	// Never edit the stored slices.
	d.CertificateHistory = slices.Clone(d.CertificateHistory)
	d.ReadmitTokens = slices.Clone(d.ReadmitTokens)
	changed, err := change(&d, now)
	if err != nil {
		return Device{}, err
	}
	if changed {
		d.UpdatedAt = now
		m.devices[serial] = d
	}
	return d, nil
}

// Scan implements Store. Records come in serial order; the cursor is the
// last serial of the previous page.
func (m *Memory) Scan(ctx context.Context, cursor string, limit int) (Page, error) {
	limit, err := pageSize(ctx, limit)
	if err != nil {
		return Page{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.sorted {
		sort.Strings(m.keys)
		m.sorted = true
	}
	start := 0
	if cursor != "" {
		start = sort.Search(len(m.keys), func(i int) bool { return m.keys[i] > cursor })
	}
	end := min(start+limit, len(m.keys))
	page := Page{Devices: make([]Device, 0, end-start)}
	for _, k := range m.keys[start:end] {
		page.Devices = append(page.Devices, m.devices[k])
	}
	if end < len(m.keys) {
		page.Next = m.keys[end-1]
	}
	return page, nil
}

// pageSize checks ctx and returns limit, or DefaultPageSize when limit is
// not positive.
func pageSize(ctx context.Context, limit int) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if limit <= 0 {
		return DefaultPageSize, nil
	}
	return limit, nil
}

func check(ctx context.Context, serial string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if serial == "" {
		return errEmptySerial
	}
	return nil
}

// appendHistory appends e to h, keeping the newest MaxHistory entries.
func appendHistory(h []RetiredCertificate, e RetiredCertificate) []RetiredCertificate {
	h = append(h, e)
	if len(h) > MaxHistory {
		h = h[len(h)-MaxHistory:]
	}
	return h
}

// heldOut is ErrHeldOut for d, with the revocation's record.
func heldOut(d Device) error {
	return fmt.Errorf("%w: %s was revoked in an emergency (reason %q, by %s, at %s); only a readmit=TOKEN line in the allowlist, with a token never used for this serial, admits it again",
		ErrHeldOut, d.Serial, d.RevokeReason, d.RevokedBy, FormatTime(d.RevokedAt))
}

// addTokens adds the non-empty tokens to the sorted set set.
func addTokens(set []string, tokens ...string) []string {
	for _, t := range tokens {
		if i, found := slices.BinarySearch(set, t); t != "" && !found {
			set = slices.Insert(set, i, t)
		}
	}
	return set
}

// readmittedState is the state a re-admission moves a record in state s
// to: an allowed record may provision anyway and stays allowed.
func readmittedState(s State) State {
	if s == StateAllowed {
		return StateAllowed
	}
	return StateReadmitted
}

func checkReadmit(ctx context.Context, serial, token string) error {
	if err := check(ctx, serial); err != nil {
		return err
	}
	if !ValidReadmitToken(token) {
		return fmt.Errorf("registry: re-admit %s: token %q must be 1 to 64 characters of [A-Za-z0-9._:-]", serial, truncate(token, 80))
	}
	return nil
}

func checkReplace(ctx context.Context, serial string, cert Certificate, retired RetiredCertificate) error {
	if err := check(ctx, serial); err != nil {
		return err
	}
	if cert.ID == "" || retired.CertificateID == "" {
		return fmt.Errorf("registry: replace certificate of %s: empty certificate id", serial)
	}
	if cert.ID == retired.CertificateID {
		return fmt.Errorf("registry: replace certificate of %s: certificate %s replaces itself", serial, cert.ID)
	}
	if retired.Reason == "" {
		return fmt.Errorf("registry: replace certificate of %s: empty reason", serial)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
