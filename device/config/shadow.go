package config

import "time"

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

func (s Shadow) validate(path string, errs *Errors) {
	f := func(key string) string { return join(path, key) }
	if !s.Enabled {
		return
	}
	atLeast(errs, f("pollInterval"), s.PollInterval, 100*time.Millisecond)
	atLeast(errs, f("minInterval"), s.MinInterval, 100*time.Millisecond)
	if r := s.ReportInterval.D(); r < s.MinInterval.D() || r > MaxReportInterval {
		errs.Add(f("reportInterval"), "must be between minInterval (%v) and %v, got %v", s.MinInterval.D(), MaxReportInterval, r)
	}
}
