package config

import (
	"fmt"
	"time"
)

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

func (r Rotation) validate(m MQTT) error {
	fe := func(field, format string, args ...any) error {
		return &FieldError{Field: "rotation." + field, Problem: fmt.Sprintf(format, args...)}
	}
	if r.CertTimeout.D() < time.Second {
		return fe("certTimeout", "must be at least 1s, got %v", r.CertTimeout.D())
	}
	if r.SwitchTimeout.D() < time.Second {
		return fe("switchTimeout", "must be at least 1s, got %v", r.SwitchTimeout.D())
	}
	if r.SwitchTimeout.D() < 2*m.ReconnectMax.D() {
		return fe("switchTimeout", "must be at least twice mqtt.reconnectMax (%v), got %v", m.ReconnectMax.D(), r.SwitchTimeout.D())
	}
	return nil
}
