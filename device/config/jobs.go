package config

import (
	"path/filepath"
	"slices"
	"time"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
)

// Jobs configures the jobs engine (the "jobs" section).
type Jobs struct {
	// Enabled turns the jobs engine on.
	Enabled bool `json:"enabled"`
	// HandlerDir holds the runHandler executables (mode 0700); empty means
	// <stateDir>/handlers.
	HandlerDir string `json:"handlerDir"`
	// AllowedPaths are the other directories (absolute) a job document may
	// name as a handler's `path`; empty allows none.
	AllowedPaths []string `json:"allowedPaths"`
	// StepTimeout bounds each process step; its process group is killed
	// when it elapses.
	StepTimeout Duration `json:"stepTimeout"`
	// ProgressTimeoutMinutes is sent as stepTimeoutInMinutes with every
	// IN_PROGRESS update (negative disables).
	ProgressTimeoutMinutes int64 `json:"progressTimeoutMinutes"`
	// SudoPath is the sudo used for runAsUser (empty: "sudo" from PATH).
	SudoPath string `json:"sudoPath"`
	// RunCommand is the switch for schema-1.0 runCommand steps.
	RunCommand RunCommand `json:"runCommand"`
	// PathExecutables lets a runHandler step without "path" (or an
	// old-schema operation without "path") whose handler is not in the
	// handler directory run a well-known executable of that name from the
	// agent's PATH, as the AWS IoT Device Client does (default true, so its
	// sample echo.json works). RunCommand governs it too: it is a command
	// from the job document.
	PathExecutables bool `json:"pathExecutables"`
}

// RunCommand is the device's rule for schema-1.0 runCommand steps (job
// documents that name a program and its arguments directly). A job with a
// step the rule refuses is rejected before any of its steps runs.
type RunCommand struct {
	// Enabled allows runCommand steps (default true, so the AWS IoT Device
	// Client's sample documents work). False refuses every runCommand step;
	// runHandler steps and operations are unaffected.
	Enabled bool `json:"enabled"`
	// AllowedExecutables, when not empty, are the only programs a
	// runCommand step may name as its first token: absolute paths or bare
	// names (looked up in the agent's PATH), matched exactly. Empty allows
	// any program.
	AllowedExecutables []string `json:"allowedExecutables"`
}

// DefaultJobs returns the jobs engine defaults.
func DefaultJobs() Jobs {
	return Jobs{
		Enabled:                true,
		AllowedPaths:           []string{},
		StepTimeout:            Duration(time.Hour),
		ProgressTimeoutMinutes: 10,
		RunCommand:             RunCommand{Enabled: true, AllowedExecutables: []string{}},
		PathExecutables:        true,
	}
}

// RunCommandPolicy is the jobs engine's form of the runCommand rule.
func (j Jobs) RunCommandPolicy() jobdoc.RunCommandPolicy {
	return jobdoc.RunCommandPolicy{
		Disabled:                !j.RunCommand.Enabled,
		AllowedExecutables:      slices.Clone(j.RunCommand.AllowedExecutables),
		PathExecutablesDisabled: !j.PathExecutables,
	}
}

func (j Jobs) validate(path string, errs *Errors) {
	f := func(key string) string { return join(path, key) }
	if j.HandlerDir != "" && !filepath.IsAbs(j.HandlerDir) {
		errs.Add(f("handlerDir"), "must be an absolute path, got %q", j.HandlerDir)
	}
	for i, p := range j.AllowedPaths {
		if !filepath.IsAbs(p) {
			errs.Add(index(f("allowedPaths"), i), "must be an absolute path, got %q", p)
		}
	}
	atLeast(errs, f("stepTimeout"), j.StepTimeout, time.Second)
	if j.ProgressTimeoutMinutes == 0 || j.ProgressTimeoutMinutes > 10080 {
		errs.Add(f("progressTimeoutMinutes"), "must be between 1 and 10080 (or negative to disable), got %d", j.ProgressTimeoutMinutes)
	}
	j.RunCommand.validate(f("runCommand"), errs)
}

func (r RunCommand) validate(path string, errs *Errors) {
	for i, x := range r.AllowedExecutables {
		field := index(join(path, "allowedExecutables"), i)
		if err := jobdoc.ValidateExecutable(x); err != nil {
			errs.Add(field, "%v", err)
		} else if j := slices.Index(r.AllowedExecutables, x); j < i {
			errs.Add(field, "%q is listed twice (also allowedExecutables[%d])", x, j)
		}
	}
}
