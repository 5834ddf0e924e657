package jobs

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// touchDoc is a one-step document that creates file in the work dir.
func (h *harness) touchDoc(file string) string {
	return `{"version":"1.0","steps":[{"action":{"name":"touch","type":"runCommand","input":{"command":"touch,` + filepath.Join(h.work, file) + `"}}}]}`
}

// assertNoStorm checks the engine asked for jobs a bounded number of times: a
// document it cannot use is rejected, never re-requested until a timeout.
func (h *harness) assertNoStorm(jobs int) {
	h.t.Helper()
	h.waitIdle()
	// One after each job and one per notify-next that arrives while idle;
	// a loop would make thousands.
	assert.LessOrEqual(h.t, h.svc.startNextCount(), 2*jobs+2, "start-next requests for %d jobs", jobs)
}

// A document with the same key twice reads one way to a reviewer and
// another way to the device (encoding/json keeps the last). The device sees
// the exact text and rejects it, naming the key, and runs the next job.
func TestDuplicateKeysAreRejected(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.svc.addJob(t, "dup-top", `{"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"touch,`+filepath.Join(h.work, "a")+`"}}}],
		"steps":[{"action":{"name":"b","type":"runCommand","input":{"command":"touch,`+filepath.Join(h.work, "b")+`"}}}]}`)
	h.svc.addJob(t, "dup-nested", `{"version":"1.0","steps":[{"action":{"name":"c","type":"runCommand",
		"input":{"command":"true","command":"touch,`+filepath.Join(h.work, "c")+`"}}}]}`)
	h.svc.addJob(t, "good", h.touchDoc("good"))

	ex := h.waitStatus("dup-top", protocol.JobRejected)
	assert.Equal(t, `invalid job document: steps: duplicate key "steps": the field appears more than once in the same object (JSON decoders disagree on which one counts)`, ex.StatusDetails[DetailReason])
	ex = h.waitStatus("dup-nested", protocol.JobRejected)
	assert.Contains(t, ex.StatusDetails[DetailReason], `invalid job document: steps[0].action.input.command: duplicate key "command"`)
	h.waitStatus("good", protocol.JobSucceeded)
	for _, f := range []string{"a", "b", "c"} {
		assert.NoFileExists(t, filepath.Join(h.work, f), "no step of a rejected document runs")
	}
	assert.FileExists(t, filepath.Join(h.work, "good"))
	h.assertNoStorm(3)
}

// Documents that are JSON but cannot be decoded, or are not objects, are
// rejected at once with the problem named, and the next job runs. The
// Jobs service stores the objects with numbers out of range (AWS does);
// the others it refuses to store, so only a broken or hostile service
// could send them: the transport forges those.
func TestUndecodableDocumentsAreRejectedAtOnce(t *testing.T) {
	h := newHarness(t)
	h.start()
	valid := `"steps":[{"action":{"name":"x","type":"runCommand","input":{"command":"touch,` + filepath.Join(h.work, "x") + `"}}}]`
	cases := []struct {
		id, doc, reason string
		forged          bool
	}{
		{"big-number", `{"version":"1.0",` + valid + `, "x": 1e999}`, "invalid job document: x: the number 1e999 cannot be decoded: it is outside the range of a 64-bit floating-point number", false},
		{"big-number-comment", `{"_comment":-1e400,"version":"1.0",` + valid + `}`, "invalid job document: _comment: the number -1e400 cannot be decoded", false},
		{"string", `"run everything"`, "invalid job document: must be a JSON object, got a string", true},
		{"array", `[{"version":"1.0"}]`, "invalid job document: must be a JSON object, got an array", true},
		{"null", `null`, "invalid job document: must be a JSON object, got null", true},
		{"number", `1e999`, "invalid job document: the number 1e999 cannot be decoded", true},
		{"bad-utf8", "{\"operation\":\"a\xff.sh\"}", "invalid job document: invalid UTF-8 at byte 15", true},
	}
	for _, c := range cases {
		if c.forged {
			h.addForgedJob(t, c.id, c.doc)
		} else {
			h.svc.addJob(t, c.id, c.doc)
		}
	}
	h.svc.addJob(t, "good", h.touchDoc("good"))
	for _, c := range cases {
		ex := h.waitStatus(c.id, protocol.JobRejected)
		assert.Contains(t, ex.StatusDetails[DetailReason], c.reason, c.id)
	}
	h.waitStatus("good", protocol.JobSucceeded)
	assert.NoFileExists(t, filepath.Join(h.work, "x"))
	h.assertNoStorm(len(cases) + 1)
}

