package jobdoc

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Names of the agent configuration keys behind RunCommandPolicy; rejections
// name them so an operator knows which rule refused a step.
const (
	ConfigRunCommandEnabled            = "jobs.runCommand.enabled"
	ConfigRunCommandAllowedExecutables = "jobs.runCommand.allowedExecutables"
	ConfigPathExecutables              = "jobs.pathExecutables"
)

// RunCommandPolicy is the device's rule for schema-1.0 runCommand steps
// (agent configuration jobs.runCommand). The zero value allows every
// runCommand step, as the AWS IoT Device Client does.
type RunCommandPolicy struct {
	// Disabled refuses every runCommand step (jobs.runCommand.enabled
	// false).
	Disabled bool
	// AllowedExecutables, when not empty, is the list of programs a
	// runCommand step may name as its first token: absolute paths or bare
	// names (looked up in the agent's PATH when the step runs). The first
	// token must equal an entry exactly; "echo" does not allow
	// "/bin/echo" nor the reverse, and no relative path is ever allowed.
	AllowedExecutables []string
	// PathExecutablesDisabled refuses runHandler steps (and old-schema
	// operations) that would run an executable from the agent's PATH
	// because their handler is not in the handler directory
	// (jobs.pathExecutables false). The zero value allows them, as the
	// AWS IoT Device Client does ("a well known executable binary in the
	// Device Client's environment path, such as echo or apt-get").
	PathExecutablesDisabled bool
}

// CheckPathExecutable reports why the policy refuses running name from
// the agent's PATH for a runHandler step, or nil if it is allowed. Such a
// step is a command chosen by the job document, so the runCommand rule
// governs it too: jobs.runCommand.enabled false refuses it, and a
// non-empty jobs.runCommand.allowedExecutables must list the bare name.
func (p RunCommandPolicy) CheckPathExecutable(name string) error {
	switch {
	case p.PathExecutablesDisabled:
		return fmt.Errorf("handler %s is not in the handler directory, and executables from PATH are disabled on this device (agent configuration %s is false)", strconv.Quote(name), ConfigPathExecutables)
	case p.Disabled:
		return fmt.Errorf("handler %s is not in the handler directory, and running it from PATH is a command from the job document, which this device refuses (agent configuration %s is false)", strconv.Quote(name), ConfigRunCommandEnabled)
	case len(p.AllowedExecutables) > 0 && !slices.Contains(p.AllowedExecutables, name):
		return fmt.Errorf("handler %s is not in the handler directory, and executable %s is not in %s of this device (allowed: %s)",
			strconv.Quote(name), strconv.Quote(name), ConfigRunCommandAllowedExecutables, strings.Join(quoteAll(p.AllowedExecutables), ", "))
	}
	return nil
}

// Check reports why the policy refuses a runCommand step whose program
// (first token) is program, or nil if it is allowed.
func (p RunCommandPolicy) Check(program string) error {
	if p.Disabled {
		return fmt.Errorf("runCommand steps are disabled on this device (agent configuration %s is false)", ConfigRunCommandEnabled)
	}
	if len(p.AllowedExecutables) == 0 || slices.Contains(p.AllowedExecutables, program) {
		return nil
	}
	return fmt.Errorf("executable %s is not in %s of this device (allowed: %s)",
		strconv.Quote(program), ConfigRunCommandAllowedExecutables, strings.Join(quoteAll(p.AllowedExecutables), ", "))
}

// Describe is the policy in one line, for check-job.
func (p RunCommandPolicy) Describe() string {
	switch {
	case p.Disabled:
		return "runCommand steps: refused (" + ConfigRunCommandEnabled + " is false)"
	case len(p.AllowedExecutables) == 0:
		return "runCommand steps: allowed, any executable (" + ConfigRunCommandAllowedExecutables + " is empty)"
	}
	return "runCommand steps: allowed for " + strings.Join(quoteAll(p.AllowedExecutables), ", ") + " only (" + ConfigRunCommandAllowedExecutables + ")"
}

// DescribePath is the rule for handlers that are not in the handler
// directory, in one line, for check-job.
func (p RunCommandPolicy) DescribePath() string {
	switch {
	case p.PathExecutablesDisabled:
		return "handlers not in the handler directory: refused (" + ConfigPathExecutables + " is false)"
	case p.Disabled:
		return "handlers not in the handler directory: refused (" + ConfigRunCommandEnabled + " is false)"
	case len(p.AllowedExecutables) == 0:
		return "handlers not in the handler directory: run from the agent's PATH, any executable"
	}
	return "handlers not in the handler directory: run from the agent's PATH for " + strings.Join(quoteAll(p.AllowedExecutables), ", ") + " only (" + ConfigRunCommandAllowedExecutables + ")"
}

// ValidateExecutable checks one entry of AllowedExecutables: an absolute,
// clean path or a bare file name, which a runCommand first token can
// equal.
func ValidateExecutable(entry string) error {
	switch {
	case entry == "":
		return fmt.Errorf("must not be empty")
	case strings.ContainsFunc(entry, isControl) || strings.ContainsAny(entry, " \t"):
		return fmt.Errorf("%q contains white space or a control character", entry)
	case strings.HasPrefix(entry, "-"):
		return fmt.Errorf("%q must not start with \"-\"", entry)
	case strings.HasPrefix(entry, "/"):
		if filepath.Clean(entry) != entry {
			return fmt.Errorf("%q is not a clean absolute path (want %q)", entry, filepath.Clean(entry))
		}
	case strings.Contains(entry, "/"):
		return fmt.Errorf("%q must be an absolute path or a bare program name, not a relative path", entry)
	case entry == "." || entry == "..":
		return fmt.Errorf("%q is not a program name", entry)
	}
	return nil
}
