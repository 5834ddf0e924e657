// Package registry is the device registry: one record per device serial in a
// DynamoDB table (serial → state, thing name, certificate id, timestamps).
// Devices are data: admitting or revoking a device changes records, never
// cloud resources.
//
// States and their transitions (every one a conditional write):
//
//	(none) ──PutAllowed──▶ allowed ──RecordProvisioned──▶ provisioned
//	provisioned ──Readmit(token never used for the serial)──▶ readmitted ──ReplaceCertificate──▶ provisioned
//	provisioned ──ReplaceCertificate (same public key)──▶ provisioned
//	allowed|provisioned|readmitted ──MarkRevoking──▶ revoking ──MarkRevoked──▶ revoked
//	revoked ──PutAllowed──▶ allowed (not after an emergency revocation)
//	allowed|provisioned|readmitted ──MarkEmergencyRevoking──▶ revoking (emergency)
//	revoked (emergency) ──Readmit(token never used for the serial)──▶ allowed
//
// The pre-provisioning hook admits allowed serials, readmitted ones (once)
// and a provisioned serial only when the new certificate carries the
// recorded public key (a retry after a lost RegisterThing answer); it
// denies revoking and revoked serials. An emergency revocation (the revoke
// Lambda, MarkEmergencyRevoking) records why, by whom and when, and holds
// the serial out: listing it again does not admit it, only a re-admission
// with a token never used for that serial does (the record keeps every
// token used, ReadmitTokens). A certificate the record stops
// naming goes into the record's certificate history with when and why.
package registry

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"
)

// State is a device's admission state.
type State string

const (
	// StateAllowed: the serial is on the allowlist and may provision.
	StateAllowed State = "allowed"
	// StateProvisioned: the device has provisioned (certificate issued).
	// Provisioning again is denied unless the new certificate has the
	// recorded public key.
	StateProvisioned State = "provisioned"
	// StateReadmitted: an operator re-admitted a provisioned serial
	// (allowlist annotation readmit=TOKEN, or Readmit): its next
	// provisioning replaces the recorded certificate, once.
	StateReadmitted State = "readmitted"
	// StateRevoking: the allowlist sync started revoking the device; the
	// hook denies it. The sync finishes the revocation (also after a
	// crash) before the serial can be admitted again.
	StateRevoking State = "revoking"
	// StateRevoked: the serial was removed from the allowlist; its
	// certificate is revoked and its thing deleted.
	StateRevoked State = "revoked"
)

// Why a certificate left a record (RetiredCertificate.Reason).
const (
	// RetiredSameKey: the device provisioned again with the same key (its
	// RegisterThing answer was lost); the older certificate was revoked.
	RetiredSameKey = "same-key retry"
	// RetiredReadmitted: a re-admitted device provisioned with a new key;
	// the older certificate was revoked.
	RetiredReadmitted = "readmitted"
	// RetiredRevoked: the device was revoked.
	RetiredRevoked = "revoked"
)

// RetiredCertificate is an entry of a record's certificate history.
type RetiredCertificate struct {
	CertificateID string    `dynamodbav:"certificateId"`
	RetiredAt     time.Time `dynamodbav:"retiredAt"`
	Reason        string    `dynamodbav:"reason"`
}

// readmitTokenRE is the syntax of a re-admission token (contracts.md).
var readmitTokenRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

// ValidReadmitToken reports whether token may name a re-admission: 1 to
// 64 characters of [A-Za-z0-9._:-] (e.g. a ticket id or a date).
func ValidReadmitToken(token string) bool { return readmitTokenRE.MatchString(token) }

