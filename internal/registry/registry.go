// Package registry is the device registry: one record per device serial in a
// DynamoDB table (serial → state, thing name, certificate id, timestamps).
// Devices are data: admitting or revoking a device changes records, never
// cloud resources.
package registry

import (
	"errors"
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
