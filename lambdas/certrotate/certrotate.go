// Package certrotate is the cloud side of certificate rotation: the Lambda
// a topic rule invokes with the device's rotation messages (CSR and
// confirmation). It issues the new certificate from the device's CSR,
// returns it on the device's command topic and, only once the device
// confirmed over a connection made with the new certificate, retires the
// old one (INACTIVE, detached, deleted). When the device reports that the
// new certificate did not work, it retires the new one and keeps the old.
//
// The thing name comes from the topic the device published on (the rule
// selects topic(3); the device policy pins that segment to
// ${iot:Connection.Thing.ThingName}) and the certificate the device is
// connected with from principal(); nothing in the payload names a device or
// a certificate the handler acts on without checking it against the
// registry. Every message carries the rotation id: messages for another
// rotation, and replays of finished ones, change nothing (a replayed CSR
// never creates a second certificate).
//
// A completed rotation records the new certificate's public key hash
// (SHA-256 of its SubjectPublicKeyInfo, as the pre-provisioning hook
// computes it) in the device registry, so that the rotated device retrying
// fleet provisioning with its current key is admitted as a same-key retry
// while any other key is still denied as a clone.
package certrotate

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/iotcall"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/required"
	"github.com/iot-fleet/iot-fleet/lambdas/preprovision"
)

// IoTAPI is the part of the AWS IoT control plane rotation uses;
// *iot.Client implements it. The Lambda's IAM policy allows exactly these
// actions (plus iot:ListThingsInThingGroup for certscan). Another
// implementation must behave like AWS IoT where the handler depends on it:
// an unknown certificate is a *types.ResourceNotFoundException; attaching
// what is attached and detaching what is not attached succeed;
// DeleteCertificate of an ACTIVE certificate is a
// *types.CertificateStateException and of one still attached a
// *types.DeleteConflictException; DescribeCertificate fills
// CertificateArn, CertificatePem and Status.
type IoTAPI interface {
	CreateCertificateFromCsr(ctx context.Context, in *iot.CreateCertificateFromCsrInput, optFns ...func(*iot.Options)) (*iot.CreateCertificateFromCsrOutput, error)
	AttachPolicy(ctx context.Context, in *iot.AttachPolicyInput, optFns ...func(*iot.Options)) (*iot.AttachPolicyOutput, error)
	AttachThingPrincipal(ctx context.Context, in *iot.AttachThingPrincipalInput, optFns ...func(*iot.Options)) (*iot.AttachThingPrincipalOutput, error)
	UpdateCertificate(ctx context.Context, in *iot.UpdateCertificateInput, optFns ...func(*iot.Options)) (*iot.UpdateCertificateOutput, error)
	DetachPolicy(ctx context.Context, in *iot.DetachPolicyInput, optFns ...func(*iot.Options)) (*iot.DetachPolicyOutput, error)
	DetachThingPrincipal(ctx context.Context, in *iot.DetachThingPrincipalInput, optFns ...func(*iot.Options)) (*iot.DetachThingPrincipalOutput, error)
	DeleteCertificate(ctx context.Context, in *iot.DeleteCertificateInput, optFns ...func(*iot.Options)) (*iot.DeleteCertificateOutput, error)
	DescribeCertificate(ctx context.Context, in *iot.DescribeCertificateInput, optFns ...func(*iot.Options)) (*iot.DescribeCertificateOutput, error)
}

// DataAPI publishes to a device (AWS IoT data plane);
// *iotdataplane.Client implements it.
type DataAPI interface {
	Publish(ctx context.Context, in *iotdataplane.PublishInput, optFns ...func(*iotdataplane.Options)) (*iotdataplane.PublishOutput, error)
}

