package jobdoc

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRunCommandPolicy(t *testing.T) {
	echo := step(`{"name":"hello","type":"runCommand","input":{"command":"echo,hello"}}`)
	abs := step(`{"name":"hello","type":"runCommand","input":{"command":"/bin/echo,hello"}}`)
	final := `{"version":"1.0","steps":[{"action":{"name":"h","type":"runHandler","input":{"handler":"a.sh"}}}],
		"finalStep":{"action":{"name":"clean","type":"runCommand","input":{"command":"rm,-rf,/tmp/x"}}}}`
	handler := step(`{"name":"h","type":"runHandler","input":{"handler":"a.sh"}}`)
	disabled := RunCommandPolicy{Disabled: true}
	only := RunCommandPolicy{AllowedExecutables: []string{"/bin/echo", "true"}}

	tests := []struct {
		name    string
		doc     string
		policy  RunCommandPolicy
		field   string // "" means the document is valid
		problem string
	}{
		{"default allows any", echo, RunCommandPolicy{}, "", ""},
		{"disabled refuses", echo, disabled, "steps[0].action.type", "runCommand steps are disabled on this device (agent configuration jobs.runCommand.enabled is false)"},
		{"disabled refuses the final step", final, disabled, "finalStep.action.type", "jobs.runCommand.enabled"},
		{"disabled refuses before the command is checked", step(`{"name":"x","type":"runCommand","input":{}}`), disabled, "steps[0].action.type", "jobs.runCommand.enabled"},
		{"disabled keeps runHandler", handler, disabled, "", ""},
		{"disabled with allowlist still refuses", abs, RunCommandPolicy{Disabled: true, AllowedExecutables: []string{"/bin/echo"}}, "steps[0].action.type", "jobs.runCommand.enabled"},
		{"absolute entry allows the same path", abs, only, "", ""},
		{"absolute entry does not allow the bare name", echo, only, "steps[0].action.input.command", `executable "echo" is not in jobs.runCommand.allowedExecutables of this device (allowed: /bin/echo, true)`},
		{"bare entry allows the bare name", step(`{"name":"t","type":"runCommand","input":{"command":"true"}}`), only, "", ""},
		{"bare entry does not allow a path", step(`{"name":"t","type":"runCommand","input":{"command":"/usr/bin/true"}}`), only, "steps[0].action.input.command", `executable "/usr/bin/true" is not in`},
		{"unclean path is not the entry", step(`{"name":"t","type":"runCommand","input":{"command":"/bin/../bin/echo"}}`), only, "steps[0].action.input.command", `"/bin/../bin/echo"`},
		{"relative path never matches", step(`{"name":"t","type":"runCommand","input":{"command":"./true"}}`), only, "steps[0].action.input.command", `"./true"`},
		{"refused final step", final, only, "finalStep.action.input.command", `executable "rm"`},
		{"escaped comma is part of the program", step(`{"name":"t","type":"runCommand","input":{"command":"tr\\,ue"}}`), only, "steps[0].action.input.command", `executable "tr,ue"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := Parse([]byte(tc.doc), Options{RunCommand: tc.policy})
			if tc.field == "" {
				require.NoError(t, err)
				require.NotNil(t, doc)
				return
			}
			var de *Error
			require.True(t, errors.As(err, &de), "want a rejection, got %v", err)
			assert.Equal(t, tc.field, de.Field)
			assert.Contains(t, de.Problem, tc.problem)
		})
	}
}

func TestRunCommandPolicyDescribe(t *testing.T) {
	assert.Contains(t, RunCommandPolicy{}.Describe(), "any executable")
	assert.Contains(t, RunCommandPolicy{Disabled: true}.Describe(), "refused (jobs.runCommand.enabled is false)")
	assert.Contains(t, RunCommandPolicy{AllowedExecutables: []string{"/bin/echo"}}.Describe(), "allowed for /bin/echo only")
}

func TestValidateExecutable(t *testing.T) {
	for _, ok := range []string{"echo", "/bin/echo", "apt-get", "/usr/local/bin/fleet-hook"} {
		assert.NoError(t, ValidateExecutable(ok), ok)
	}
	for entry, problem := range map[string]string{
		"":            "empty",
		"bin/echo":    "relative path",
		"./echo":      "relative path",
		"/bin/../sh":  "clean absolute path",
		"/bin/":       "clean absolute path",
		"-rf":         `start with "-"`,
		"echo hello":  "white space",
		"echo\x00":    "control character",
		"..":          "not a program name",
		"/usr//bin/x": "clean",
	} {
		err := ValidateExecutable(entry)
		if assert.Error(t, err, entry) {
			assert.Contains(t, err.Error(), problem, entry)
		}
	}
}

// A handler run from PATH is governed by jobs.pathExecutables and by the
// runCommand rule; each refusal names the setting. A PATH-only switch-off
// does not affect runCommand steps, and documents naming such handlers
// stay valid (whether a handler is in the handler directory is only known
// on the device).
func TestPathExecutablePolicy(t *testing.T) {
	tests := []struct {
		policy   RunCommandPolicy
		err      string
		describe string
	}{
		{RunCommandPolicy{}, "", "handlers not in the handler directory: run from the agent's PATH, any executable"},
		{RunCommandPolicy{PathExecutablesDisabled: true}, "jobs.pathExecutables is false", "handlers not in the handler directory: refused (jobs.pathExecutables is false)"},
		{RunCommandPolicy{Disabled: true}, "jobs.runCommand.enabled is false", "handlers not in the handler directory: refused (jobs.runCommand.enabled is false)"},
		{RunCommandPolicy{AllowedExecutables: []string{"/bin/echo"}}, `executable "echo" is not in jobs.runCommand.allowedExecutables of this device (allowed: /bin/echo)`, "handlers not in the handler directory: run from the agent's PATH for /bin/echo only (jobs.runCommand.allowedExecutables)"},
		{RunCommandPolicy{AllowedExecutables: []string{"echo"}}, "", "handlers not in the handler directory: run from the agent's PATH for echo only (jobs.runCommand.allowedExecutables)"},
	}
	for _, tc := range tests {
		err := tc.policy.CheckPathExecutable("echo")
		if tc.err == "" {
			assert.NoError(t, err, "%+v", tc.policy)
		} else {
			assert.ErrorContains(t, err, tc.err, "%+v", tc.policy)
		}
		assert.Equal(t, tc.describe, tc.policy.DescribePath())
		_, perr := Parse([]byte(step(`{"name":"e","type":"runHandler","input":{"handler":"echo","args":["hi"]}}`)), Options{RunCommand: tc.policy})
		assert.NoError(t, perr)
	}
	p := RunCommandPolicy{PathExecutablesDisabled: true}
	assert.NoError(t, p.Check("echo"), "runCommand steps are not governed by jobs.pathExecutables")
}
