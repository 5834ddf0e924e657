package registry

import (
	"context"
	"fmt"
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
	case d.State == StateRevoked:
		d.State = StateAllowed
		d.CertificateID = ""
		d.ThingName = ""
		d.CertNotAfter = time.Time{}
		clearRotation(&d)
		d.UpdatedAt = now
		m.devices[serial] = d
	}
	return nil
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
	_, err := m.update(serial, func(d *Device, _ time.Time) (bool, error) {
		if d.State == StateRevoked {
			return false, nil
		}
		if d.CertificateID != expectedCertificateID {
			return false, fmt.Errorf("%w: %s has certificate %q, expected %q", ErrConflict, serial, d.CertificateID, expectedCertificateID)
		}
		d.State = StateRevoked
		return true, nil
	})
	return err
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