// MaxHistory bounds a record's certificate history; the oldest entries
// are dropped beyond it.
const MaxHistory = 20

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
	// CertNotAfter is the expiry of CertificateID (zero: unknown). A
	// provisioned device with a known expiry is in the expiry index.
	CertNotAfter time.Time `dynamodbav:"certNotAfter,omitempty"`
	// PublicKeySHA256 is the SHA-256 (hex) of the SubjectPublicKeyInfo of
	// CertificateID's public key, as recorded at provisioning; empty when
	// unknown (then no provisioning counts as a same-key retry).
	PublicKeySHA256 string `dynamodbav:"publicKeySha256,omitempty"`
	// CertificateHistory lists the certificates the record named before,
	// oldest first (at most MaxHistory).
	CertificateHistory []RetiredCertificate `dynamodbav:"certificateHistory,omitempty"`
	// The last re-admission: its token, who made it and when.
	ReadmitToken string    `dynamodbav:"readmitToken,omitempty"`
	ReadmittedBy string    `dynamodbav:"readmittedBy,omitempty"`
	ReadmittedAt time.Time `dynamodbav:"readmittedAt,omitempty"`
	// ReadmitTokens is every token a re-admission of this serial used
	// (a DynamoDB string set; sorted here). A token is acted on once per
	// serial, ever: re-admitting with a token in the set (or with
	// ReadmitToken, for records written before the set existed) changes
	// nothing, so bringing an old readmit line back (a git revert) neither
	// re-admits a provisioned device nor lifts an emergency hold.
	ReadmitTokens []string `dynamodbav:"readmitTokens,stringset,omitempty"`

	// The last emergency revocation (MarkEmergencyRevoking): why, who
	// asked and when. RevokeEmergency holds the serial out while the
	// record is revoking or revoked: PutAllowed leaves it, and only
	// Readmit with a token never used for the serial admits it again
	// (which clears the flag and keeps the rest as the record of what
	// happened). ReadmitAdmitted never does.
	RevokeReason    string    `dynamodbav:"revokeReason,omitempty"`
	RevokedBy       string    `dynamodbav:"revokedBy,omitempty"`
	RevokedAt       time.Time `dynamodbav:"revokedAt,omitempty"`
	RevokeEmergency bool      `dynamodbav:"revokeEmergency,omitempty"`

	// The certificate rotation in progress, if RotationID is set.
	RotationID          string        `dynamodbav:"rotationId,omitempty"`
	RotationState       RotationState `dynamodbav:"rotationState,omitempty"`
	RotationRequestedAt time.Time     `dynamodbav:"rotationRequestedAt,omitempty"`
	// RotationCertID and RotationCertNotAfter describe the certificate
	// issued for the rotation (state issued).
	RotationCertID       string    `dynamodbav:"rotationCertId,omitempty"`
	RotationCertNotAfter time.Time `dynamodbav:"rotationCertNotAfter,omitempty"`

	// The last finished rotation: its id, its outcome and the certificate
	// it retired (the old one when completed, the refused new one when
	// failed), which the rotation Lambda deactivates and deletes.
	LastRotationID       string          `dynamodbav:"lastRotationId,omitempty"`
	LastRotationStatus   RotationOutcome `dynamodbav:"lastRotationStatus,omitempty"`
	RetiredCertificateID string          `dynamodbav:"retiredCertificateId,omitempty"`
}

// RotationState is the step of a rotation in progress.
type RotationState string

const (
	// RotationRequested: the cloud asked the device to rotate.
	RotationRequested RotationState = "requested"
	// RotationIssued: a certificate was issued for the device's CSR; the
	// device has not confirmed it yet.
	RotationIssued RotationState = "issued"
)

// RotationOutcome is how a finished rotation ended.
type RotationOutcome string

const (
	// RotationCompleted: the device connected with the new certificate.
	RotationCompleted RotationOutcome = "completed"
	// RotationFailed: the device kept its old certificate.
	RotationFailed RotationOutcome = "failed"
)

// Certificate is a device certificate as the registry records it.
type Certificate struct {
	ID       string
	NotAfter time.Time // zero: unknown
	// PublicKeySHA256 is the hex SHA-256 of the certificate's
	// SubjectPublicKeyInfo (empty: unknown).
	PublicKeySHA256 string
}

// ErrHeldOut is returned by ReadmitAdmitted for a record an emergency
// revocation holds out (Device.HeldOut). It wraps ErrConflict.
var ErrHeldOut = fmt.Errorf("%w: held out by an emergency revocation", ErrConflict)

