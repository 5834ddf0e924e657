// Package preprovision is the fleet-provisioning pre-provisioning hook: AWS
// IoT calls it before it creates a thing for a device that presented the
// claim certificate, and provisions the device only if the hook allows it.
//
// Anyone holding the claim certificate (on every SD card) and a serial
// (printed on the board) can ask to provision that serial, so the hook
// admits a device only when its SerialNumber parameter matches the serial
// pattern and the registry record of the serial says so:
//
//   - allowed: admitted; the certificate id, expiry and public key hash
//     (SHA-256 of the SubjectPublicKeyInfo) are recorded;
//   - provisioned: denied ("serial already provisioned": a clone), unless
//     the request's certificate is the recorded one (a retried hook) or
//     carries the recorded public key (the device retrying after a lost
//     RegisterThing answer: it keeps its key across retries);
//   - readmitted (an operator re-admitted the serial): admitted once, with
//     any key;
//   - revoking, revoked, unknown: denied.
//
// Admitting a second certificate for a serial (same key, or readmitted)
// first retires the recorded one in AWS IoT: set REVOKED, device policy
// and thing principal detached (not-found counts as done), then records
// the new certificate with a conditional write that keeps the old one in
// the record's history. If retiring fails, the request is denied (the
// device retries). The hook never retires the claim certificate, nor any
// certificate but the one the registry recorded for the serial; all of it
// is bounded by Config.Budget, inside IoT's 5-second limit.
//
// Every decision is one structured log line (reason, metric, serial,
// certificate ids; never the PEM). The handler keeps no per-invocation
// state: a Handler value is immutable after New, so a warm Lambda answers
// every invocation afresh.
package preprovision

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/iotcall"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/required"
)

// Registry is the part of the device registry the hook uses.
type Registry interface {
	Get(ctx context.Context, serial string) (registry.Device, error)
	RecordProvisioned(ctx context.Context, serial, thingName string, cert registry.Certificate) (registry.Device, error)
	ReplaceCertificate(ctx context.Context, serial, thingName string, cert registry.Certificate, retired registry.RetiredCertificate) (registry.Device, error)
}

// IoTAPI is the part of the AWS IoT control plane the hook uses to retire
// a device's previous certificate; *iot.Client implements it, and so does
// the local IoT Core (sim/awsiot). An unknown certificate or thing is a
// *types.ResourceNotFoundException; detaching what is not attached
// succeeds.
type IoTAPI interface {
	DescribeCertificate(ctx context.Context, in *iot.DescribeCertificateInput, optFns ...func(*iot.Options)) (*iot.DescribeCertificateOutput, error)
	UpdateCertificate(ctx context.Context, in *iot.UpdateCertificateInput, optFns ...func(*iot.Options)) (*iot.UpdateCertificateOutput, error)
	DetachPolicy(ctx context.Context, in *iot.DetachPolicyInput, optFns ...func(*iot.Options)) (*iot.DetachPolicyOutput, error)
	DetachThingPrincipal(ctx context.Context, in *iot.DetachThingPrincipalInput, optFns ...func(*iot.Options)) (*iot.DetachThingPrincipalOutput, error)
}

// Limits on the request. AWS certificate ids are 64 hex digits.
const (
	MaxParameters      = 16
	MaxParameterKey    = 128
	MaxParameterValue  = 1024
	MaxSerialLength    = 128
	DefaultCallTimeout = 2 * time.Second
	// DefaultBudget bounds a whole invocation's calls (registry and IoT),
	// inside the 5 seconds AWS IoT waits for the hook.
	DefaultBudget = 4 * time.Second
)

