package ssmstate

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// Devices tells whether the registry holds a device; registry.Store
// implements it.
type Devices interface {
	Get(ctx context.Context, serial string) (registry.Device, error)
}

// Memory is an in-memory Store over an in-memory registry, with the same
// semantics as DynamoDB. It is safe for concurrent use.
type Memory struct {
	devices Devices
	now     Clock

	mu      sync.Mutex
	records map[string]Record
}

var _ Store = (*Memory)(nil)

// NewMemory returns a store for the devices of reg. now may be nil
// (time.Now).
func NewMemory(reg Devices, now Clock) *Memory {
	return &Memory{devices: reg, now: now, records: map[string]Record{}}
}

func (m *Memory) exists(ctx context.Context, serial string) error {
	if _, err := m.devices.Get(ctx, serial); err != nil {
		if errors.Is(err, registry.ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrNotFound, serial)
		}
		return fmt.Errorf("ssmstate: %w", err)
	}
	return nil
}

// get returns the record of serial (inactive if none); m.mu must be held.
func (m *Memory) get(serial string) Record {
	r, ok := m.records[serial]
	if !ok {
		return Record{Serial: serial, State: StateInactive}
	}
	return r
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, serial string) (Record, error) {
	if err := check(ctx, serial); err != nil {
		return Record{}, err
	}
	if err := m.exists(ctx, serial); err != nil {
		return Record{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.get(serial), nil
}

// update applies fn to the record of serial under the lock; fn returns
// ErrConflict (wrapped) to refuse.
func (m *Memory) update(ctx context.Context, serial string, fn func(r *Record) error) (Record, error) {
	if err := check(ctx, serial); err != nil {
		return Record{}, err
	}
	if err := m.exists(ctx, serial); err != nil {
		return Record{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.get(serial)
	if err := fn(&r); err != nil {
		return Record{}, err
	}
	r.UpdatedAt = stamp(m.now)
	m.records[serial] = r
	return r, nil
}

func conflict(serial string, r Record, what string) error {
	return fmt.Errorf("%w: %s is %s: %s", ErrConflict, serial, r.State, what)
}

// Reserve implements Store.
func (m *Memory) Reserve(ctx context.Context, serial, requestID string) (Record, error) {
	if err := checkID("request id", requestID); err != nil {
		return Record{}, err
	}
	return m.update(ctx, serial, func(r *Record) error {
		if r.State != StateInactive {
			return conflict(serial, *r, "not inactive")
		}
		*r = Record{Serial: serial, State: StateActivating, RequestID: requestID}
		return nil
	})
}

// SetActivation implements Store.
func (m *Memory) SetActivation(ctx context.Context, serial, requestID, activationID string, expiry time.Time) (Record, error) {
	if err := checkID("request id", requestID); err != nil {
		return Record{}, err
	}
	if err := checkID("activation id", activationID); err != nil {
		return Record{}, err
	}
	return m.update(ctx, serial, func(r *Record) error {
		if r.State != StateActivating || r.RequestID != requestID {
			return conflict(serial, *r, "not reserved by request "+requestID)
		}
		r.ActivationID = activationID
		r.ActivationExpiry = expiry.UTC().Truncate(time.Second)
		return nil
	})
}

// MarkActive implements Store.
func (m *Memory) MarkActive(ctx context.Context, serial, activationID, instanceID string) (Record, error) {
	if err := checkID("activation id", activationID); err != nil {
		return Record{}, err
	}
	if err := checkID("instance id", instanceID); err != nil {
		return Record{}, err
	}
	return m.update(ctx, serial, func(r *Record) error {
		ok := r.ActivationID == activationID &&
			(r.State == StateActivating || (r.State == StateActive && r.InstanceID == instanceID))
		if !ok {
			return conflict(serial, *r, "activation "+activationID+" / instance "+instanceID+" not expected")
		}
		r.State = StateActive
		r.InstanceID = instanceID
		return nil
	})
}

// BeginDeactivation implements Store.
func (m *Memory) BeginDeactivation(ctx context.Context, serial, requestID string) (Record, error) {
	if err := checkID("request id", requestID); err != nil {
		return Record{}, err
	}
	return m.update(ctx, serial, func(r *Record) error {
		r.State = StateDeactivating
		r.RequestID = requestID
		return nil
	})
}

// Clear implements Store.
func (m *Memory) Clear(ctx context.Context, serial string, guard Guard) error {
	_, err := m.update(ctx, serial, func(r *Record) error {
		if (guard.RequestID != "" && r.RequestID != guard.RequestID) ||
			(guard.ActivationID != "" && r.ActivationID != guard.ActivationID) ||
			(guard.State != "" && r.State != guard.State) {
			return conflict(serial, *r, fmt.Sprintf("guard %+v does not match", guard))
		}
		*r = Record{Serial: serial, State: StateInactive}
		return nil
	})
	return err
}

// ScanPending implements Store. The cursor is the last serial examined.
func (m *Memory) ScanPending(ctx context.Context, cursor string, limit int) (Page, error) {
	if err := ctx.Err(); err != nil {
		return Page{}, err
	}
	if limit <= 0 {
		limit = DefaultPageSize
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.records))
	for k := range m.records {
		if k > cursor {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var page Page
	for i, k := range keys {
		if i == limit {
			page.Next = keys[i-1]
			break
		}
		if r := m.records[k]; r.State == StateActivating || r.State == StateDeactivating {
			page.Records = append(page.Records, r)
		}
	}
	return page, nil
}