// ErrRotationPending is returned by RequestRotation when the device has a
// rotation in progress that was requested too recently to ask again. It
// wraps ErrConflict.
var ErrRotationPending = fmt.Errorf("%w: rotation pending", ErrConflict)

// Attribute names of a registry record in the DynamoDB table. PartitionKey
// is the table's only key (type S); the Pulumi program declares the same.
const (
	PartitionKey      = "serial"
	AttrState         = "state"
	AttrThingName     = "thingName"
	AttrCertificateID = "certificateId"
	AttrCreatedAt     = "createdAt"
	AttrUpdatedAt     = "updatedAt"
	AttrCertNotAfter  = "certNotAfter"

	AttrRotationID           = "rotationId"
	AttrRotationState        = "rotationState"
	AttrRotationRequestedAt  = "rotationRequestedAt"
	AttrRotationCertID       = "rotationCertId"
	AttrRotationCertNotAfter = "rotationCertNotAfter"
	AttrLastRotationID       = "lastRotationId"
	AttrLastRotationStatus   = "lastRotationStatus"
	AttrRetiredCertificateID = "retiredCertificateId"

	AttrPublicKeySHA256    = "publicKeySha256"
	AttrCertificateHistory = "certificateHistory"
	AttrReadmitToken       = "readmitToken"
	AttrReadmittedBy       = "readmittedBy"
	AttrReadmittedAt       = "readmittedAt"
	AttrReadmitTokens      = "readmitTokens" // string set (SS)
	AttrRevokeReason       = "revokeReason"
	AttrRevokedBy          = "revokedBy"
	AttrRevokedAt          = "revokedAt"
	AttrRevokeEmergency    = "revokeEmergency"

	// AttrExpiryPartition is the partition key of the expiry index. It is
	// present (value ExpiryPartitionValue) only on provisioned records with
	// a known certNotAfter, so the index is sparse: revoked and allowed
	// devices are not in it.
	AttrExpiryPartition  = "expiryPartition"
	ExpiryPartitionValue = "provisioned"
	// ExpiryIndex is the global secondary index (partition key
	// AttrExpiryPartition, sort key AttrCertNotAfter, both S, projection
	// ALL) that ExpiringBefore queries. The Pulumi program and
	// testenv.CreateRegistryTable declare it.
	ExpiryIndex = "certExpiry"
)

// FormatTime is how the registry stores a time: RFC 3339, UTC, whole
// seconds, so that string order is time order (the expiry index sorts on
// it).
func FormatTime(t time.Time) string { return t.UTC().Truncate(time.Second).Format(time.RFC3339) }

// Admitted reports whether the serial of a device in state s is on the
// allowlist as far as the registry knows (allowed, provisioned or
// readmitted): these are the devices a sync revokes when their serial is
// no longer listed. Whether the device may provision is the hook's
// decision (a provisioned serial only with its recorded key).
func (s State) Admitted() bool {
	return s == StateAllowed || s == StateProvisioned || s == StateReadmitted
}

// ReadmitTokenUsed reports whether a re-admission of d's serial used
// token before (ReadmitTokens, or the last ReadmitToken): such a token
// re-admits nothing.
func (d Device) ReadmitTokenUsed(token string) bool {
	return token != "" && (token == d.ReadmitToken || slices.Contains(d.ReadmitTokens, token))
}

// HeldOut reports whether d was revoked in an emergency and is still
// revoking or revoked: listing its serial does not admit it again, only a
// re-admission with a token never used for the serial does.
func (d Device) HeldOut() bool {
	return d.RevokeEmergency && (d.State == StateRevoking || d.State == StateRevoked)
}

// Revocation is an emergency revocation's record: why and who asked.
type Revocation struct {
	Reason string
	By     string
}

// Bounds of a Revocation's fields.
const (
	MaxRevokeReason = 512
	MaxRevokedBy    = 128
)

