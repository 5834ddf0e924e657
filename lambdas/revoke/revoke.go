// Package revoke is the emergency revoke Lambda: an operator (fleetctl
// revoke, or aws lambda invoke) takes one device off the fleet now, without
// a pull request and an allowlist deploy. It revokes through the same code
// the allowlist sync uses (lambdas/internal/revocation): the registry
// record moves to revoking first (the hook denies the serial from then
// on), then every certificate of the device is set REVOKED (AWS IoT closes
// its connections) and detached, the thing leaves the group and is
// deleted, SSM is turned off, and the record becomes revoked.
//
// The record keeps why, who asked and when (registry.Device.RevokeReason,
// RevokedBy, RevokedAt) and the emergency hold (RevokeEmergency): the next
// allowlist deploy does not admit the serial again even if it is still
// listed, until a readmit=TOKEN line with a token never used for the
// serial is deployed
// (docs/admission.md).
//
// Revoking a revoked device records the request again (and the hold),
// answers alreadyRevoked, and still runs the idempotent finish: it does
// not trust the registry, so a certificate of the device that is not
// REVOKED (re-activated behind the registry's back) is revoked again and
// listed in the answer. A revocation a crash or an AWS error left
// half-done (revoking) is finished. A failed call leaves the record revoking (the
// hook keeps denying it) and the invocation fails with the cause: invoke
// again, or let the next allowlist sync finish it.
package revoke

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/required"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/revocation"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

// Request is the Lambda's event: the device (Serial, or its ThingName),
// why and who asks.
type Request struct {
	Serial    string `json:"serial,omitempty"`
	ThingName string `json:"thingName,omitempty"`
	Reason    string `json:"reason"`
	By        string `json:"by"`
}

// Response says what the revocation did.
type Response struct {
	Serial    string `json:"serial"`
	ThingName string `json:"thingName"`
	// CertificateID is the certificate the registry recorded for the
	// device (empty: it never provisioned).
	CertificateID string `json:"certificateId"`
	// State is the registry state afterwards: revoked.
	State string `json:"state"`
	// AlreadyRevoked: the device was revoked before this request (which
	// was recorded, and now holds the serial out).
	AlreadyRevoked bool `json:"alreadyRevoked"`
	// RevokedCertificates are the device's certificates this request
	// found not REVOKED and set REVOKED. On an already revoked device it
	// is normally empty: any id here was active again behind the
	// registry's back.
	RevokedCertificates []string `json:"revokedCertificates"`
}

// Registry is the part of the device registry the Lambda uses.
type Registry interface {
	Get(ctx context.Context, serial string) (registry.Device, error)
	MarkEmergencyRevoking(ctx context.Context, serial, expectedCertificateID string, rev registry.Revocation) (registry.Device, error)
	MarkRevoked(ctx context.Context, serial, expectedCertificateID string) error
}

// Metric names, logged in the "metric" attribute.
const (
	// MetricRevoked is the allowlist sync's metric for a finished
	// revocation; the line also says emergency=true.
	MetricRevoked = "DeviceRevoked"
	// MetricRevocationFailed: the revocation did not finish; the record
	// stays revoking (the hook denies it). Alarm on it.
	MetricRevocationFailed = "DeviceRevocationFailed"
	// MetricCertificateReactivated: a device the registry records as
	// revoked had a certificate that was not REVOKED (re-activated behind
	// the registry's back); the request revoked it again. Alarm on it.
	MetricCertificateReactivated = "RevokedDeviceCertificateActive"
)

// Defaults of Config.
const (
	DefaultCallTimeout = 10 * time.Second
	DefaultRetryDelay  = 500 * time.Millisecond
)

// Config configures a Handler.
type Config struct {
	IoT      revocation.IoTAPI // required
	Registry Registry          // required
	// SSM and SSMState turn SSM off for the device (required).
	SSM      ssmtoggle.OffAPI
	SSMState ssmstate.Store
	// SerialPattern must match a serial in full (required).
	SerialPattern *regexp.Regexp
	// ThingGroup, DevicePolicy and ThingNamePrefix are the stack's names
	// (required; a thing name is ThingNamePrefix + serial).
	ThingGroup      string
	DevicePolicy    string
	ThingNamePrefix string
	// CallTimeout bounds each AWS call; RetryDelay is the first pause
	// before DeleteThing is retried.
	CallTimeout time.Duration
	RetryDelay  time.Duration
	Logger      *slog.Logger
}

// Handler is the revoke Lambda. It is immutable after New.
type Handler struct {
	cfg     Config
	log     *slog.Logger
	revoker *revocation.Revoker
}

