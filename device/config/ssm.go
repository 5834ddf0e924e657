package config

import (
	"path/filepath"
	"time"
)

// SSM configures AWS Systems Manager on demand (docs/ssm.md): what the
// agent runs when the cloud activates or deactivates the SSM agent. Every
// command is a program and its arguments (no shell).
type SSM struct {
	// Enabled subscribes to cmd/fleet/<thing>/ssm.
	Enabled bool `json:"enabled"`
	// AgentPath is the amazon-ssm-agent binary; InstallCommand runs when
	// it is missing.
	AgentPath string `json:"agentPath"`
	// InstallCommand installs the agent (e.g. apt-get install -y
	// amazon-ssm-agent, or dpkg -i with a package path); empty: the image
	// must ship the agent.
	InstallCommand []string `json:"installCommand"`
	// StartCommand enables and starts the service after registration.
	StartCommand []string `json:"startCommand"`
	// StopCommand stops and disables it (before registration and on
	// deactivate).
	StopCommand []string `json:"stopCommand"`
	// ClearCommand clears the registration on deactivate (empty: none).
	ClearCommand []string `json:"clearCommand"`
	// UninstallCommand removes the agent on deactivate (empty: it stays
	// installed, disabled).
	UninstallCommand []string `json:"uninstallCommand"`
	// RegistrationFile is where the agent stores its managed instance id.
	RegistrationFile string `json:"registrationFile"`
	// CommandTimeout bounds each command.
	CommandTimeout Duration `json:"commandTimeout"`
}

// DefaultSSM returns the SSM defaults.
func DefaultSSM() SSM {
	return SSM{
		Enabled:          true,
		AgentPath:        "/usr/bin/amazon-ssm-agent",
		InstallCommand:   []string{"apt-get", "install", "-y", "amazon-ssm-agent"},
		StartCommand:     []string{"systemctl", "enable", "--now", "amazon-ssm-agent"},
		StopCommand:      []string{"systemctl", "disable", "--now", "amazon-ssm-agent"},
		ClearCommand:     []string{"/usr/bin/amazon-ssm-agent", "-register", "-clear"},
		UninstallCommand: []string{},
		RegistrationFile: "/var/lib/amazon/ssm/registration",
		CommandTimeout:   Duration(10 * time.Minute),
	}
}

func (s SSM) validate(path string, errs *Errors) {
	f := func(key string) string { return join(path, key) }
	if !s.Enabled {
		return
	}
	if !filepath.IsAbs(s.AgentPath) {
		errs.Add(f("agentPath"), "must be an absolute path, got %q", s.AgentPath)
	}
	if s.RegistrationFile != "" && !filepath.IsAbs(s.RegistrationFile) {
		errs.Add(f("registrationFile"), "must be an absolute path, got %q", s.RegistrationFile)
	}
	for _, c := range []struct {
		name     string
		argv     []string
		required bool
	}{
		{"installCommand", s.InstallCommand, false}, {"startCommand", s.StartCommand, true},
		{"stopCommand", s.StopCommand, true}, {"clearCommand", s.ClearCommand, false},
		{"uninstallCommand", s.UninstallCommand, false},
	} {
		if c.required && len(c.argv) == 0 {
			errs.Add(f(c.name), "is required (program and arguments)")
		}
		for i, a := range c.argv {
			if a == "" {
				errs.Add(index(f(c.name), i), "is empty")
			}
		}
	}
	atLeast(errs, f("commandTimeout"), s.CommandTimeout, time.Second)
}