// Valid reports what is wrong with r (nil: nothing).
func (r Revocation) Valid() error {
	switch {
	case r.Reason == "":
		return errors.New("registry: revocation: empty reason")
	case len(r.Reason) > MaxRevokeReason:
		return fmt.Errorf("registry: revocation: reason longer than %d bytes", MaxRevokeReason)
	case r.By == "":
		return errors.New("registry: revocation: empty by (who asked)")
	case len(r.By) > MaxRevokedBy:
		return fmt.Errorf("registry: revocation: by longer than %d bytes", MaxRevokedBy)
	}
	return nil
}

// Valid reports whether s is one of the known states.
func (s State) Valid() bool {
	switch s {
	case StateAllowed, StateProvisioned, StateReadmitted, StateRevoking, StateRevoked:
		return true
	}
	return false
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
	// left unchanged and PutAllowed returns nil, so it is idempotent; so is
	// a record held out by an emergency revocation (HeldOut), which only
	// Readmit admits again.
	PutAllowed(ctx context.Context, serial string) error

	// MarkProvisioned records that serial provisioned with certificateID:
	// state provisioned, certificate id set, thing name set when thingName
	// is not empty. Only a record in state allowed may change, or a
	// provisioned one that already names certificateID (a harmless repeat:
	// a retried hook); a provisioned record with another certificate is
	// ErrConflict (a second identity needs ReplaceCertificate). It returns
	// the record after the write, ErrNotFound if serial has no record, and
	// an error wrapping ErrConflict in any other state.
	MarkProvisioned(ctx context.Context, serial, certificateID, thingName string) (Device, error)

	// RecordProvisioned is MarkProvisioned that also records the
	// certificate's expiry (cert.NotAfter; zero removes a recorded one)
	// and public key hash (cert.PublicKeySHA256; empty removes it).
	// A provisioned record with a known expiry is in the expiry index.
	// A rotation in progress is left as it is.
	RecordProvisioned(ctx context.Context, serial, thingName string, cert Certificate) (Device, error)

	// ReplaceCertificate makes cert the certificate of a provisioned or
	// readmitted record whose current certificate is retired.CertificateID
	// (the conditional write fails with ErrConflict otherwise): state
	// provisioned, cert's id, expiry and key hash, thing name when not
	// empty, the rotation in progress dropped, and retired (stamped with
	// the store's clock) appended to the certificate history. The caller
	// must already have revoked the retired certificate in AWS IoT.
	// Repeating it after it succeeded (the record names cert.ID) returns
	// the record unchanged.
	ReplaceCertificate(ctx context.Context, serial, thingName string, cert Certificate, retired RetiredCertificate) (Device, error)

	// Readmit records an operator's re-admission of serial under token
	// (ValidReadmitToken) by who. A provisioned or readmitted record
	// becomes readmitted; an allowed record stays allowed (it may
	// provision anyway) but keeps the token, so a stale annotation cannot
	// re-admit it later. A record revoked in an emergency (RevokeEmergency)
	// becomes allowed, as PutAllowed makes a revoked record, with the
	// emergency flag cleared. Every token used is added to the record's
	// ReadmitTokens; a token used before for this serial (ReadmitTokenUsed)
	// changes nothing: changed is false, so an old readmit line brought
	// back never re-admits. Other revoked and revoking records are
	// ErrConflict (list the serial again first), a missing one ErrNotFound.
	Readmit(ctx context.Context, serial, token, by string) (d Device, changed bool, err error)

	// ReadmitAdmitted is Readmit that never lifts an emergency hold: a
	// record held out (Device.HeldOut), also one that becomes held while
	// the call runs, is ErrHeldOut and is left as it is. Tools that are
	// not the reviewed allowlist (the local IoT Core's operator API) use
	// it.
	ReadmitAdmitted(ctx context.Context, serial, token, by string) (d Device, changed bool, err error)

	// MarkRevoking moves an allowed, provisioned or readmitted record whose
	// certificate id equals expectedCertificateID (empty: none) to
	// revoking, which the hook denies; the sync does this before any AWS
	// call. A record already revoking with that certificate is returned
	// unchanged. Anything else is ErrConflict (a missing record
	// ErrNotFound).
	MarkRevoking(ctx context.Context, serial, expectedCertificateID string) (Device, error)

	// MarkEmergencyRevoking records an emergency revocation (rev, stamped
	// with the store's clock in RevokedAt, and RevokeEmergency) on serial's
	// record: an allowed, provisioned or readmitted record whose
	// certificate id equals expectedCertificateID moves to revoking, as
	// MarkRevoking; a revoking or revoked record keeps its state and gains
	// the record (and the hold). The certificate guard is ErrConflict, a
	// missing record ErrNotFound, an invalid rev an error naming it.
	MarkEmergencyRevoking(ctx context.Context, serial, expectedCertificateID string, rev Revocation) (Device, error)

	// MarkRevoked sets serial's state to revoked, provided its certificate
	// id still equals expectedCertificateID (empty: the record has none),
	// and appends that certificate to the history. The guard makes a
	// revocation fail with ErrConflict, rather than silently strand an
	// active certificate, when the device provisioned again after the
	// caller read the record. Revoking a record that is already revoked
	// returns nil; a missing record returns ErrNotFound.
	MarkRevoked(ctx context.Context, serial, expectedCertificateID string) error

	// Scan returns up to limit records (DefaultPageSize when limit <= 0)
	// after cursor (empty: from the start), in no particular order; pass
	// Page.Next to continue. Records written during a scan may or may not
	// appear.
	Scan(ctx context.Context, cursor string, limit int) (Page, error)

	// ExpiringBefore returns up to limit (DefaultPageSize when <= 0)
	// provisioned devices whose certificate expires before t, soonest
	// first, after cursor (empty: from the start); pass Page.Next to
	// continue. It reads the expiry index, so its work is proportional to
	// the devices it returns, not to the fleet. The index is eventually
	// consistent: a write may take a moment to show.
	ExpiringBefore(ctx context.Context, t time.Time, cursor string, limit int) (Page, error)

	RotationStore
}

