// Package registry is the device registry: one record per device serial in a
// DynamoDB table (serial → state, thing name, certificate id, timestamps).
// Devices are data: admitting or revoking a device changes records, never
// cloud resources.
package registry

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// State is a device's admission state.
type State string

const (
	// StateAllowed: the serial is on the allowlist and may provision.
	StateAllowed State = "allowed"
	// StateProvisioned: the device has provisioned (certificate issued).
	StateProvisioned State = "provisioned"
	// StateRevoked: the serial was removed from the allowlist; its
	// certificate is revoked and its thing deleted.
	StateRevoked State = "revoked"
)

// ErrNotFound is returned when no record exists for a serial.
var ErrNotFound = errors.New("registry: device not found")

// ErrConflict is returned when a conditional write finds the record in a
// state that does not allow the change (e.g. provisioning a revoked serial).
var ErrConflict = errors.New("registry: conditional write failed")

// Device is one registry record.
type Device struct {
	Serial        string    `dynamodbav:"serial"`
	State         State     `dynamodbav:"state"`
	ThingName     string    `dynamodbav:"thingName,omitempty"`
	CertificateID string    `dynamodbav:"certificateId,omitempty"`
	CreatedAt     time.Time `dynamodbav:"createdAt"`
	UpdatedAt     time.Time `dynamodbav:"updatedAt"`
}

// Attribute names of a registry record in the DynamoDB table. PartitionKey
// is the table's only key (type S); the Pulumi program declares the same.
const (
	PartitionKey      = "serial"
	AttrState         = "state"
	AttrThingName     = "thingName"
	AttrCertificateID = "certificateId"
	AttrCreatedAt     = "createdAt"
	AttrUpdatedAt     = "updatedAt"
)

// Admitted reports whether a device in state s may provision: its serial is
// on the allowlist (allowed, or provisioned already).
func (s State) Admitted() bool { return s == StateAllowed || s == StateProvisioned }

// Valid reports whether s is one of the known states.
func (s State) Valid() bool {
	return s == StateAllowed || s == StateProvisioned || s == StateRevoked
}

// DefaultPageSize is the page size Scan uses when limit is not positive.
const DefaultPageSize = 500

// Page is one page of a Scan. Next is the cursor of the following page,
// empty on the last page.
type Page struct {
	Devices []Device
	Next    string
}

// Store is the registry as the Lambdas and the local IoT Core use it. Every
// change is a conditional write, so concurrent writers (the hook and the
// allowlist sync) cannot move a record into a state the rules forbid.
//
// Implementations: DynamoDB (NewDynamoDB) and Memory (NewMemory). Both pass
// the contract suite in package registrytest.
type Store interface {
	// Get returns the record of serial, or ErrNotFound.
	Get(ctx context.Context, serial string) (Device, error)

	// PutAllowed admits serial: it creates the record in state allowed, or
	// re-admits a revoked record (state allowed, certificate id cleared,
	// createdAt kept). A record that is already allowed or provisioned is
	// left unchanged and PutAllowed returns nil, so it is idempotent.
	PutAllowed(ctx context.Context, serial string) error

	// MarkProvisioned records that serial provisioned with certificateID:
	// state provisioned, certificate id set, thing name set when thingName
	// is not empty. Only a record in state allowed or provisioned may
	// change; recording the same certificate again is a harmless repeat (a
	// retried hook). It returns the record after the write, ErrNotFound if
	// serial has no record, and an error wrapping ErrConflict if the record
	// is revoked.
	MarkProvisioned(ctx context.Context, serial, certificateID, thingName string) (Device, error)

	// MarkRevoked sets serial's state to revoked, provided its certificate
	// id still equals expectedCertificateID (empty: the record has none).
	// The guard makes a revocation fail with ErrConflict, rather than
	// silently strand an active certificate, when the device provisioned
	// again after the caller read the record. Revoking a record that is
	// already revoked returns nil; a missing record returns ErrNotFound.
	MarkRevoked(ctx context.Context, serial, expectedCertificateID string) error

	// Scan returns up to limit records (DefaultPageSize when limit <= 0)
	// after cursor (empty: from the start), in no particular order; pass
	// Page.Next to continue. Records written during a scan may or may not
	// appear.
	Scan(ctx context.Context, cursor string, limit int) (Page, error)
}

// Scanner is the part of Store that ScanAll needs.
type Scanner interface {
	Scan(ctx context.Context, cursor string, limit int) (Page, error)
}

// ScanAll calls fn for every record of s, page by page. It stops at the
// first error of the store or of fn.
func ScanAll(ctx context.Context, s Scanner, fn func(Device) error) error {
	cursor := ""
	for {
		page, err := s.Scan(ctx, cursor, 0)
		if err != nil {
			return fmt.Errorf("registry scan: %w", err)
		}
		for _, d := range page.Devices {
			if err := fn(d); err != nil {
				return err
			}
		}
		if page.Next == "" {
			return nil
		}
		cursor = page.Next
	}
}