// A response that is not decodable JSON at all names no job: here a
// document the service stores (valid JSON, nested to the decoder's depth
// limit) whose response, two levels deeper, exceeds it. The engine
// describes $next without the document, rejects the execution start-next
// put in progress, and runs the next job.
func TestUndecodableResponseRejectsItsExecution(t *testing.T) {
	h := newHarness(t)
	h.start()
	deep := `{"version":"1.0","_c":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `,"steps":[]}`
	require.True(t, json.Valid([]byte(deep)), "the document itself is within the depth limit")
	require.Less(t, len(deep), jobdoc.MaxDocumentBytes)
	h.svc.addJob(t, "deep", deep)
	h.svc.addJob(t, "good", h.touchDoc("good"))
	ex := h.waitStatus("deep", protocol.JobRejected)
	assert.Contains(t, ex.StatusDetails[DetailReason], "invalid job document: the Jobs response carrying it could not be decoded")
	assert.Contains(t, ex.StatusDetails[DetailReason], "exceeded max depth")
	h.waitStatus("good", protocol.JobSucceeded)
	h.assertNoStorm(2)
	assert.Len(t, h.tr.sentTo(protocol.JobsDescribeTopic(thing, "$next")), 1, "describe $next requests")
}

// The size limit measures the document's own bytes, not a re-encoding of
// it. The Jobs service refuses to store a document over AWS's limit, so
// only a broken or hostile service could send one: the transport forges
// it.
func TestOversizedDocumentRejected(t *testing.T) {
	h := newHarness(t)
	h.start()
	padded := `{"version":"1.0",` + strings.Repeat(" ", jobdoc.MaxDocumentBytes) + `"steps":[{"action":{"name":"x","type":"runCommand","input":{"command":"touch,` + filepath.Join(h.work, "x") + `"}}}]}`
	h.addForgedJob(t, "padded", padded)
	h.svc.addJob(t, "good", h.touchDoc("good"))
	ex := h.waitStatus("padded", protocol.JobRejected)
	assert.Contains(t, ex.StatusDetails[DetailReason], "larger than the 32768-byte limit")
	h.waitStatus("good", protocol.JobSucceeded)
	assert.NoFileExists(t, filepath.Join(h.work, "x"))
}

// jobs.runCommand: disabled refuses every runCommand step before any step
// runs; an allowlist refuses other executables and runs the listed ones.
func TestRunCommandPolicy(t *testing.T) {
	t.Run("disabled", func(t *testing.T) {
		h := newHarness(t)
		h.cfg = func(c *Config) { c.RunCommand = jobdoc.RunCommandPolicy{Disabled: true} }
		h.handler("first.sh", `touch "$WORK/first"`, 0o700)
		h.handler("ok.sh", `touch "$WORK/ok"`, 0o700)
		h.start()
		h.svc.addJob(t, "cmd", `{"version":"1.0","steps":[
			{"action":{"name":"first","type":"runHandler","input":{"handler":"first.sh"}}},
			{"action":{"name":"cmd","type":"runCommand","input":{"command":"touch,`+filepath.Join(h.work, "cmd")+`"}}}]}`)
		h.svc.addJob(t, "handler", `{"version":"1.0","steps":[{"action":{"name":"ok","type":"runHandler","input":{"handler":"ok.sh"}}}]}`)
		ex := h.waitStatus("cmd", protocol.JobRejected)
		assert.Equal(t, "invalid job document: steps[1].action.type: runCommand steps are disabled on this device (agent configuration jobs.runCommand.enabled is false)", ex.StatusDetails[DetailReason])
		h.waitStatus("handler", protocol.JobSucceeded)
		assert.NoFileExists(t, filepath.Join(h.work, "first"), "validation refuses the job before its first step")
		assert.NoFileExists(t, filepath.Join(h.work, "cmd"))
		assert.FileExists(t, filepath.Join(h.work, "ok"))
	})
	t.Run("allowlist", func(t *testing.T) {
		h := newHarness(t)
		h.cfg = func(c *Config) { c.RunCommand = jobdoc.RunCommandPolicy{AllowedExecutables: []string{"touch"}} }
		h.start()
		h.svc.addJob(t, "rm", `{"version":"1.0","steps":[{"action":{"name":"t","type":"runCommand","input":{"command":"touch,`+filepath.Join(h.work, "before")+`"}}}],
			"finalStep":{"action":{"name":"rm","type":"runCommand","input":{"command":"rm,-f,`+filepath.Join(h.work, "keep")+`"}}}}`)
		h.svc.addJob(t, "abs", `{"version":"1.0","steps":[{"action":{"name":"t","type":"runCommand","input":{"command":"/usr/bin/touch,`+filepath.Join(h.work, "abs")+`"}}}]}`)
		h.svc.addJob(t, "ok", h.touchDoc("ok"))
		ex := h.waitStatus("rm", protocol.JobRejected)
		assert.Equal(t, `invalid job document: finalStep.action.input.command: executable "rm" is not in jobs.runCommand.allowedExecutables of this device (allowed: touch)`, ex.StatusDetails[DetailReason])
		ex = h.waitStatus("abs", protocol.JobRejected)
		assert.Contains(t, ex.StatusDetails[DetailReason], `executable "/usr/bin/touch" is not in jobs.runCommand.allowedExecutables`)
		h.waitStatus("ok", protocol.JobSucceeded)
		assert.FileExists(t, filepath.Join(h.work, "ok"))
		assert.NoFileExists(t, filepath.Join(h.work, "before"))
		assert.NoFileExists(t, filepath.Join(h.work, "abs"))
	})
}

// The state file keeps the document's text at its size, so a document that
// was valid when adopted is still valid after a restart ("<" and "&" are
// not escaped to six bytes each).
func TestStateKeepsDocumentText(t *testing.T) {
	dir := t.TempDir()
	doc := `{"operation":"a.sh","args":["<&>","` + strings.Repeat("&", 1000) + `"]}`
	st := &persistedState{Format: stateFormat, Job: &jobState{JobID: "j", Document: []byte(doc)}}
	require.NoError(t, saveState(dir, st))
	raw, err := os.ReadFile(statePath(dir))
	require.NoError(t, err)
	assert.Contains(t, string(raw), doc)
	got, err := loadState(dir)
	require.NoError(t, err)
	assert.Equal(t, doc, string(got.Job.Document))
}
