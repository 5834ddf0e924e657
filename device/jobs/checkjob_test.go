package jobs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
)

func TestCheckJobMain(t *testing.T) {
	dir := filepath.Join("testdata", "checkjob")
	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := CheckJobMain(args, &out, &errOut, CheckJobOptions{})
		return code, out.String(), errOut.String()
	}

	code, out, errOut := run("--handler-dir", "/var/lib/fleet-agent/jobs", filepath.Join(dir, "install-and-cleanup.json"), filepath.Join(dir, "old-schema.json"))
	assert.Equal(t, 0, code, errOut)
	assert.Empty(t, errOut)
	assert.Contains(t, out, "install-and-cleanup.json: valid\nschema 1.0 (standard job document): 2 step(s) and a final step")
	assert.Contains(t, out, `/var/lib/fleet-agent/jobs/install-packages.sh "root" wget`)
	assert.Contains(t, out, `runCommand as the agent's user, no shell: echo "Hello, World!"`)
	assert.Contains(t, out, `final step "Remove-Packages" (runs only if every step succeeded`)
	assert.Contains(t, out, "old-schema.json: valid\nold schema (single operation): 1 step(s)")
	assert.Contains(t, out, "more than 2 line(s) to stderr")

	code, _, errOut = run(filepath.Join(dir, "bad-ignore.json"))
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `bad-ignore.json: INVALID: field steps[0].action.ignoreStepFailure: must be the string "true" or "false", got a boolean`)

	code, _, errOut = run(filepath.Join(dir, "bad-handler.json"))
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `field steps[0].action.input.handler: handler name "../../bin/rm" contains a path separator`)

	code, _, errOut = run(filepath.Join(dir, "truncated.json"))
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "truncated.json: INVALID: field (document): invalid JSON")

	// One invalid file among valid ones fails the run; the valid plan is
	// still printed.
	code, out, errOut = run(filepath.Join(dir, "old-schema.json"), filepath.Join(dir, "missing.json"))
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "old-schema.json: valid")
	assert.Contains(t, errOut, "missing.json: cannot read")

	code, _, errOut = run()
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "usage: fleet-agent check-job")

	// With the OTA operation registered, its documents validate.
	reg := NewRegistry()
	_ = reg.Register("mender_install", &rebootOp{})
	var out2, err2 bytes.Buffer
	code = CheckJobMain([]string{filepath.Join(dir, "ota.json")}, &out2, &err2, CheckJobOptions{Operations: reg})
	assert.Equal(t, 0, code, err2.String())
	assert.Contains(t, out2.String(), `operation "mender_install" (built into the agent), input fields: url`)
	code = CheckJobMain([]string{filepath.Join(dir, "ota.json")}, &out2, &err2, CheckJobOptions{})
	assert.Equal(t, 1, code)
	assert.Contains(t, err2.String(), `field url: unknown field (operation "mender_install" is not a registered operation`)
}

// check-job applies the device's runCommand rule from its configuration
// file and says what it would refuse and why.
func TestCheckJobAppliesRunCommandRule(t *testing.T) {
	dir := filepath.Join("testdata", "checkjob")
	sample := filepath.Join(dir, "install-and-cleanup.json")
	old := filepath.Join(dir, "old-schema.json")
	writeConfig := func(jobs string) string {
		p := filepath.Join(t.TempDir(), "config.json")
		require.NoError(t, os.WriteFile(p, []byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t"},"jobs":`+jobs+`}`), 0o600))
		return p
	}
	load := func(path string) (*Registry, jobdoc.RunCommandPolicy, error) {
		cfg, err := config.Load(path)
		if err == nil {
			err = cfg.Validate()
		}
		return nil, cfg.Jobs.RunCommandPolicy(), err
	}
	run := func(opts CheckJobOptions, args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		opts.Load = load
		code := CheckJobMain(args, &out, &errOut, opts)
		return code, out.String(), errOut.String()
	}

	off := writeConfig(`{"runCommand":{"enabled":false}}`)
	code, out, errOut := run(CheckJobOptions{}, "--config", off, sample, old)
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "runCommand steps: refused (jobs.runCommand.enabled is false) [from "+off+"]")
	assert.Contains(t, errOut, "install-and-cleanup.json: INVALID: field steps[1].action.type: runCommand steps are disabled on this device (agent configuration jobs.runCommand.enabled is false)")
	assert.Contains(t, out, "old-schema.json: valid", "runHandler jobs are unaffected")

	only := writeConfig(`{"runCommand":{"allowedExecutables":["/bin/echo"]}}`)
	code, _, errOut = run(CheckJobOptions{}, "--config", only, sample)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `field steps[1].action.input.command: executable "echo" is not in jobs.runCommand.allowedExecutables of this device (allowed: /bin/echo)`)

	echo := writeConfig(`{"runCommand":{"allowedExecutables":["echo"]}}`)
	code, out, errOut = run(CheckJobOptions{}, "--config", echo, sample)
	assert.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "runCommand steps: allowed for echo only")
	assert.Contains(t, out, "install-and-cleanup.json: valid")

	// The default configuration file applies when it exists; without it
	// the agent's defaults apply, and check-job says so.
	code, out, _ = run(CheckJobOptions{DefaultConfig: off}, sample)
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "[from "+off+"]")
	missing := filepath.Join(t.TempDir(), "none.json")
	code, out, errOut = run(CheckJobOptions{DefaultConfig: missing}, sample)
	assert.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "runCommand steps: allowed, any executable (jobs.runCommand.allowedExecutables is empty) [agent defaults: "+missing+" does not exist]")

	// An explicit configuration that is missing or invalid is an error, not
	// a silent fallback to the defaults.
	code, _, errOut = run(CheckJobOptions{}, "--config", missing, sample)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "check-job: agent configuration "+missing)
	bad := writeConfig(`{"runCommand":{"allowedExecutables":["bin/sh"]}}`)
	code, _, errOut = run(CheckJobOptions{}, "--config", bad, sample)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "jobs.runCommand.allowedExecutables[0]")
}

