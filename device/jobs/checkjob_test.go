package jobs

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestCheckJobMain(t *testing.T) {
	dir := filepath.Join("testdata", "checkjob")
	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := CheckJobMain(args, &out, &errOut, nil)
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
	code = CheckJobMain([]string{filepath.Join(dir, "ota.json")}, &out2, &err2, reg)
	assert.Equal(t, 0, code, err2.String())
	assert.Contains(t, out2.String(), `operation "mender_install" (built into the agent), input fields: url`)
	code = CheckJobMain([]string{filepath.Join(dir, "ota.json")}, &out2, &err2, nil)
	assert.Equal(t, 1, code)
	assert.Contains(t, err2.String(), `field url: unknown field (operation "mender_install" is not a registered operation`)
}