// Registry is the part of the device registry rotation uses.
// RecordProvisioned records the key hash of the certificate a completed
// rotation switched to (a provisioned record that already names the
// certificate: only its expiry and key hash are written).
type Registry interface {
	Get(ctx context.Context, serial string) (registry.Device, error)
	IssueRotation(ctx context.Context, serial, rotationID string, cert registry.Certificate) (registry.Device, error)
	CompleteRotation(ctx context.Context, serial, rotationID, certID string) (registry.Device, error)
	FailRotation(ctx context.Context, serial, rotationID string) (registry.Device, error)
	RecordProvisioned(ctx context.Context, serial, thingName string, cert registry.Certificate) (registry.Device, error)
}

// RuleSQL is the topic rule's statement. The thing name is the topic's
// third level, which the device policy pins to the connected thing; kind
// is "csr" or "confirm"; principal() is the id of the certificate the
// message was published with. Only the payload fields the handler reads
// are selected, so a "thingName" in a payload can never override the
// topic's.
const RuleSQL = "SELECT rotationId, csr, certificateId, status, reason, ts, " +
	"topic(3) AS thingName, topic(5) AS kind, clientid() AS clientId, principal() AS principal " +
	"FROM 'dt/" + protocol.Application + "/+/rotate/+'"

// Event is what the topic rule passes to the Lambda (RuleSQL's output).
type Event struct {
	ThingName     string `json:"thingName"`
	Kind          string `json:"kind"`
	ClientID      string `json:"clientId"`
	Principal     string `json:"principal"`
	RotationID    string `json:"rotationId"`
	CSR           string `json:"csr"`
	CertificateID string `json:"certificateId"`
	Status        string `json:"status"`
	Reason        string `json:"reason"`
	Timestamp     int64  `json:"ts"`
}

// Event kinds (the topic's last level).
const (
	KindCSR     = "csr"
	KindConfirm = "confirm"
)

// Outcomes of Handle (Result.Outcome), also logged.
const (
	OutcomeIssued    = "issued"    // new certificate created and sent
	OutcomeResent    = "resent"    // duplicate CSR: the same certificate sent again
	OutcomeRefused   = "refused"   // the CSR was refused; the device was told
	OutcomeCompleted = "completed" // old certificate retired
	OutcomeFailed    = "failed"    // new certificate retired, old kept
	OutcomeReplay    = "replay"    // confirmation of a finished rotation: retirement re-checked
	OutcomeIgnored   = "ignored"   // nothing to do (see Result.Reason)
)

// Error codes sent in RotateCert.ErrorCode when a CSR is refused.
const (
	ErrCodeInvalidCSR  = "InvalidCSR"
	ErrCodeKeyMismatch = "KeyMismatch"
	// ErrCodeCertificateGone: the certificate issued for the rotation was
	// deleted; the device should report failure so a new rotation can
	// start.
	ErrCodeCertificateGone = "CertificateGone"
)

// Result says what Handle did.
type Result struct {
	Outcome       string `json:"outcome"`
	Reason        string `json:"reason,omitempty"`
	ThingName     string `json:"thingName,omitempty"`
	RotationID    string `json:"rotationId,omitempty"`
	CertificateID string `json:"certificateId,omitempty"`
	// PublicKeySHA256 is the key hash recorded for the device's new
	// certificate (completed rotations and their replays).
	PublicKeySHA256 string `json:"publicKeySha256,omitempty"`
}

// Config configures a Handler.
type Config struct {
	IoT      IoTAPI   // required
	Data     DataAPI  // required
	Registry Registry // required
	// DevicePolicy is attached to the new certificate and detached from
	// the retired one. Required.
	DevicePolicy string
	// ThingNamePrefix maps a thing name to its serial (thing = prefix +
	// serial). Required.
	ThingNamePrefix string
	// CallTimeout bounds each AWS call (default 10s).
	CallTimeout time.Duration
	// DeleteRetries and RetryDelay bound the retries of DeleteCertificate
	// while AWS IoT still sees the just-detached policy or thing
	// (detaching propagates asynchronously). Defaults 4 and 500ms.
	DeleteRetries int
	RetryDelay    time.Duration
	Now           func() time.Time
	Logger        *slog.Logger
}

