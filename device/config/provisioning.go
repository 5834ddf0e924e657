package config

import (
	"regexp"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/device/devkey"
)

// Provisioning configures provisioning by claim (the "provisioning"
// section).
type Provisioning struct {
	// ClaimCertFile and ClaimKeyFile are the shared claim certificate.
	ClaimCertFile string `json:"claimCertFile"`
	ClaimKeyFile  string `json:"claimKeyFile"`
	// TemplateName is the fleet provisioning template.
	TemplateName string `json:"templateName"`
	// Serial overrides the serial read from the hardware.
	Serial string `json:"serial"`
	// SerialFiles are tried in order when Serial is empty: a file holding
	// only the serial (device tree) or /proc/cpuinfo ("Serial : ..." line).
	SerialFiles []string `json:"serialFiles"`
	// SerialPattern is the Go regexp (anchored) a serial must match.
	SerialPattern string `json:"serialPattern"`
	// KeyAlgorithm is ecdsa-p256 or rsa-2048.
	KeyAlgorithm string `json:"keyAlgorithm"`
	// ResponseTimeout bounds the wait for each provisioning answer.
	ResponseTimeout Duration `json:"responseTimeout"`
	// RetryMin and RetryMax bound the backoff after throttling and
	// transient errors.
	RetryMin Duration `json:"retryMin"`
	RetryMax Duration `json:"retryMax"`
	// DeniedBackoff is the longest wait after the pre-provisioning hook
	// denied the device (or the request was malformed); the wait starts at
	// DeniedBackoffMin and doubles (with jitter) at each denial in a row.
	DeniedBackoff    Duration `json:"deniedBackoff"`
	DeniedBackoffMin Duration `json:"deniedBackoffMin"`
	// RecoverAfterRefusals is how many connections in a row the broker
	// must refuse the device certificate (CONNACK not authorized, a TLS
	// alert about it, or closed right after CONNECT) before the agent
	// checks it once more and, if the claim certificate still connects,
	// provisions a new identity by claim.
	RecoverAfterRefusals int `json:"recoverAfterRefusals"`
	// TokenTTL is how long a certificate ownership token is trusted before a
	// resumed provisioning asks for a new certificate instead.
	TokenTTL Duration `json:"tokenTTL"`
}

// Default serial sources on a Raspberry Pi.
const (
	DevicetreeSerialFile = "/sys/firmware/devicetree/base/serial-number"
	CPUInfoFile          = "/proc/cpuinfo"
)

// DefaultProvisioning returns the provisioning defaults (templateName has
// none: it is required).
func DefaultProvisioning() Provisioning {
	return Provisioning{
		ClaimCertFile:   "/etc/fleet-agent/claim.crt",
		ClaimKeyFile:    "/etc/fleet-agent/claim.key",
		SerialFiles:     []string{DevicetreeSerialFile, CPUInfoFile},
		SerialPattern:   "^[0-9a-f]{16}$",
		KeyAlgorithm:    string(devkey.ECDSAP256),
		ResponseTimeout: Duration(30 * time.Second),
		RetryMin:        Duration(2 * time.Second),
		RetryMax:        Duration(5 * time.Minute),
		DeniedBackoff:   Duration(time.Hour),
		TokenTTL:        Duration(4 * time.Minute),
		// Recovery after a refused certificate (docs/protocol.md).
		DeniedBackoffMin:     Duration(time.Minute),
		RecoverAfterRefusals: 3,
	}
}

// DeniedBackoffStart is the first wait after a denial: deniedBackoffMin,
// but never more than deniedBackoff (a short deniedBackoff alone, as in a
// lab, shortens both).
func (p Provisioning) DeniedBackoffStart() time.Duration {
	return min(p.DeniedBackoffMin.D(), p.DeniedBackoff.D())
}

func (p Provisioning) validate(path string, errs *Errors) {
	f := func(key string) string { return join(path, key) }
	required(errs, f("claimCertFile"), p.ClaimCertFile)
	required(errs, f("claimKeyFile"), p.ClaimKeyFile)
	switch {
	case p.TemplateName == "":
		errs.Add(f("templateName"), "is required (the fleet provisioning template name)")
	case strings.ContainsAny(p.TemplateName, "/#+ "):
		errs.Add(f("templateName"), "must not contain '/', '#', '+' or spaces, got %q", p.TemplateName)
	}
	re, err := regexp.Compile(p.SerialPattern)
	switch {
	case err != nil:
		errs.Add(f("serialPattern"), "invalid regular expression: %v", err)
	case p.SerialPattern == "":
		errs.Add(f("serialPattern"), "is required")
	case p.Serial != "" && !re.MatchString(p.Serial):
		errs.Add(f("serial"), "%q does not match serialPattern %s", p.Serial, p.SerialPattern)
	}
	if p.Serial == "" && len(p.SerialFiles) == 0 {
		errs.Add(f("serialFiles"), "must list at least one file when serial is empty")
	}
	for i, file := range p.SerialFiles {
		if file == "" {
			errs.Add(index(f("serialFiles"), i), "is empty")
		}
	}
	if !devkey.Algorithm(p.KeyAlgorithm).Valid() {
		errs.Add(f("keyAlgorithm"), "must be %q or %q, got %q", devkey.ECDSAP256, devkey.RSA2048, p.KeyAlgorithm)
	}
	atLeast(errs, f("responseTimeout"), p.ResponseTimeout, 10*time.Millisecond)
	atLeast(errs, f("retryMin"), p.RetryMin, time.Millisecond)
	atLeast(errs, f("retryMax"), p.RetryMax, time.Millisecond)
	atLeast(errs, f("deniedBackoff"), p.DeniedBackoff, time.Millisecond)
	atLeast(errs, f("deniedBackoffMin"), p.DeniedBackoffMin, time.Millisecond)
	atLeast(errs, f("tokenTTL"), p.TokenTTL, time.Second)
	if !errs.Has(f("retryMax")) && p.RetryMax < p.RetryMin {
		errs.Add(f("retryMax"), "must not be below retryMin (%v)", p.RetryMin.D())
	}
	if !errs.Has(f("deniedBackoff")) && p.DeniedBackoff < p.RetryMin {
		errs.Add(f("deniedBackoff"), "must not be below retryMin (%v): a denial must back off at least as long as a transient error", p.RetryMin.D())
	}
	if p.RecoverAfterRefusals < 1 || p.RecoverAfterRefusals > 100 {
		errs.Add(f("recoverAfterRefusals"), "must be between 1 and 100, got %d", p.RecoverAfterRefusals)
	}
}