// RotationStore is the registry's record of certificate rotations. Every
// method is a conditional write on the device record; the rotation Lambda
// relies on them to ignore duplicates and replays.
type RotationStore interface {
	// RequestRotation starts a rotation with id rotationID for the
	// provisioned device serial and returns the record. If a rotation is
	// already in progress it is not replaced: when it was requested at
	// least resendAfter ago its request time is refreshed and the record
	// (with the existing RotationID, which the caller asks for again) is
	// returned; otherwise RequestRotation fails with ErrRotationPending.
	// A device that is not provisioned is ErrConflict; a missing one
	// ErrNotFound.
	RequestRotation(ctx context.Context, serial, rotationID string, resendAfter time.Duration) (Device, error)

	// IssueRotation records cert as the certificate issued for rotation
	// rotationID (state requested → issued). Recording the same
	// certificate again returns the record unchanged; another rotation id,
	// another certificate, a finished rotation or a device that is not
	// provisioned is ErrConflict. cert.NotAfter is required.
	IssueRotation(ctx context.Context, serial, rotationID string, cert Certificate) (Device, error)

	// CompleteRotation makes the issued certificate certID of rotation
	// rotationID the device's certificate: certificateId and certNotAfter
	// take the new values, retiredCertificateId the old certificate id,
	// lastRotationId/lastRotationStatus record the outcome and the
	// rotation fields are removed. Repeating it after it succeeded returns
	// the record unchanged (so the caller can finish retiring the old
	// certificate); anything else that does not match is ErrConflict.
	CompleteRotation(ctx context.Context, serial, rotationID, certID string) (Device, error)

	// FailRotation ends rotation rotationID without changing the device's
	// certificate: the certificate issued for it (if any) becomes
	// retiredCertificateId, lastRotationStatus is failed and the rotation
	// fields are removed. Repeating it returns the record unchanged; a
	// rotation that is not in progress is ErrConflict.
	FailRotation(ctx context.Context, serial, rotationID string) (Device, error)
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