// Config configures a Handler.
type Config struct {
	// Registry records admissions. Required.
	Registry Registry
	// IoT retires a device's previous certificate. Required.
	IoT IoTAPI
	// DevicePolicy is the device IoT policy detached from a retired
	// certificate. Required.
	DevicePolicy string
	// SerialPattern must match a serial in full (see
	// allowlist.CompilePattern). Required.
	SerialPattern *regexp.Regexp
	// ThingNamePrefix, when set, makes the hook record the thing name
	// (prefix + serial) the template will create.
	ThingNamePrefix string
	// CallTimeout bounds each registry and IoT call. Default
	// DefaultCallTimeout.
	CallTimeout time.Duration
	// Budget bounds all the calls of one invocation. Default
	// DefaultBudget.
	Budget time.Duration
	// Logger receives one line per decision. Default slog.Default().
	Logger *slog.Logger
}

// Handler is the hook. Its zero value is not usable; use New.
type Handler struct {
	registry    Registry
	iot         IoTAPI
	policy      string
	pattern     *regexp.Regexp
	thingPrefix string
	timeout     time.Duration
	budget      time.Duration
	log         *slog.Logger
}

// New returns the hook handler for cfg.
func New(cfg Config) (*Handler, error) {
	if err := required.Fields("preprovision: missing",
		required.Field("Registry", cfg.Registry != nil),
		required.Field("IoT", cfg.IoT != nil),
		required.Field("DevicePolicy", cfg.DevicePolicy != ""),
		required.Field("SerialPattern", cfg.SerialPattern != nil),
	); err != nil {
		return nil, err
	}
	h := &Handler{
		registry:    cfg.Registry,
		iot:         cfg.IoT,
		policy:      cfg.DevicePolicy,
		pattern:     cfg.SerialPattern,
		thingPrefix: cfg.ThingNamePrefix,
		timeout:     cfg.CallTimeout,
		budget:      cfg.Budget,
		log:         cfg.Logger,
	}
	if h.timeout <= 0 {
		h.timeout = DefaultCallTimeout
	}
	if h.budget <= 0 {
		h.budget = DefaultBudget
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	return h, nil
}

// Reasons of a decision, as logged in the "reason" attribute. They are
// stable: alarms and metric filters match them.
const (
	ReasonAdmitted           = "admitted"
	ReasonMissingSerial      = "missing SerialNumber parameter"
	ReasonTooManyParameters  = "too many parameters"
	ReasonOversizedParameter = "oversized parameter"
	ReasonMalformedParameter = "parameter is not valid UTF-8"
	ReasonSerialPattern      = "serial does not match the serial pattern"
	ReasonMissingCertificate = "missing certificateId"
	ReasonBadCertificate     = "certificateId is not 64 hex digits"
	ReasonUnknownSerial      = "serial is not on the allowlist"
	ReasonAlreadyProvisioned = "serial already provisioned"
	ReasonRevoking           = "serial is being revoked"
	ReasonRevoked            = "serial is revoked or not admitted"
	ReasonConflict           = "registry record changed concurrently"
	ReasonRetireFailed       = "previous certificate could not be retired"
	ReasonRegistryError      = "registry unavailable"
)

// How an admitted request was admitted ("admission" attribute).
const (
	AdmissionNew        = "new"
	AdmissionRepeat     = "repeat"
	AdmissionSameKey    = "same-key retry"
	AdmissionReadmitted = "readmitted"
)

// Metric names ("metric" attribute), one per kind of outcome an operator
// alarms on.
const (
	MetricAdmitted    = "ProvisioningAdmitted"
	MetricDenied      = "ProvisioningDenied"
	MetricClone       = "ProvisioningDeniedAlreadyProvisioned"
	MetricRevoking    = "ProvisioningDeniedRevoking"
	MetricHookFailure = "ProvisioningHookFailure"
)

// decision is the outcome of one request and what its log line says.
type decision struct {
	serial    string
	reason    string
	err       error
	admission string
	retired   string // certificate id retired
	recorded  string // certificate id the registry recorded (denials)
}

func (d decision) metric() string {
	switch d.reason {
	case ReasonAdmitted:
		return MetricAdmitted
	case ReasonAlreadyProvisioned:
		return MetricClone
	case ReasonRevoking:
		return MetricRevoking
	case ReasonRegistryError, ReasonRetireFailed, ReasonConflict:
		return MetricHookFailure
	}
	return MetricDenied
}

// Handle answers one hook invocation. Every failure, including a registry
// or IoT that does not answer in time, is a denial (allowProvisioning
// false); Handle itself never returns an error, so IoT always gets a
// decision and the log says why.
func (h *Handler) Handle(ctx context.Context, req protocol.PreProvisioningHookRequest) (protocol.PreProvisioningHookResponse, error) {
	start := time.Now()
	// The certificate's expiry goes into the registry's expiry index (the
	// rotation scan's query), its public key hash into the record. A PEM
	// that does not parse does not deny a new device: its expiry and key
	// are recorded as unknown and the log line says so.
	var cert registry.Certificate
	leaf, perr := parseCertificatePEM(req.CertificatePEM)
	if perr == nil {
		cert.NotAfter = leaf.NotAfter
		cert.PublicKeySHA256 = PublicKeySHA256(leaf)
	}
	cert.ID = req.CertificateID
	d := h.decide(ctx, req, cert)
	allowed := d.reason == ReasonAdmitted
	attrs := []slog.Attr{
		slog.Bool("allowProvisioning", allowed),
		slog.String("reason", d.reason),
		slog.String("metric", d.metric()),
		slog.String("serial", safe(d.serial)),
		slog.String("certificateId", safe(req.CertificateID)),
		slog.String("claimCertificateId", safe(req.ClaimCertificateID)),
		slog.String("clientId", safe(req.ClientID)),
		slog.String("templateArn", safe(req.TemplateARN)),
		slog.Duration("took", time.Since(start)),
	}
	if d.admission != "" {
		attrs = append(attrs, slog.String("admission", d.admission))
	}
	if d.retired != "" {
		attrs = append(attrs, slog.String("retiredCertificateId", d.retired))
	}
	if d.recorded != "" {
		attrs = append(attrs, slog.String("recordedCertificateId", d.recorded))
	}
	if perr != nil {
		attrs = append(attrs, slog.String("certNotAfter", "unknown: "+perr.Error()))
	} else {
		attrs = append(attrs, slog.String("certNotAfter", registry.FormatTime(cert.NotAfter)),
			slog.String("publicKeySha256", cert.PublicKeySHA256))
	}
	level := slog.LevelInfo
	if d.err != nil {
		attrs = append(attrs, slog.String("error", d.err.Error()))
	}
	switch {
	case d.metric() == MetricHookFailure:
		level = slog.LevelError
	case !allowed:
		level = slog.LevelWarn
	}
	// The certificate PEM is never logged.
	h.log.LogAttrs(ctx, level, "pre-provisioning hook decision", attrs...)
	return protocol.PreProvisioningHookResponse{AllowProvisioning: allowed}, nil
}

// PublicKeySHA256 is the hex SHA-256 of c's SubjectPublicKeyInfo, the
// identity of the device key the registry records.
func PublicKeySHA256(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// check validates the request and returns the serial (as far as it could
// be read) and the reason of a denial ("" when it is well-formed).
func (h *Handler) check(req protocol.PreProvisioningHookRequest) (string, string, error) {
	if len(req.Parameters) > MaxParameters {
		return "", ReasonTooManyParameters, fmt.Errorf("%d parameters, at most %d", len(req.Parameters), MaxParameters)
	}
	for k, v := range req.Parameters {
		if len(k) > MaxParameterKey || len(v) > MaxParameterValue {
			return "", ReasonOversizedParameter, fmt.Errorf("parameter %q: key %d bytes, value %d bytes", safe(k), len(k), len(v))
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return "", ReasonMalformedParameter, fmt.Errorf("parameter %q", safe(k))
		}
	}
	serial, ok := req.Parameters[protocol.ParamSerialNumber]
	if !ok || serial == "" {
		return "", ReasonMissingSerial, nil
	}
	if len(serial) > MaxSerialLength || !h.pattern.MatchString(serial) {
		return serial, ReasonSerialPattern, nil
	}
	if req.CertificateID == "" {
		return serial, ReasonMissingCertificate, nil
	}
	if !isCertificateID(req.CertificateID) {
		return serial, ReasonBadCertificate, nil
	}
	return serial, "", nil
}

// decide returns the decision on req, whose certificate is cert.
func (h *Handler) decide(ctx context.Context, req protocol.PreProvisioningHookRequest, cert registry.Certificate) decision {
	serial, reason, err := h.check(req)
	if reason != "" {
		return decision{serial: serial, reason: reason, err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, h.budget)
	defer cancel()
	thing := ""
	if h.thingPrefix != "" {
		thing = h.thingPrefix + serial
	}
	d := decision{serial: serial}
	rec, err := h.get(ctx, serial)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		d.reason = ReasonUnknownSerial
		return d
	case err != nil:
		d.reason, d.err = ReasonRegistryError, err
		return d
	}
	switch {
	case rec.State == registry.StateAllowed,
		rec.State == registry.StateProvisioned && rec.CertificateID == req.CertificateID:
		d.admission = AdmissionNew
		if rec.State == registry.StateProvisioned {
			d.admission = AdmissionRepeat // IoT retried the hook
		}
		cctx, cancel := context.WithTimeout(ctx, h.timeout)
		defer cancel()
		_, err := h.registry.RecordProvisioned(cctx, serial, thing, cert)
		return d.written(err)
	case rec.State == registry.StateProvisioned:
		if cert.PublicKeySHA256 == "" || rec.PublicKeySHA256 != cert.PublicKeySHA256 {
			d.reason, d.recorded = ReasonAlreadyProvisioned, rec.CertificateID
			return d
		}
		d.admission = AdmissionSameKey
		return h.replace(ctx, req, rec, thing, cert, registry.RetiredSameKey, d)
	case rec.State == registry.StateReadmitted:
		d.admission = AdmissionReadmitted
		return h.replace(ctx, req, rec, thing, cert, registry.RetiredReadmitted, d)
	case rec.State == registry.StateRevoking:
		d.reason, d.recorded = ReasonRevoking, rec.CertificateID
		return d
	default:
		d.reason = ReasonRevoked
		return d
	}
}

func (h *Handler) get(ctx context.Context, serial string) (registry.Device, error) {
	cctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	return h.registry.Get(cctx, serial)
}

// written completes d with the outcome of the registry write.
func (d decision) written(err error) decision {
	switch {
	case err == nil:
		d.reason = ReasonAdmitted
	case errors.Is(err, registry.ErrNotFound):
		d.reason = ReasonUnknownSerial
	case errors.Is(err, registry.ErrConflict):
		// The sync or another hook changed the record since it was read;
		// the device retries and gets a fresh decision.
		d.reason, d.err = ReasonConflict, err
	default:
		d.reason, d.err = ReasonRegistryError, err
	}
	if d.reason != ReasonAdmitted {
		d.admission = ""
	}
	return d
}

// replace retires rec's certificate, then records cert in its place.
func (h *Handler) replace(ctx context.Context, req protocol.PreProvisioningHookRequest, rec registry.Device, thing string, cert registry.Certificate, why string, d decision) decision {
	old := rec.CertificateID
	if err := h.retire(ctx, req, rec); err != nil {
		d.reason, d.err, d.admission, d.recorded = ReasonRetireFailed, err, "", old
		return d
	}
	d.retired = old
	cctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	_, err := h.registry.ReplaceCertificate(cctx, rec.Serial, thing, cert, registry.RetiredCertificate{CertificateID: old, Reason: why})
	return d.written(err)
}

// retire takes the certificates the registry recorded for rec out of use:
// its certificate and, when a rotation is in progress, the certificate
// issued for that rotation (it is ACTIVE and may be attached to the thing;
// the replaced record forgets it). Each is REVOKED (the broker drops its
// connections), the device policy and thing principal detached. A
// certificate or thing that is gone counts as done. It refuses anything but
// recorded device certificates distinct from the request's claim and new
// certificates.
func (h *Handler) retire(ctx context.Context, req protocol.PreProvisioningHookRequest, rec registry.Device) error {
	if rec.CertificateID == "" {
		return fmt.Errorf("record of %s names no certificate to retire", rec.Serial)
	}
	ids := []string{rec.CertificateID}
	if rec.RotationCertID != "" && rec.RotationCertID != rec.CertificateID {
		ids = append(ids, rec.RotationCertID)
	}
	for _, id := range ids {
		switch id {
		case req.ClaimCertificateID:
			return fmt.Errorf("refusing to retire certificate %s: it is the claim certificate", id)
		case req.CertificateID:
			return fmt.Errorf("refusing to retire certificate %s: it is the new certificate", id)
		}
	}
	for _, id := range ids {
		if err := h.retireOne(ctx, rec, id); err != nil {
			return err
		}
	}
	return nil
}

// retireOne revokes certificate id of rec and detaches it.
func (h *Handler) retireOne(ctx context.Context, rec registry.Device, id string) error {
	var desc *iot.DescribeCertificateOutput
	if err := iotcall.Do(ctx, h.timeout, "DescribeCertificate", true, func(ctx context.Context) error {
		var err error
		desc, err = h.iot.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
		return err
	}); err != nil {
		return err
	}
	if desc == nil || desc.CertificateDescription == nil {
		return nil // deleted: nothing left to revoke or detach
	}
	cd := desc.CertificateDescription
	arn := aws.ToString(cd.CertificateArn)
	if arn == "" {
		return fmt.Errorf("DescribeCertificate %s: no certificate ARN", id)
	}
	if cd.Status != iottypes.CertificateStatusRevoked {
		if err := iotcall.Do(ctx, h.timeout, "UpdateCertificate", true, func(ctx context.Context) error {
			_, err := h.iot.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: iottypes.CertificateStatusRevoked})
			return err
		}); err != nil {
			return err
		}
	}
	if err := iotcall.Do(ctx, h.timeout, "DetachPolicy", true, func(ctx context.Context) error {
		_, err := h.iot.DetachPolicy(ctx, &iot.DetachPolicyInput{PolicyName: aws.String(h.policy), Target: aws.String(arn)})
		return err
	}); err != nil {
		return err
	}
	thing := rec.ThingName
	if thing == "" && h.thingPrefix != "" {
		thing = h.thingPrefix + rec.Serial
	}
	if thing == "" {
		return nil // no thing known: the revoked certificate cannot connect anyway
	}
	return iotcall.Do(ctx, h.timeout, "DetachThingPrincipal", true, func(ctx context.Context) error {
		_, err := h.iot.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: aws.String(thing), Principal: aws.String(arn)})
		return err
	})
}

// safe shortens s for a log line and replaces invalid UTF-8, so a hostile
// parameter cannot flood or corrupt the log.
func safe(s string) string {
	const max = 96
	if len(s) > max {
		s = s[:max] + "..."
	}
	if !utf8.ValidString(s) {
		s = fmt.Sprintf("%q", s)
	}
	return s
}

// parseCertificatePEM decodes the first certificate of a PEM bundle.
func parseCertificatePEM(s string) (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("certificatePem: no CERTIFICATE PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificatePem: %w", err)
	}
	return c, nil
}

// isCertificateID reports whether s looks like an AWS IoT certificate id:
// 64 lower-case hex digits.
func isCertificateID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
