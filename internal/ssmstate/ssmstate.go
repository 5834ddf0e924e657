// Package ssmstate keeps the "SSM on demand" state of each device in the
// device registry table, next to the registry's own attributes: one item per
// serial (partition key registry.PartitionKey), SSM attributes prefixed
// "ssm". It never creates a registry item: a device must be in the registry
// before SSM can be toggled for it. The activation code is never stored.
//
// Implementations: DynamoDB (NewDynamoDB, conditional UpdateItem on the
// registry table) and Memory (NewMemory). Both pass the contract suite in
// package ssmstatetest.
package ssmstate

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// State is a device's SSM state as the cloud tracks it.
type State string

const (
	// StateInactive: no activation, no managed instance (also the state of a
	// registry item without SSM attributes).
	StateInactive State = "inactive"
	// StateActivating: the toggle reserved the device (RequestID set) and
	// created an activation (ActivationID, ActivationExpiry set once it
	// exists); the device has not registered yet.
	StateActivating State = "activating"
	// StateActive: the device registered; InstanceID is the managed
	// instance (mi-...).
	StateActive State = "active"
	// StateDeactivating: a deactivation is under way (or was interrupted;
	// running deactivate again finishes it).
	StateDeactivating State = "deactivating"
)

// Valid reports whether s is one of the known states.
func (s State) Valid() bool {
	switch s {
	case StateInactive, StateActivating, StateActive, StateDeactivating:
		return true
	}
	return false
}

// Attribute names in the registry table.
const (
	AttrState            = "ssmState"
	AttrActivationID     = "ssmActivationId"
	AttrActivationExpiry = "ssmActivationExpiry"
	AttrInstanceID       = "ssmInstanceId"
	AttrRequestID        = "ssmRequestId"
	AttrUpdatedAt        = "ssmUpdatedAt"
)

// Record is the SSM state of one device.
type Record struct {
	Serial string
	State  State
	// RequestID is the requestId of the last command sent to the device.
	RequestID string
	// ActivationID and ActivationExpiry describe the hybrid activation
	// (never its code).
	ActivationID     string
	ActivationExpiry time.Time
	// InstanceID is the managed instance id once the device registered.
	InstanceID string
	// UpdatedAt is the time of the last SSM change (zero if never).
	UpdatedAt time.Time
}

// ErrNotFound is returned when the registry has no item for the serial.
var ErrNotFound = errors.New("ssmstate: device not in registry")

// ErrConflict is returned when a conditional write finds the record in a
// state that does not allow the change.
var ErrConflict = errors.New("ssmstate: conditional write failed")

// Guard is the condition of Clear: every non-empty field must match the
// stored record.
type Guard struct {
	RequestID    string
	ActivationID string
	State        State
}

// Page is one page of ScanPending. Next is the cursor of the following page,
// empty on the last page. A page may be empty while Next is not.
type Page struct {
	Records []Record
	Next    string
}

// Store is the SSM state store. Every change is a conditional write on an
// existing registry item.
type Store interface {
	// Get returns the record of serial (State inactive when the item has
	// no SSM attributes), or ErrNotFound.
	Get(ctx context.Context, serial string) (Record, error)

	// Reserve moves an inactive device to activating with requestID and
	// no activation yet, so that concurrent activations cannot both create
	// one. ErrConflict if the device is not inactive, ErrNotFound if the
	// registry has no item.
	Reserve(ctx context.Context, serial, requestID string) (Record, error)

	// SetActivation records the activation of a reserved device: the
	// record must be activating with requestID (ErrConflict otherwise).
	SetActivation(ctx context.Context, serial, requestID, activationID string, expiry time.Time) (Record, error)

	// MarkActive records that the managed instance instanceID registered
	// with activationID: the record must hold activationID and be
	// activating, or active with the same instance (a repeated event).
	// ErrConflict otherwise.
	MarkActive(ctx context.Context, serial, activationID, instanceID string) (Record, error)

	// BeginDeactivation moves any existing record to deactivating with
	// requestID, keeping its activation and instance ids.
	BeginDeactivation(ctx context.Context, serial, requestID string) (Record, error)

	// Clear resets the record to inactive and removes the activation,
	// instance and request ids, provided guard matches (ErrConflict
	// otherwise). Registry attributes are left unchanged.
	Clear(ctx context.Context, serial string, guard Guard) error

	// ScanPending returns records in state activating or deactivating,
	// examining up to limit items (DefaultPageSize when limit <= 0) after
	// cursor.
	ScanPending(ctx context.Context, cursor string, limit int) (Page, error)
}

// DefaultPageSize is the number of items ScanPending examines per page.
const DefaultPageSize = 500

// ScanAllPending calls fn for every pending record of s.
func ScanAllPending(ctx context.Context, s Store, fn func(Record) error) error {
	cursor := ""
	for {
		page, err := s.ScanPending(ctx, cursor, 0)
		if err != nil {
			return err
		}
		for _, r := range page.Records {
			if err := fn(r); err != nil {
				return err
			}
		}
		if page.Next == "" {
			return nil
		}
		cursor = page.Next
	}
}

// Clock is the time source of a store.
type Clock func() time.Time

func stamp(now Clock) time.Time {
	if now == nil {
		now = time.Now
	}
	return now().UTC().Truncate(time.Second)
}

func check(ctx context.Context, serial string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if serial == "" {
		return errors.New("ssmstate: empty serial")
	}
	return nil
}

func checkID(field, v string) error {
	if v == "" {
		return fmt.Errorf("ssmstate: empty %s", field)
	}
	return nil
}
