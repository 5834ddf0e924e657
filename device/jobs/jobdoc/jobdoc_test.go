package jobdoc

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testOps is a registry of operations for the tests: mender_install needs a
// string url starting with https://.
type testOps struct{}

func (testOps) HasOperation(name string) bool { return name == "mender_install" }

func (testOps) OperationNames() []string { return []string{"mender_install"} }

// testOpInput is testOps' typed value: what ParseOperation returns and the
// parser stores as Action.Value.
type testOpInput struct{ URL string }

func (testOps) ParseOperation(name string, input map[string]json.RawMessage) (any, error) {
	if err := validateTestOp(input); err != nil {
		return nil, err
	}
	var in testOpInput
	if err := json.Unmarshal(input["url"], &in.URL); err != nil {
		return nil, err
	}
	return in, nil
}

func validateTestOp(input map[string]json.RawMessage) error {
	raw, ok := input["url"]
	if !ok {
		return &Error{Field: "url", Problem: "required field is missing"}
	}
	var u string
	if err := json.Unmarshal(raw, &u); err != nil {
		return &Error{Field: "url", Problem: "must be a string"}
	}
	for k := range input {
		if k != "url" {
			return fmt.Errorf("unknown field %s", k)
		}
	}
	if !strings.HasPrefix(u, "https://") {
		return errors.New("url must be https")
	}
	return nil
}

func intp(n int) *int { return &n }