// check-job says which rule resolves each runHandler step: AWS's echo.json
// runs echo from PATH, reboot.json's handler comes from the handler
// directory, and with jobs.pathExecutables false echo is not resolved,
// naming the setting.
func TestCheckJobShowsHandlerRule(t *testing.T) {
	handlers := filepath.Join(t.TempDir(), "handlers")
	require.NoError(t, os.Mkdir(handlers, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(handlers, "reboot.sh"), []byte("#!/bin/sh\nexit 0\n"), 0o700))
	// The shape of the Device Client's sample echo and reboot documents.
	docs := t.TempDir()
	echo, reboot := filepath.Join(docs, "echo.json"), filepath.Join(docs, "reboot.json")
	require.NoError(t, os.WriteFile(echo, []byte(`{"version":"1.0","steps":[{"action":{"name":"Echo Messages","type":"runHandler",
		"input":{"handler":"echo","args":["Hello IoT World!"]}}}]}`), 0o600))
	require.NoError(t, os.WriteFile(reboot, []byte(`{"version":"1.0","steps":[{"action":{"name":"Reboot Device","type":"runHandler",
		"input":{"handler":"reboot.sh"},"runAsUser":"root"}}]}`), 0o600))
	cfg := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(cfg, []byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t"},"jobs":{"pathExecutables":false}}`), 0o600))
	opts := CheckJobOptions{DefaultConfig: filepath.Join(t.TempDir(), "none.json"), Load: func(path string) (*Registry, jobdoc.RunCommandPolicy, error) {
		c, err := config.Load(path)
		return nil, c.Jobs.RunCommandPolicy(), err
	}}
	t.Setenv("PATH", "/usr/bin:/bin")

	var out, errOut bytes.Buffer
	code := CheckJobMain([]string{"--handler-dir", handlers, echo, reboot}, &out, &errOut, opts)
	require.Equal(t, 0, code, errOut.String())
	assert.Contains(t, out.String(), "handlers not in the handler directory: run from the agent's PATH, any executable\n")
	assert.Contains(t, out.String(), `    runHandler "echo" from `+handlers+` (the handler directory) if it is there, else the executable "echo" from the agent's PATH (jobs.pathExecutables, subject to the runCommand rule)
    resolved by rule: PATH -> /usr/bin/echo (found in this machine's PATH; the agent's PATH decides on the device)
    runs as the agent's user: /usr/bin/echo "" "Hello IoT World!"   (first argument: runAsUser)
`)
	assert.Contains(t, out.String(), "    resolved by rule: handler directory -> "+filepath.Join(handlers, "reboot.sh")+"\n")

	out.Reset()
	errOut.Reset()
	code = CheckJobMain([]string{"--config", cfg, "--handler-dir", handlers, echo}, &out, &errOut, opts)
	require.Equal(t, 0, code, errOut.String())
	assert.Contains(t, out.String(), "handlers not in the handler directory: refused (jobs.pathExecutables is false)\n")
	assert.Contains(t, out.String(), `    NOT RESOLVED here: handler "echo" is not in the handler directory, and executables from PATH are disabled on this device (agent configuration jobs.pathExecutables is false)`)
}
