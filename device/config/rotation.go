package config

import "time"

// Rotation tunes certificate rotation (docs/rotation.md), which is always
// on.
type Rotation struct {
	// CertTimeout bounds the wait for the new certificate after the CSR
	// was sent; then the device keeps its old certificate and reports the
	// failure.
	CertTimeout Duration `json:"certTimeout"`
	// SwitchTimeout bounds the wait for a connection with the new
	// certificate; then the device falls back to the old one. It must be
	// at least twice mqtt.reconnectMax, so a refused connection is retried
	// before the device gives up.
	SwitchTimeout Duration `json:"switchTimeout"`
}

// DefaultRotation returns the rotation defaults.
func DefaultRotation() Rotation {
	return Rotation{CertTimeout: Duration(10 * time.Minute), SwitchTimeout: Duration(5 * time.Minute)}
}

// validate checks the "rotation" section; the rule that ties
// switchTimeout to mqtt.reconnectMax spans sections and is in config.go.
func (r Rotation) validate(path string, errs *Errors) {
	atLeast(errs, join(path, "certTimeout"), r.CertTimeout, time.Second)
	atLeast(errs, join(path, "switchTimeout"), r.SwitchTimeout, time.Second)
}
