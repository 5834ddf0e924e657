// Package preprovision is the fleet-provisioning pre-provisioning hook: AWS
// IoT calls it before it creates a thing for a device that presented the
// claim certificate, and provisions the device only if the hook allows it.
//
// The hook admits a device only when its SerialNumber parameter matches the
// serial pattern and the registry holds the serial in state allowed or
// provisioned; it then records the new certificate id in the registry with a
// conditional write. Everything else is denied with one structured log line
// saying why. The handler keeps no per-invocation state: a Handler value is
// immutable after New, so a warm Lambda answers every invocation afresh.
package preprovision

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// Registry is the part of the device registry the hook uses.
type Registry interface {
	RecordProvisioned(ctx context.Context, serial, thingName string, cert registry.Certificate) (registry.Device, error)
}

// Limits on the request. AWS certificate ids are 64 hex digits.
const (
	MaxParameters      = 16
	MaxParameterKey    = 128
	MaxParameterValue  = 1024
	MaxSerialLength    = 128
	DefaultCallTimeout = 2 * time.Second
)

// Config configures a Handler.
type Config struct {
	// Registry records admissions. Required.
	Registry Registry
	// SerialPattern must match a serial in full (see
	// allowlist.CompilePattern). Required.
	SerialPattern *regexp.Regexp
	// ThingNamePrefix, when set, makes the hook record the thing name
	// (prefix + serial) the template will create.
	ThingNamePrefix string
	// CallTimeout bounds the registry call, so the hook answers well
	// inside IoT's 5-second limit. Default DefaultCallTimeout.
	CallTimeout time.Duration
	// Logger receives one line per decision. Default slog.Default().
	Logger *slog.Logger
}

// Handler is the hook. Its zero value is not usable; use New.
type Handler struct {
	registry    Registry
	pattern     *regexp.Regexp
	thingPrefix string
	timeout     time.Duration
	log         *slog.Logger
}

// New returns the hook handler for cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Registry == nil {
		return nil, errors.New("preprovision: nil registry")
	}
	if cfg.SerialPattern == nil {
		return nil, errors.New("preprovision: nil serial pattern")
	}
	h := &Handler{
		registry:    cfg.Registry,
		pattern:     cfg.SerialPattern,
		thingPrefix: cfg.ThingNamePrefix,
		timeout:     cfg.CallTimeout,
		log:         cfg.Logger,
	}
	if h.timeout <= 0 {
		h.timeout = DefaultCallTimeout
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	return h, nil
}

// Reasons a request is denied, as logged in the "reason" attribute.
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
	ReasonRevoked            = "serial is revoked or not admitted"
	ReasonRegistryError      = "registry unavailable"
)

// Handle answers one hook invocation. Every failure, including a registry
// that does not answer in time, is a denial (allowProvisioning false);
// Handle itself never returns an error, so IoT always gets a decision and
// the log says why.
func (h *Handler) Handle(ctx context.Context, req protocol.PreProvisioningHookRequest) (protocol.PreProvisioningHookResponse, error) {
	start := time.Now()
	// The certificate's expiry goes into the registry's expiry index (the
	// rotation scan's query). A PEM that does not parse does not deny the
	// device: its expiry is recorded as unknown and the log line says so.
	var notAfter time.Time
	leaf, perr := parseCertificatePEM(req.CertificatePEM)
	if perr == nil {
		notAfter = leaf.NotAfter
	}
	serial, reason, err := h.decide(ctx, req, notAfter)
	allowed := reason == ReasonAdmitted
	attrs := []slog.Attr{
		slog.Bool("allowProvisioning", allowed),
		slog.String("reason", reason),
		slog.String("serial", safe(serial)),
		slog.String("certificateId", safe(req.CertificateID)),
		slog.String("clientId", safe(req.ClientID)),
		slog.String("templateArn", safe(req.TemplateARN)),
		slog.Duration("took", time.Since(start)),
	}
	if perr != nil {
		attrs = append(attrs, slog.String("certNotAfter", "unknown: "+perr.Error()))
	} else {
		attrs = append(attrs, slog.String("certNotAfter", registry.FormatTime(notAfter)))
	}
	level := slog.LevelInfo
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	switch {
	case reason == ReasonRegistryError:
		level = slog.LevelError
	case !allowed:
		level = slog.LevelWarn
	}
	// The certificate PEM is never logged.
	h.log.LogAttrs(ctx, level, "pre-provisioning hook decision", attrs...)
	return protocol.PreProvisioningHookResponse{AllowProvisioning: allowed}, nil
}

// decide returns the serial (as far as it could be read), the reason of the
// decision (ReasonAdmitted to allow) and the underlying error if any.
func (h *Handler) decide(ctx context.Context, req protocol.PreProvisioningHookRequest, notAfter time.Time) (string, string, error) {
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
	thing := ""
	if h.thingPrefix != "" {
		thing = h.thingPrefix + serial
	}
	cert := registry.Certificate{ID: req.CertificateID, NotAfter: notAfter}
	cctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	_, err := h.registry.RecordProvisioned(cctx, serial, thing, cert)
	switch {
	case err == nil:
		return serial, ReasonAdmitted, nil
	case errors.Is(err, registry.ErrNotFound):
		return serial, ReasonUnknownSerial, nil
	case errors.Is(err, registry.ErrConflict):
		return serial, ReasonRevoked, err
	default:
		return serial, ReasonRegistryError, err
	}
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