// Handler handles rotation messages. It is immutable after New.
type Handler struct {
	cfg Config
	log *slog.Logger
}

// New returns the handler for cfg.
func New(cfg Config) (*Handler, error) {
	// Listed in name order, the order the error names them in.
	if err := required.Fields("certrotate: missing",
		required.Field("Data", cfg.Data != nil),
		required.Field("DevicePolicy", cfg.DevicePolicy != ""),
		required.Field("IoT", cfg.IoT != nil),
		required.Field("Registry", cfg.Registry != nil),
		required.Field("ThingNamePrefix", cfg.ThingNamePrefix != ""),
	); err != nil {
		return nil, err
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if cfg.DeleteRetries <= 0 {
		cfg.DeleteRetries = 4
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = 500 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Handler{cfg: cfg, log: log}, nil
}

// Handle processes one rule event. It returns an error only for failures
// worth retrying (AWS or registry unavailable); the Lambda's asynchronous
// retries then run it again, and every step is idempotent. Events that do
// not match the registry are ignored (Result.Outcome "ignored").
func (h *Handler) Handle(ctx context.Context, ev Event) (Result, error) {
	res, err := h.handle(ctx, ev)
	res.ThingName, res.RotationID = ev.ThingName, ev.RotationID
	attrs := []any{"outcome", res.Outcome, "thingName", safe(ev.ThingName), "kind", safe(ev.Kind),
		"rotationId", safe(ev.RotationID), "principal", safe(ev.Principal)}
	if res.Reason != "" {
		attrs = append(attrs, "reason", res.Reason)
	}
	if res.CertificateID != "" {
		attrs = append(attrs, "certificateId", res.CertificateID)
	}
	if res.PublicKeySHA256 != "" {
		attrs = append(attrs, "publicKeySha256", res.PublicKeySHA256)
	}
	if err != nil {
		h.log.ErrorContext(ctx, "rotation event failed", append(attrs, "error", err.Error())...)
		return res, err
	}
	h.log.InfoContext(ctx, "rotation event", attrs...)
	return res, nil
}

func ignored(reason string) Result { return Result{Outcome: OutcomeIgnored, Reason: reason} }

func (h *Handler) handle(ctx context.Context, ev Event) (Result, error) {
	if ev.ThingName == "" || strings.ContainsAny(ev.ThingName, "/#+") {
		return ignored("no thing name in the topic"), nil
	}
	if ev.ClientID != "" && ev.ClientID != ev.ThingName {
		// The device policy only lets a thing connect with its own name as
		// client id; anything else did not come from the device.
		return ignored("client id does not match the topic's thing name"), nil
	}
	if ev.RotationID == "" {
		return ignored("no rotationId"), nil
	}
	serial, ok := strings.CutPrefix(ev.ThingName, h.cfg.ThingNamePrefix)
	if !ok || serial == "" {
		return ignored("thing name lacks the environment prefix"), nil
	}
	d, err := h.get(ctx, serial)
	if errors.Is(err, registry.ErrNotFound) {
		return ignored("device not in the registry"), nil
	}
	if err != nil {
		return Result{}, err
	}
	if d.ThingName != "" && d.ThingName != ev.ThingName {
		return ignored("registry records another thing name"), nil
	}
	if d.State != registry.StateProvisioned {
		return ignored("device is " + string(d.State)), nil
	}
	switch ev.Kind {
	case KindCSR:
		return h.csr(ctx, d, ev)
	case KindConfirm:
		return h.confirm(ctx, d, ev)
	}
	return ignored("unknown message kind"), nil
}

// csr issues (or re-sends) the certificate of the rotation in progress.
func (h *Handler) csr(ctx context.Context, d registry.Device, ev Event) (Result, error) {
	if d.RotationID != ev.RotationID {
		if d.LastRotationID == ev.RotationID {
			return ignored("CSR replayed for a finished rotation"), nil
		}
		return ignored("no such rotation in progress"), nil
	}
	csr, err := parseCSR(ev.CSR)
	if err != nil {
		return h.refuse(ctx, ev, ErrCodeInvalidCSR, err.Error())
	}
	if d.RotationState == registry.RotationIssued {
		return h.resend(ctx, d, ev, csr)
	}

	var created *iot.CreateCertificateFromCsrOutput
	if err := h.call(ctx, "CreateCertificateFromCsr", func(ctx context.Context) (err error) {
		created, err = h.cfg.IoT.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{
			CertificateSigningRequest: aws.String(ev.CSR), SetAsActive: true,
		})
		return err
	}); err != nil {
		var invalid *iottypes.InvalidRequestException
		if errors.As(err, &invalid) {
			return h.refuse(ctx, ev, ErrCodeInvalidCSR, "CreateCertificateFromCsr refused the CSR")
		}
		return Result{}, err
	}
	certID, arn, certPEM := aws.ToString(created.CertificateId), aws.ToString(created.CertificateArn), aws.ToString(created.CertificatePem)
	leaf, err := parseCertPEM(certPEM)
	if err != nil {
		return Result{}, fmt.Errorf("CreateCertificateFromCsr returned certificate %s: %w", certID, err)
	}
	rctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
	d2, err := h.cfg.Registry.IssueRotation(rctx, d.Serial, ev.RotationID, registry.Certificate{ID: certID, NotAfter: leaf.NotAfter})
	cancel()
	if err != nil && !errors.Is(err, registry.ErrConflict) {
		// The write may have happened even though the call failed.
		if again, gerr := h.get(ctx, d.Serial); gerr == nil && again.RotationID == ev.RotationID && again.RotationCertID == certID {
			d2, err = again, nil
		}
	}
	if err != nil {
		// Another invocation recorded its certificate first, or the
		// rotation ended: this certificate must not stay usable.
		if cerr := h.retire(ctx, ev.ThingName, certID); cerr != nil {
			err = errors.Join(err, fmt.Errorf("retire unrecorded certificate %s: %w", certID, cerr))
		}
		if errors.Is(err, registry.ErrConflict) {
			return Result{Outcome: OutcomeIgnored, Reason: "rotation changed while issuing: " + err.Error()}, nil
		}
		return Result{}, fmt.Errorf("record issued certificate: %w", err)
	}
	if err := h.attach(ctx, ev.ThingName, arn); err != nil {
		return Result{}, err
	}
	if err := h.sendCert(ctx, ev.ThingName, protocol.RotateCert{
		RotationID: ev.RotationID, CertificateID: d2.RotationCertID, CertificatePEM: certPEM,
	}); err != nil {
		return Result{}, err
	}
	return Result{Outcome: OutcomeIssued, CertificateID: certID}, nil
}

// resend answers a duplicate CSR with the certificate already issued, if
// the CSR is for the same key; it also completes the attachments in case
// an earlier invocation stopped before them.
func (h *Handler) resend(ctx context.Context, d registry.Device, ev Event, csr *x509.CertificateRequest) (Result, error) {
	desc, err := h.describe(ctx, d.RotationCertID)
	if err != nil {
		return Result{}, err
	}
	if desc == nil {
		return h.refuse(ctx, ev, ErrCodeCertificateGone, "the certificate issued for this rotation no longer exists")
	}
	leaf, err := parseCertPEM(aws.ToString(desc.CertificatePem))
	if err != nil {
		return Result{}, fmt.Errorf("DescribeCertificate %s: %w", d.RotationCertID, err)
	}
	if !samePublicKey(leaf.PublicKey, csr.PublicKey) {
		return h.refuse(ctx, ev, ErrCodeKeyMismatch, "a certificate was already issued for this rotation for another key")
	}
	if err := h.attach(ctx, ev.ThingName, aws.ToString(desc.CertificateArn)); err != nil {
		return Result{}, err
	}
	if err := h.sendCert(ctx, ev.ThingName, protocol.RotateCert{
		RotationID: ev.RotationID, CertificateID: d.RotationCertID, CertificatePEM: aws.ToString(desc.CertificatePem),
	}); err != nil {
		return Result{}, err
	}
	return Result{Outcome: OutcomeResent, CertificateID: d.RotationCertID}, nil
}

func (h *Handler) refuse(ctx context.Context, ev Event, code, msg string) (Result, error) {
	if err := h.sendCert(ctx, ev.ThingName, protocol.RotateCert{RotationID: ev.RotationID, ErrorCode: code, ErrorMessage: msg}); err != nil {
		return Result{}, err
	}
	return Result{Outcome: OutcomeRefused, Reason: code + ": " + msg}, nil
}

// confirm ends the rotation as the device reports.
func (h *Handler) confirm(ctx context.Context, d registry.Device, ev Event) (Result, error) {
	// A replayed confirmation of a finished rotation re-checks the
	// retirement (an earlier run may have stopped half-way).
	if d.RotationID != ev.RotationID {
		if d.LastRotationID != ev.RotationID {
			return ignored("no such rotation in progress"), nil
		}
		wantStatus := map[registry.RotationOutcome]string{registry.RotationCompleted: protocol.RotateConfirmed, registry.RotationFailed: protocol.RotateFailed}[d.LastRotationStatus]
		if ev.Status != wantStatus {
			return ignored("confirmation contradicts the finished rotation"), nil
		}
		if err := h.retireRecorded(ctx, ev.ThingName, d); err != nil {
			return Result{}, err
		}
		res := Result{Outcome: OutcomeReplay, CertificateID: d.RetiredCertificateID}
		if d.LastRotationStatus == registry.RotationCompleted {
			// An earlier run may have stopped before recording the key.
			key, err := h.currentKey(ctx, d)
			if err != nil {
				return Result{}, err
			}
			if res.PublicKeySHA256, err = h.recordKey(ctx, d, key); err != nil {
				return Result{}, err
			}
		}
		return res, nil
	}
	switch ev.Status {
	case protocol.RotateConfirmed:
		if d.RotationState != registry.RotationIssued {
			return ignored("no certificate issued yet"), nil
		}
		if ev.CertificateID != "" && ev.CertificateID != d.RotationCertID {
			return ignored("confirmation names another certificate"), nil
		}
		if ev.Principal != d.RotationCertID {
			// Only a connection made with the new certificate proves it
			// works.
			return ignored("confirmation was not sent with the new certificate"), nil
		}
		// The new key's hash, read before anything changes: the registry
		// records it once the rotation is complete.
		key, err := h.keyOf(ctx, d.RotationCertID)
		if err != nil {
			return Result{}, err
		}
		rctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
		d2, err := h.cfg.Registry.CompleteRotation(rctx, d.Serial, ev.RotationID, d.RotationCertID)
		cancel()
		if errors.Is(err, registry.ErrConflict) {
			return ignored("rotation changed: " + err.Error()), nil
		}
		if err != nil {
			return Result{}, fmt.Errorf("complete rotation: %w", err)
		}
		if err := h.retireRecorded(ctx, ev.ThingName, d2); err != nil {
			return Result{}, err
		}
		recorded, err := h.recordKey(ctx, d2, key)
		if err != nil {
			return Result{}, err
		}
		return Result{Outcome: OutcomeCompleted, CertificateID: d2.RetiredCertificateID, PublicKeySHA256: recorded}, nil
	case protocol.RotateFailed:
		if d.RotationCertID != "" && ev.Principal == d.RotationCertID {
			// The device falls back to its old certificate before it
			// reports failure; a failure sent with the new one is not
			// trusted to retire it.
			return ignored("failure was sent with the new certificate"), nil
		}
		rctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
		d2, err := h.cfg.Registry.FailRotation(rctx, d.Serial, ev.RotationID)
		cancel()
		if errors.Is(err, registry.ErrConflict) {
			return ignored("rotation changed: " + err.Error()), nil
		}
		if err != nil {
			return Result{}, fmt.Errorf("fail rotation: %w", err)
		}
		if err := h.retireRecorded(ctx, ev.ThingName, d2); err != nil {
			return Result{}, err
		}
		return Result{Outcome: OutcomeFailed, CertificateID: d2.RetiredCertificateID, Reason: safe(ev.Reason)}, nil
	}
	return ignored("unknown confirmation status"), nil
}

// keyOf returns the public key hash of certificate certID as AWS IoT holds
// it ("" if the certificate no longer exists).
func (h *Handler) keyOf(ctx context.Context, certID string) (string, error) {
	desc, err := h.describe(ctx, certID)
	if err != nil || desc == nil {
		return "", err
	}
	leaf, err := parseCertPEM(aws.ToString(desc.CertificatePem))
	if err != nil {
		return "", fmt.Errorf("DescribeCertificate %s: %w", certID, err)
	}
	return preprovision.PublicKeySHA256(leaf), nil
}

// currentKey is keyOf d's current certificate, without a call when the
// registry already records a key for it.
func (h *Handler) currentKey(ctx context.Context, d registry.Device) (string, error) {
	if d.PublicKeySHA256 != "" || d.CertificateID == "" {
		return d.PublicKeySHA256, nil
	}
	return h.keyOf(ctx, d.CertificateID)
}

// recordKey records key as the public key hash of d's current certificate
// (the one the rotation switched to) and returns what the registry holds.
// The write is conditional on the record still naming that certificate as
// provisioned: if the device was revoked or re-provisioned since, there is
// nothing to record and the record is left alone.
func (h *Handler) recordKey(ctx context.Context, d registry.Device, key string) (string, error) {
	if key == "" || d.PublicKeySHA256 == key {
		return d.PublicKeySHA256, nil
	}
	rctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
	defer cancel()
	d2, err := h.cfg.Registry.RecordProvisioned(rctx, d.Serial, "", registry.Certificate{
		ID: d.CertificateID, NotAfter: d.CertNotAfter, PublicKeySHA256: key,
	})
	if errors.Is(err, registry.ErrConflict) {
		h.log.InfoContext(ctx, "rotated key not recorded: the registry record changed",
			"serial", d.Serial, "certificateId", d.CertificateID, "error", err.Error())
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("record the new certificate's key: %w", err)
	}
	return d2.PublicKeySHA256, nil
}

// retireRecorded retires d's retired certificate, never its current one.
func (h *Handler) retireRecorded(ctx context.Context, thing string, d registry.Device) error {
	if d.RetiredCertificateID == "" || d.RetiredCertificateID == d.CertificateID {
		return nil
	}
	return h.retire(ctx, thing, d.RetiredCertificateID)
}

// retire makes certID unusable and removes it: INACTIVE, device policy and
// thing detached, deleted. Each step treats "not found" as done.
func (h *Handler) retire(ctx context.Context, thing, certID string) error {
	desc, err := h.describe(ctx, certID)
	if err != nil || desc == nil {
		return err
	}
	arn := aws.ToString(desc.CertificateArn)
	if desc.Status != iottypes.CertificateStatusInactive && desc.Status != iottypes.CertificateStatusRevoked {
		if err := h.call(ctx, "UpdateCertificate", func(ctx context.Context) error {
			_, err := h.cfg.IoT.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(certID), NewStatus: iottypes.CertificateStatusInactive})
			return err
		}); err != nil {
			return err
		}
	}
	if err := h.call(ctx, "DetachPolicy", func(ctx context.Context) error {
		_, err := h.cfg.IoT.DetachPolicy(ctx, &iot.DetachPolicyInput{PolicyName: aws.String(h.cfg.DevicePolicy), Target: aws.String(arn)})
		return err
	}); err != nil {
		return err
	}
	if err := h.call(ctx, "DetachThingPrincipal", func(ctx context.Context) error {
		_, err := h.cfg.IoT.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: aws.String(thing), Principal: aws.String(arn)})
		return err
	}); err != nil {
		return err
	}
	delay := h.cfg.RetryDelay
	for attempt := 1; ; attempt++ {
		err := h.call(ctx, "DeleteCertificate", func(ctx context.Context) error {
			_, err := h.cfg.IoT.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: aws.String(certID)})
			return err
		})
		var conflict *iottypes.DeleteConflictException
		if err == nil || !errors.As(err, &conflict) || attempt >= h.cfg.DeleteRetries {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
}