// step wraps an action object in a schema-1.0 document.
func step(action string) string {
	return `{"version":"1.0","steps":[{"action":` + action + `}]}`
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want Document
	}{
		{
			name: "runHandler with every field",
			doc: `{"version":"1.0","includeStdOut":true,"steps":[{"action":{"name":"Install-Packages","type":"runHandler",
				"runAsUser":"root","ignoreStepFailure":"true","allowStdErr":2,
				"input":{"handler":"install-packages.sh","args":["lftp","dos2unix"],"path":"default"}}}]}`,
			want: Document{Schema: SchemaStandard, IncludeStdOut: true, Steps: []Action{{
				Name: "Install-Packages", Type: TypeRunHandler, RunAsUser: "root", IgnoreStepFailure: true, AllowStdErr: intp(2),
				Handler: "install-packages.sh", Args: []string{"lftp", "dos2unix"}, Path: "default",
			}}},
		},
		{
			name: "runHandler minimal, handler from handler directory",
			doc:  step(`{"name":"a","type":"runHandler","input":{"handler":"a.sh"}}`),
			want: Document{Schema: SchemaStandard, Steps: []Action{{Name: "a", Type: TypeRunHandler, Handler: "a.sh"}}},
		},
		{
			name: "runHandler with absolute path",
			doc:  step(`{"name":"a","type":"runHandler","input":{"handler":"a.sh","path":"/opt/handlers"}}`),
			want: Document{Schema: SchemaStandard, Steps: []Action{{Name: "a", Type: TypeRunHandler, Handler: "a.sh", Path: "/opt/handlers"}}},
		},
		{
			name: "ignoreStepFailure false and includeStdOut as string",
			doc:  `{"version":"1.0","includeStdOut":"false","steps":[{"action":{"name":"a","type":"runHandler","ignoreStepFailure":"false","input":{"handler":"a.sh"}}}]}`,
			want: Document{Schema: SchemaStandard, Steps: []Action{{Name: "a", Type: TypeRunHandler, Handler: "a.sh"}}},
		},
		{
			name: "runCommand simple",
			doc:  step(`{"name":"greet","type":"runCommand","runAsUser":"pi","input":{"command":"echo,Hello World!"}}`),
			want: Document{Schema: SchemaStandard, Steps: []Action{{Name: "greet", Type: TypeRunCommand, RunAsUser: "pi",
				Command: "echo,Hello World!", Argv: []string{"echo", "Hello World!"}}}},
		},
		{
			name: "runCommand with escaped comma",
			doc:  step(`{"name":"greet","type":"runCommand","input":{"command":"echo,Hello\\, I am Device Client."}}`),
			want: Document{Schema: SchemaStandard, Steps: []Action{{Name: "greet", Type: TypeRunCommand,
				Command: `echo,Hello\, I am Device Client.`, Argv: []string{"echo", "Hello, I am Device Client."}}}},
		},
		{
			name: "steps and finalStep",
			doc: `{"_comment":"sample","version":"1.0","steps":[
				{"action":{"name":"one","type":"runHandler","ignoreStepFailure":"true","input":{"handler":"fail.sh"}}},
				{"action":{"name":"two","type":"runCommand","input":{"command":"true"}}}],
				"finalStep":{"action":{"name":"cleanup","type":"runHandler","input":{"handler":"cleanup.sh","args":["x"]}}}}`,
			want: Document{Schema: SchemaStandard, Steps: []Action{
				{Name: "one", Type: TypeRunHandler, Handler: "fail.sh", IgnoreStepFailure: true},
				{Name: "two", Type: TypeRunCommand, Command: "true", Argv: []string{"true"}},
			}, FinalStep: &Action{Name: "cleanup", Type: TypeRunHandler, Handler: "cleanup.sh", Args: []string{"x"}}},
		},
		{
			name: "operation as a schema 1.0 step type",
			doc:  step(`{"name":"update","type":"mender_install","input":{"url":"https://s3/x.mender"}}`),
			want: Document{Schema: SchemaStandard, Steps: []Action{{Name: "update", Type: TypeOperation, Operation: "mender_install",
				Input: map[string]json.RawMessage{"url": json.RawMessage(`"https://s3/x.mender"`)}, Value: testOpInput{URL: "https://s3/x.mender"}}}},
		},
		{
			name: "old schema with every field",
			doc:  `{"operation":"install-packages.sh","args":["lftp","dos2unix"],"path":"default","allowStdErr":2,"includeStdOut":true}`,
			want: Document{Schema: SchemaOld, IncludeStdOut: true, Steps: []Action{{
				Name: "install-packages.sh", Type: TypeRunHandler, Handler: "install-packages.sh", Args: []string{"lftp", "dos2unix"},
				Path: "default", AllowStdErr: intp(2)}}},
		},
		{
			name: "old schema default allowStdErr is 0",
			doc:  `{"operation":"echo","args":["Hello world!"]}`,
			want: Document{Schema: SchemaOld, Steps: []Action{{Name: "echo", Type: TypeRunHandler, Handler: "echo", Args: []string{"Hello world!"}, AllowStdErr: intp(0)}}},
		},
		{
			name: "old schema registered operation",
			doc:  `{"operation":"mender_install","url":"https://s3/x.mender"}`,
			want: Document{Schema: SchemaOld, Steps: []Action{{Name: "mender_install", Type: TypeOperation, Operation: "mender_install",
				Input: map[string]json.RawMessage{"url": json.RawMessage(`"https://s3/x.mender"`)}, Value: testOpInput{URL: "https://s3/x.mender"}}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.doc), Options{Operations: testOps{}})
			require.NoError(t, err)
			assert.Equal(t, tc.want, *got)
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		field   string
		problem string // substring of the problem
	}{
		{"not JSON", `{"version":`, "", "invalid JSON"},
		{"not an object", `[1,2]`, "", "must be a JSON object"},
		{"empty object", `{}`, "", `neither "version"`},
		{"duplicate key", `{"version":"1.0","version":"2.0","steps":[]}`, "version", "more than once"},
		{"duplicate nested key", step(`{"name":"a","name":"b","type":"runHandler","input":{"handler":"a"}}`), "steps[0].action.name", "more than once"},
		{"duplicate key names it", `{"version":"1.0","steps":[],"steps":[]}`, "steps", `duplicate key "steps"`},
		{"duplicate deep key", step(`{"name":"a","type":"runCommand","input":{"command":"true","command":"rm,-rf,/"}}`), "steps[0].action.input.command", `duplicate key "command"`},
		{"duplicate key in comment", `{"version":"1.0","_c":{"a":1,"a":2},"steps":[]}`, "_c.a", `duplicate key "a"`},
		{"duplicate key in array element", `{"version":"1.0","_c":[{},{"k":1,"k":1}],"steps":[]}`, "_c[1].k", `duplicate key "k"`},
		{"number out of range", `{"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"true"}}}], "x": 1e999}`, "x", "the number 1e999 cannot be decoded"},
		{"number out of range in comment", `{"_comment":1e999,"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"true"}}}]}`, "_comment", "outside the range"},
		{"negative number out of range", step(`{"name":"a","type":"runHandler","allowStdErr":-1e400,"input":{"handler":"a"}}`), "steps[0].action.allowStdErr", "-1e400 cannot be decoded"},
		{"huge number abbreviated", `{"version":"1.0","_n":[1` + strings.Repeat("0", 400) + `],"steps":[]}`, "_n[0]", "(401 characters)"},
		{"invalid UTF-8", "{\"version\":\"1.0\",\"_c\":\"\xff\",\"steps\":[]}", "", "invalid UTF-8 at byte 23"},
		{"too large with white space", `{"version":"1.0",` + strings.Repeat(" ", MaxDocumentBytes) + `"steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"true"}}}]}`, "", "larger than the 32768-byte limit"},
		{"version number", `{"version":1.0,"steps":[]}`, "version", "must be a string"},
		{"version unsupported", `{"version":"2.0","steps":[]}`, "version", `unsupported schema version "2.0"`},
		{"unknown top-level field", `{"version":"1.0","stepz":[],"steps":[]}`, "stepz", "unknown field"},
		{"conditions", `{"version":"1.0","conditions":[],"steps":[]}`, "conditions", "not supported"},
		{"old field with version", `{"version":"1.0","operation":"x","steps":[]}`, "operation", "old-schema field"},
		{"steps missing", `{"version":"1.0"}`, "steps", "required"},
		{"steps empty", `{"version":"1.0","steps":[]}`, "steps", "at least one"},
		{"steps not array", `{"version":"1.0","steps":{}}`, "steps", "must be an array"},
		{"step not object", `{"version":"1.0","steps":["x"]}`, "steps[0]", "must be an object"},
		{"step without action", `{"version":"1.0","steps":[{}]}`, "steps[0].action", "required"},
		{"step extra field", `{"version":"1.0","steps":[{"action":{},"extra":1}]}`, "steps[0].extra", "unknown field"},
		{"name missing", step(`{"type":"runHandler","input":{"handler":"a"}}`), "steps[0].action.name", "required"},
		{"name empty", step(`{"name":" ","type":"runHandler","input":{"handler":"a"}}`), "steps[0].action.name", "must not be empty"},
		{"type missing", step(`{"name":"a","input":{"handler":"a"}}`), "steps[0].action.type", "required"},
		{"type unknown", step(`{"name":"a","type":"runScript","input":{"handler":"a"}}`), "steps[0].action.type", `unsupported action type "runScript"`},
		{"type unknown lists operations", step(`{"name":"a","type":"x","input":{}}`), "steps[0].action.type", "registered operation: mender_install"},
		{"ignoreStepFailure boolean", step(`{"name":"a","type":"runHandler","ignoreStepFailure":true,"input":{"handler":"a"}}`), "steps[0].action.ignoreStepFailure", "got a boolean"},
		{"ignoreStepFailure yes", step(`{"name":"a","type":"runHandler","ignoreStepFailure":"yes","input":{"handler":"a"}}`), "steps[0].action.ignoreStepFailure", `got "yes"`},
		{"ignoreStepFailure True", step(`{"name":"a","type":"runHandler","ignoreStepFailure":"True","input":{"handler":"a"}}`), "steps[0].action.ignoreStepFailure", `got "True"`},
		{"runAsUser number", step(`{"name":"a","type":"runHandler","runAsUser":0,"input":{"handler":"a"}}`), "steps[0].action.runAsUser", "must be a string"},
		{"runAsUser option injection", step(`{"name":"a","type":"runCommand","runAsUser":"-s","input":{"command":"id"}}`), "steps[0].action.runAsUser", "not a valid user name"},
		{"allowStdErr negative", step(`{"name":"a","type":"runHandler","allowStdErr":-1,"input":{"handler":"a"}}`), "steps[0].action.allowStdErr", "non-negative integer"},
		{"allowStdErr fraction", step(`{"name":"a","type":"runHandler","allowStdErr":1.5,"input":{"handler":"a"}}`), "steps[0].action.allowStdErr", "non-negative integer"},
		{"input missing", step(`{"name":"a","type":"runHandler"}`), "steps[0].action.input", "required"},
		{"input not object", step(`{"name":"a","type":"runHandler","input":"a.sh"}`), "steps[0].action.input", "must be an object"},
		{"handler missing", step(`{"name":"a","type":"runHandler","input":{}}`), "steps[0].action.input.handler", "required"},
		{"handler with slash", step(`{"name":"a","type":"runHandler","input":{"handler":"bin/a.sh"}}`), "steps[0].action.input.handler", "path separator"},
		{"handler absolute", step(`{"name":"a","type":"runHandler","input":{"handler":"/bin/sh"}}`), "steps[0].action.input.handler", "path separator"},
		{"handler dotdot", step(`{"name":"a","type":"runHandler","input":{"handler":".."}}`), "steps[0].action.input.handler", `".."`},
		{"handler backslash", step(`{"name":"a","type":"runHandler","input":{"handler":"..\\x"}}`), "steps[0].action.input.handler", "path separator"},
		{"args not list", step(`{"name":"a","type":"runHandler","input":{"handler":"a","args":"x"}}`), "steps[0].action.input.args", "array of strings"},
		{"args element number", step(`{"name":"a","type":"runHandler","input":{"handler":"a","args":["x",1]}}`), "steps[0].action.input.args[1]", "must be a string"},
		{"path relative", step(`{"name":"a","type":"runHandler","input":{"handler":"a","path":"handlers"}}`), "steps[0].action.input.path", "absolute"},
		{"path with dotdot", step(`{"name":"a","type":"runHandler","input":{"handler":"a","path":"/opt/../etc"}}`), "steps[0].action.input.path", `".."`},
		{"command in runHandler", step(`{"name":"a","type":"runHandler","input":{"handler":"a","command":"x"}}`), "steps[0].action.input.command", "belongs to runCommand"},
		{"command missing", step(`{"name":"a","type":"runCommand","input":{}}`), "steps[0].action.input.command", "required"},
		{"command empty", step(`{"name":"a","type":"runCommand","input":{"command":""}}`), "steps[0].action.input.command", "must not be empty"},
		{"command first token with space", step(`{"name":"a","type":"runCommand","input":{"command":"echo hello,world"}}`), "steps[0].action.input.command", "white space"},
		{"command first token empty", step(`{"name":"a","type":"runCommand","input":{"command":",echo"}}`), "steps[0].action.input.command", "first token (the program) is empty"},
		{"command first token option", step(`{"name":"a","type":"runCommand","input":{"command":"-s"}}`), "steps[0].action.input.command", `must not start with "-"`},
		{"handler in runCommand", step(`{"name":"a","type":"runCommand","input":{"command":"x","handler":"y"}}`), "steps[0].action.input.handler", "belongs to runHandler"},
		{"finalStep not object", `{"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"x"}}}],"finalStep":[]}`, "finalStep", "must be an object"},
		{"finalStep bad action", `{"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"x"}}}],"finalStep":{"action":{"name":"f","type":"runCommand","input":{}}}}`, "finalStep.action.input.command", "required"},
		{"includeStdOut number", `{"version":"1.0","includeStdOut":1,"steps":[]}`, "includeStdOut", "must be a boolean"},
		{"operation missing url", step(`{"name":"u","type":"mender_install","input":{}}`), "steps[0].action.input.url", "required"},
		{"operation plain error", step(`{"name":"u","type":"mender_install","input":{"url":"http://x"}}`), "steps[0].action.input", "operation mender_install: url must be https"},
		{"old schema empty operation", `{"operation":""}`, "operation", "must not be empty"},
		{"old schema operation number", `{"operation":5}`, "operation", "must be a string"},
		{"old schema operation path", `{"operation":"../../bin/rm"}`, "operation", "path separator"},
		{"old schema unknown field", `{"operation":"foo.sh","url":"x"}`, "url", "not a registered operation"},
		{"old schema steps without version", `{"operation":"foo.sh","steps":[]}`, "steps", `add "version"`},
		{"old schema allowStdErr string", `{"operation":"foo.sh","allowStdErr":"2"}`, "allowStdErr", "non-negative integer"},
		{"old schema registered op without url", `{"operation":"mender_install"}`, "url", "required"},
		{"old schema registered op extra field", `{"operation":"mender_install","url":"https://x","args":[]}`, "", "operation mender_install: unknown field args"},
		{"too large", `{"operation":"` + strings.Repeat("a", MaxDocumentBytes) + `"}`, "", "larger than"},
		{"NUL in argument", step(`{"name":"a","type":"runHandler","input":{"handler":"a","args":["x\u0000y"]}}`), "steps[0].action.input.args[0]", "NUL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := Parse([]byte(tc.doc), Options{Operations: testOps{}})
			require.Error(t, err)
			assert.Nil(t, doc)
			var de *Error
			require.True(t, errors.As(err, &de), "error %v is not a *jobdoc.Error", err)
			assert.Equal(t, tc.field, de.Field)
			assert.Contains(t, de.Problem, tc.problem)
			assert.NotEmpty(t, de.Reason())
		})
	}
}