// New returns the handler for cfg.
func New(cfg Config) (*Handler, error) {
	if err := required.Fields("revoke: missing",
		required.Field("IoT", cfg.IoT != nil),
		required.Field("Registry", cfg.Registry != nil),
		required.Field("SSM", cfg.SSM != nil),
		required.Field("SSMState", cfg.SSMState != nil),
		required.Field("SerialPattern", cfg.SerialPattern != nil),
		required.Field("ThingGroup", cfg.ThingGroup != ""),
		required.Field("DevicePolicy", cfg.DevicePolicy != ""),
		required.Field("ThingNamePrefix", cfg.ThingNamePrefix != ""),
	); err != nil {
		return nil, err
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Handler{cfg: cfg, log: log, revoker: &revocation.Revoker{
		IoT: cfg.IoT, Registry: cfg.Registry, SSM: cfg.SSM, SSMState: cfg.SSMState,
		ThingGroup: cfg.ThingGroup, DevicePolicy: cfg.DevicePolicy, ThingNamePrefix: cfg.ThingNamePrefix,
		CallTimeout: cfg.CallTimeout, RetryDelay: cfg.RetryDelay, Logger: log,
	}}, nil
}

// serial validates req and returns the serial it names.
func (h *Handler) serial(req Request) (string, error) {
	if err := (registry.Revocation{Reason: strings.TrimSpace(req.Reason), By: strings.TrimSpace(req.By)}).Valid(); err != nil {
		return "", fmt.Errorf("revoke: %w", err)
	}
	switch {
	case req.Serial != "" && req.ThingName != "":
		return "", errors.New("revoke: give serial or thingName, not both")
	case req.Serial != "":
		if !h.cfg.SerialPattern.MatchString(req.Serial) {
			return "", fmt.Errorf("revoke: serial %q does not match the serial pattern %s", truncate(req.Serial, 80), h.cfg.SerialPattern)
		}
		return req.Serial, nil
	case req.ThingName != "":
		serial, ok := strings.CutPrefix(req.ThingName, h.cfg.ThingNamePrefix)
		if !ok || !h.cfg.SerialPattern.MatchString(serial) {
			return "", fmt.Errorf("revoke: thingName %q is not %s followed by a serial matching %s", truncate(req.ThingName, 80), h.cfg.ThingNamePrefix, h.cfg.SerialPattern)
		}
		return serial, nil
	}
	return "", errors.New("revoke: serial (or thingName) is required")
}

// Handle revokes the device req names now.
func (h *Handler) Handle(ctx context.Context, req Request) (Response, error) {
	serial, err := h.serial(req)
	if err != nil {
		h.log.ErrorContext(ctx, "revocation refused", "error", err.Error())
		return Response{}, err
	}
	rev := registry.Revocation{Reason: strings.TrimSpace(req.Reason), By: strings.TrimSpace(req.By)}
	d, already, err := h.mark(ctx, serial, req.ThingName, rev)
	if err != nil {
		h.log.ErrorContext(ctx, "revocation failed", "serial", serial, "error", err.Error(), "metric", MetricRevocationFailed)
		return Response{}, err
	}
	// Always finish, also on a record that is already revoked: the
	// registry saying revoked does not prove that AWS IoT agrees.
	revoked, err := h.revoker.FinishReport(ctx, d)
	if revoked == nil {
		revoked = []string{}
	}
	if already && len(revoked) > 0 {
		h.log.WarnContext(ctx, "revoked device had certificates that were not REVOKED: revoked them again", "serial", serial,
			"certificateIds", revoked, "metric", MetricCertificateReactivated)
	}
	if err != nil {
		state := "revoking, which the hook denies"
		if already {
			state = "revoked, which the hook denies"
		}
		err = fmt.Errorf("revoke %s: %w (the record stays %s; invoke again or let the next allowlist sync finish it)", serial, err, state)
		h.log.ErrorContext(ctx, "revocation failed", "serial", serial, "error", err.Error(), "metric", MetricRevocationFailed)
		return Response{}, err
	}
	d.State = registry.StateRevoked
	h.log.InfoContext(ctx, "device revoked", "serial", serial, "thingName", h.revoker.ThingName(d), "certificateId", d.CertificateID,
		"emergency", true, "reason", rev.Reason, "by", rev.By, "alreadyRevoked", already, "revokedCertificates", revoked, "metric", MetricRevoked)
	return Response{Serial: serial, ThingName: h.revoker.ThingName(d), CertificateID: d.CertificateID,
		State: string(d.State), AlreadyRevoked: already, RevokedCertificates: revoked}, nil
}

// mark records the emergency revocation on serial's record (revoking
// unless it is revoked already), retrying when the record changes between
// the read and the conditional write (a device provisioning just then).
func (h *Handler) mark(ctx context.Context, serial, thingName string, rev registry.Revocation) (registry.Device, bool, error) {
	var last error
	for range 3 {
		cctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
		d, err := h.cfg.Registry.Get(cctx, serial)
		cancel()
		if errors.Is(err, registry.ErrNotFound) {
			return d, false, fmt.Errorf("revoke: serial %s has no registry record: it was never listed, so it cannot provision", serial)
		}
		if err != nil {
			return d, false, fmt.Errorf("revoke %s: %w", serial, err)
		}
		if thingName != "" && d.ThingName != "" && d.ThingName != thingName {
			return d, false, fmt.Errorf("revoke: thing %s: the registry records serial %s with thing %s", thingName, serial, d.ThingName)
		}
		already := d.State == registry.StateRevoked
		cctx, cancel = context.WithTimeout(ctx, h.cfg.CallTimeout)
		d, err = h.cfg.Registry.MarkEmergencyRevoking(cctx, serial, d.CertificateID, rev)
		cancel()
		if err == nil {
			return d, already, nil
		}
		if !errors.Is(err, registry.ErrConflict) {
			return d, false, fmt.Errorf("revoke %s: %w", serial, err)
		}
		last = err
	}
	return registry.Device{}, false, fmt.Errorf("revoke %s: %w", serial, last)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