func (h *Handler) attach(ctx context.Context, thing, arn string) error {
	if arn == "" {
		return errors.New("certificate has no ARN")
	}
	if err := h.call(ctx, "AttachPolicy", func(ctx context.Context) error {
		_, err := h.cfg.IoT.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String(h.cfg.DevicePolicy), Target: aws.String(arn)})
		return err
	}); err != nil {
		return err
	}
	return h.call(ctx, "AttachThingPrincipal", func(ctx context.Context) error {
		_, err := h.cfg.IoT.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String(thing), Principal: aws.String(arn)})
		return err
	})
}

// describe returns the certificate, or nil if it does not exist.
func (h *Handler) describe(ctx context.Context, certID string) (*iottypes.CertificateDescription, error) {
	var out *iot.DescribeCertificateOutput
	err := h.call(ctx, "DescribeCertificate", func(ctx context.Context) (err error) {
		out, err = h.cfg.IoT.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(certID)})
		return err
	})
	if iotcall.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if out == nil || out.CertificateDescription == nil {
		return nil, nil
	}
	return out.CertificateDescription, nil
}

func (h *Handler) sendCert(ctx context.Context, thing string, msg protocol.RotateCert) error {
	msg.Timestamp = h.cfg.Now().Unix()
	return Publish(ctx, h.cfg.Data, h.cfg.CallTimeout, protocol.CommandTopic(thing, protocol.KindRotateCert), msg)
}

