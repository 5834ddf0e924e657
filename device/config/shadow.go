package config

import (
	"fmt"
	"time"
)

// Shadow configures the agent's named device shadow "fleet-agent"
// (docs/shadow.md): the state it reports and how often.
type Shadow struct {
	// Enabled keeps the shadow.
	Enabled bool `json:"enabled"`
	// PollInterval is how often the agent checks its state (job, OTA,
	// certificate, SSM) for changes to report.
	PollInterval Duration `json:"pollInterval"`
	// MinInterval is the shortest time between two updates (the rate
	// limit); changes within it are sent together at its end.
	MinInterval Duration `json:"minInterval"`
	// ReportInterval is how often the agent reports even without a change
	// (uptime); desired.reportInterval overrides it within
	// [minInterval, MaxReportInterval].
	ReportInterval Duration `json:"reportInterval"`
}

// MaxReportInterval is the longest report interval, in the configuration
// and in desired state.
const MaxReportInterval = 24 * time.Hour

// DefaultShadow returns the shadow defaults.
func DefaultShadow() Shadow {
	return Shadow{
		Enabled:        true,
		PollInterval:   Duration(5 * time.Second),
		MinInterval:    Duration(10 * time.Second),
		ReportInterval: Duration(5 * time.Minute),
	}
}

func (s Shadow) validate() error {
	fe := func(field, format string, args ...any) error {
		return &FieldError{Field: "shadow." + field, Problem: fmt.Sprintf(format, args...)}
	}
	if !s.Enabled {
		return nil
	}
	if s.PollInterval.D() < 100*time.Millisecond {
		return fe("pollInterval", "must be at least 100ms, got %v", s.PollInterval.D())
	}
	if s.MinInterval.D() < 100*time.Millisecond {
		return fe("minInterval", "must be at least 100ms, got %v", s.MinInterval.D())
	}
	if r := s.ReportInterval.D(); r < s.MinInterval.D() || r > MaxReportInterval {
		return fe("reportInterval", "must be between minInterval (%v) and %v, got %v", s.MinInterval.D(), MaxReportInterval, r)
	}
	return nil
}