func TestParseWithoutOperations(t *testing.T) {
	// Without OTA registered, mender_install is an old-schema handler name
	// and its url field is unknown.
	_, err := Parse([]byte(`{"operation":"mender_install","url":"https://x"}`), Options{})
	var de *Error
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "url", de.Field)
	_, err = Parse([]byte(step(`{"name":"u","type":"mender_install","input":{"url":"https://x"}}`)), Options{})
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "steps[0].action.type", de.Field)
}

func TestSplitCommand(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  string
	}{
		{in: "echo", want: []string{"echo"}},
		{in: "echo,Hello World!", want: []string{"echo", "Hello World!"}},
		{in: `echo,Hello\, I am Device Client.`, want: []string{"echo", "Hello, I am Device Client."}},
		{in: `printf,%s\,%s,a,b`, want: []string{"printf", "%s,%s", "a", "b"}},
		{in: `echo,a\\b`, want: []string{"echo", `a\\b`}},
		{in: `echo,a\`, want: []string{"echo", `a\`}},
		{in: `echo,\,\,`, want: []string{"echo", ",,"}},
		{in: "echo,,x", want: []string{"echo", "", "x"}},
		{in: "echo,x,", want: []string{"echo", "x", ""}},
		{in: "aws,iot,describe-endpoint,--endpoint-type,XXX", want: []string{"aws", "iot", "describe-endpoint", "--endpoint-type", "XXX"}},
		{in: "", err: "must not be empty"},
		{in: ",x", err: "is empty"},
		{in: "echo hi", err: "white space"},
		{in: "echo\thi,x", err: "white space"},
		{in: "--help", err: "must not start"},
		{in: "echo,a\x01", err: "control character"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := SplitCommand(tc.in)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestStepIndexing(t *testing.T) {
	doc, err := Parse([]byte(`{"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"a"}}},
		{"action":{"name":"b","type":"runCommand","input":{"command":"b"}}}],
		"finalStep":{"action":{"name":"f","type":"runCommand","input":{"command":"f"}}}}`), Options{})
	require.NoError(t, err)
	assert.Equal(t, 3, doc.StepCount())
	for i, name := range []string{"a", "b", "f"} {
		s, ok := doc.Step(i)
		require.True(t, ok)
		assert.Equal(t, name, s.Name)
		assert.Equal(t, i == 2, doc.IsFinal(i))
	}
	_, ok := doc.Step(3)
	assert.False(t, ok)
}

func TestExplain(t *testing.T) {
	doc, err := Parse([]byte(`{"version":"1.0","includeStdOut":true,"steps":[
		{"action":{"name":"Install","type":"runHandler","runAsUser":"root","ignoreStepFailure":"true","input":{"handler":"install.sh","args":["wget","two words"]}}},
		{"action":{"name":"Greet","type":"runCommand","runAsUser":"pi","input":{"command":"echo,Hello\\, World"}}},
		{"action":{"name":"Update","type":"mender_install","input":{"url":"https://x"}}}],
		"finalStep":{"action":{"name":"Cleanup","type":"runHandler","input":{"handler":"cleanup.sh","path":"/opt/h"}}}}`), Options{Operations: testOps{}})
	require.NoError(t, err)
	plan := Explain(doc, "/var/lib/fleet-agent/jobs")
	for _, want := range []string{
		"schema 1.0 (standard job document): 3 step(s) and a final step",
		"stderr and stdout",
		`step 1/3 "Install"`,
		`/var/lib/fleet-agent/jobs/install.sh "root" wget "two words"`,
		"on failure: ignored",
		`step 2/3 "Greet"`,
		`sudo -n -u pi -- echo "Hello, World"`,
		"on failure: the job FAILS; later steps and the final step do not run",
		`operation "mender_install"`,
		`final step "Cleanup" (runs only if every step succeeded; ignored failures count as success)`,
		"/opt/h (must be an allowed handler path",
		`/opt/h/cleanup.sh ""`,
	} {
		assert.Contains(t, plan, want)
	}

	old, err := Parse([]byte(`{"operation":"install-packages.sh","args":["lftp"]}`), Options{})
	require.NoError(t, err)
	plan = Explain(old, "")
	assert.Contains(t, plan, "old schema (single operation): 1 step(s)")
	assert.Contains(t, plan, "<handler-dir>/install-packages.sh \"\" lftp")
	assert.Contains(t, plan, "more than 0 line(s) to stderr")
}