// Publish sends v as JSON to topic with QoS 1 through the IoT data plane.
func Publish(ctx context.Context, data DataAPI, timeout time.Duration, topic string, v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", topic, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := data.Publish(ctx, &iotdataplane.PublishInput{Topic: aws.String(topic), Qos: 1, Payload: payload}); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// call runs one AWS call with the call timeout. "Not found" is returned
// as is (callers decide what it means).
func (h *Handler) call(ctx context.Context, op string, fn func(context.Context) error) error {
	// Deactivating, detaching or deleting what is gone is done.
	var goneIsDone bool
	switch op {
	case "UpdateCertificate", "DetachPolicy", "DetachThingPrincipal", "DeleteCertificate":
		goneIsDone = true
	}
	return iotcall.Do(ctx, h.cfg.CallTimeout, op, goneIsDone, fn)
}

func (h *Handler) get(ctx context.Context, serial string) (registry.Device, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
	defer cancel()
	return h.cfg.Registry.Get(ctx, serial)
}

func parseCSR(s string) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("csr: no CERTIFICATE REQUEST PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	return csr, nil
}

func parseCertPEM(s string) (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}

func samePublicKey(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// safe shortens s for a log line and quotes invalid UTF-8, so a hostile
// payload cannot flood or corrupt the log.
func safe(s string) string {
	const max = 128
	if len(s) > max {
		s = s[:max] + "..."
	}
	if !utf8.ValidString(s) {
		s = fmt.Sprintf("%q", s)
	}
	return s
}
