package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// problems is every problem of err as "field: problem", in order.
func problems(t *testing.T, err error) []string {
	t.Helper()
	var errs *Errors
	require.True(t, errors.As(err, &errs), "want *Errors, got %v", err)
	out := make([]string, 0, len(errs.List))
	for _, fe := range errs.List {
		out = append(out, fe.Field+": "+fe.Problem)
	}
	return out
}

func TestParseReportsEveryDecodingProblemInFileOrder(t *testing.T) {
	_, err := Parse([]byte(`{
		"endpont": "x.example.com",
		"port": "8883",
		"Alpn": true,
		"provisioning": {"templateName": "t", "serialFiles": ["/a", 7], "retryMax": 30},
		"mqtt": {"keepAlive": "soon", "keepalive": "10s", "reconnectMin": "1s", "reconnectMin": "2s"},
		"jobs": {"runCommand": false, "allowedPaths": "/opt"},
		"ota": {"healthChecks": [{"name": "a", "command": ["true"]}, {"name": "b", "command": ["true"], "timeout": "1 minute", "cmd": []}]},
		"shadow": {"enabled": "yes"}
	}`))
	require.Error(t, err)
	assert.Equal(t, []string{
		`endpont: unknown field (did you mean "endpoint"?)`,
		`port: must be a number, not a JSON string`,
		`Alpn: unknown field (keys are case-sensitive: did you mean "alpn"?)`,
		`provisioning.serialFiles[1]: must be a string, not a JSON number`,
		`provisioning.retryMax: duration must be a string such as "30s"`,
		`mqtt.keepAlive: invalid duration "soon"`,
		`mqtt.keepalive: unknown field (keys are case-sensitive: did you mean "keepAlive"?)`,
		`mqtt.reconnectMin: appears more than once in the same object (only the last one would count)`,
		`jobs.runCommand: must be an object, not a JSON bool`,
		`jobs.allowedPaths: must be a list, not a JSON string`,
		`ota.healthChecks[1].timeout: invalid duration "1 minute"`,
		`ota.healthChecks[1].cmd: unknown field`,
		`shadow.enabled: must be a bool, not a JSON string`,
	}, problems(t, err))
	var fe *FieldError
	require.ErrorAs(t, err, &fe, "errors.As finds the first problem")
	assert.Equal(t, "endpont", fe.Field)
	assert.Contains(t, err.Error(), "config: 13 problems: ")
	assert.Contains(t, err.Error(), `field "mqtt.keepAlive": invalid duration "soon"`)
}

func TestValidateReportsEveryRule(t *testing.T) {
	cfg := Default()
	cfg.Port = 443
	cfg.StateDir = "var/lib"
	cfg.Provisioning.TemplateName = "a/b"
	cfg.Provisioning.RetryMin = Duration(0)
	cfg.MQTT.KeepAlive = Duration(0)
	cfg.Outbox.MaxMessages = 0
	cfg.Jobs.RunCommand.AllowedExecutables = []string{"echo", "bin/sh", "echo"}
	cfg.OTA.HealthChecks = []HealthCheck{{Name: "app", Command: []string{"true"}, Timeout: 1}}
	cfg.SSM.StartCommand = nil
	cfg.Rotation.SwitchTimeout = Duration(1e9)
	cfg.Shadow.MinInterval = 0
	err := cfg.Validate()
	require.Error(t, err)
	got := problems(t, err)
	var fields []string
	for _, p := range got {
		f, _, _ := strings.Cut(p, ": ")
		fields = append(fields, f)
	}
	assert.Equal(t, []string{
		"endpoint", "alpn", "stateDir",
		"provisioning.templateName", "provisioning.retryMin",
		"mqtt.keepAlive",
		"outbox.maxMessages",
		"jobs.runCommand.allowedExecutables[1]", "jobs.runCommand.allowedExecutables[2]",
		"ota.healthChecks[0].timeout",
		"ssm.startCommand",
		"shadow.minInterval",
		"rotation.switchTimeout", // rules across sections come last
	}, fields, "%s", strings.Join(got, "\n"))
	assert.Contains(t, got, `jobs.runCommand.allowedExecutables[2]: "echo" is listed twice (also allowedExecutables[0])`)
	assert.Contains(t, got, `rotation.switchTimeout: must be at least twice mqtt.reconnectMax (2m0s), got 1s`)
}

// A rule about a field that could not be decoded is not reported twice;
// the others are all there, decoding problems first.
func TestParseValidReportsDecodingAndRulesTogether(t *testing.T) {
	_, err := ParseValid([]byte(`{"port": 70000, "provisioning": {"templateName": "t", "serialFiles": [""], "retryMin": "soon"},
		"jobs": {"runCommand": {"allowedExecutables": ["echo", 3]}}, "ota": {"maxReboots": 0}}`))
	require.Error(t, err)
	assert.Equal(t, []string{
		`provisioning.retryMin: invalid duration "soon"`,
		`jobs.runCommand.allowedExecutables[1]: must be a string, not a JSON number`,
		`endpoint: is required (the AWS IoT data endpoint host name)`,
		`port: must be between 1 and 65535, got 70000`,
		`provisioning.serialFiles[0]: is empty`,
		`ota.maxReboots: must be between 1 and 100, got 0`,
	}, problems(t, err))

	_, err = ParseValid([]byte(`{"endpoint": "x.example.com", "provisioning": {"templateName": "t"}}`), func(c *Config) { c.StateDir = "rel" })
	assert.Equal(t, []string{`stateDir: must be an absolute path, got "rel"`}, problems(t, err), "overrides are validated")

	cfg, err := ParseValid([]byte(`{"endpoint": "x.example.com", "provisioning": {"templateName": "t"}}`))
	require.NoError(t, err)
	assert.Equal(t, "x.example.com", cfg.Endpoint)

	_, err = ParseValid([]byte("{\n\"endpoint\": ,\n}"))
	require.ErrorContains(t, err, "line 2", "a syntax error is reported alone")
	_, err = ParseValid([]byte(`{"endpoint":"x"} }`))
	require.ErrorContains(t, err, "trailing data")
	_, err = ParseValid([]byte(` `))
	require.ErrorContains(t, err, "empty")
	_, err = Parse([]byte(`["endpoint"]`))
	assert.Equal(t, []string{`: must be an object, not a JSON array`}, problems(t, err))
}

func TestErrorsAreBounded(t *testing.T) {
	var b bytes.Buffer
	b.WriteString(`{"endpoint":"x.example.com"`)
	for i := range 10000 {
		b.WriteString(`,"unknown` + strconv.Itoa(i) + `":1`)
	}
	b.WriteString(`}`)
	_, err := Parse(b.Bytes())
	var errs *Errors
	require.ErrorAs(t, err, &errs)
	assert.Len(t, errs.List, MaxErrors)
	assert.Equal(t, 10000-MaxErrors, errs.Omitted)
	assert.Equal(t, 10000, errs.Len())
	assert.Equal(t, "unknown0", errs.List[0].Field)
	assert.Contains(t, err.Error(), "and 9950 more")
	assert.Less(t, len(err.Error()), 5000)

	var out bytes.Buffer
	WriteErrors(&out, "c.json", err)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	assert.Len(t, lines, MaxErrors+1)
	assert.Equal(t, "c.json: and 9950 more problems not shown (at most 50 are listed)", lines[MaxErrors])
}

// Each section is its own type that validates itself (config.go only
// composes them): a new section cannot be added without its rules.
func TestEverySectionValidatesItself(t *testing.T) {
	ct := reflect.TypeFor[Config]()
	sections := 0
	for i := range ct.NumField() {
		f := ct.Field(i)
		if f.Type.Kind() != reflect.Struct {
			continue
		}
		sections++
		assert.True(t, f.Type.Implements(reflect.TypeFor[section]()), "%s has no validate(path, errs)", f.Name)
	}
	assert.Equal(t, 8, sections)
	// Under another key the same rules name that key (a section does not
	// hard-code its path).
	errs := &Errors{}
	MQTT{}.validate("elsewhere", errs)
	assert.True(t, errs.Has("elsewhere.keepAlive"), "%v", errs)
}

func TestOneEditApart(t *testing.T) {
	for a, b := range map[string]string{"endpoint": "endpont", "port": "prot", "alpn": "alpns", "mqtt": "mqt", "jobs": "jbos"} {
		assert.True(t, oneEditApart(a, b), "%s %s", a, b)
	}
	for a, b := range map[string]string{"endpoint": "endpoint", "port": "prt1", "ota": "ssm", "jobs": "sboj"} {
		assert.False(t, oneEditApart(a, b), "%s %s", a, b)
	}
}

func TestChanged(t *testing.T) {
	cfg, err := ParseValid([]byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t","serialFiles":["/a"]},
		"mqtt":{"keepAlive":"30s"},"jobs":{"allowedPaths":null},"ota":{"allowedHosts":["b.s3.amazonaws.com"]},"shadow":{"enabled":false}}`))
	require.NoError(t, err)
	assert.Equal(t, []Setting{
		{"endpoint", `"x.example.com"`, `""`},
		{"provisioning.templateName", `"t"`, `""`},
		{"provisioning.serialFiles", `["/a"]`, `["/sys/firmware/devicetree/base/serial-number","/proc/cpuinfo"]`},
		{"mqtt.keepAlive", `"30s"`, `"1m0s"`},
		{"ota.allowedHosts", `["b.s3.amazonaws.com"]`, `[]`},
		{"shadow.enabled", `false`, `true`},
	}, Changed(cfg), "a null list is the empty default")
}

func TestCheckMain(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := CheckMain(args, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	good := write("good.json", `{"endpoint":"x.example.com","port":443,"alpn":true,"provisioning":{"templateName":"t"}}`)
	code, out, errOut := run(good)
	assert.Equal(t, 0, code, errOut)
	assert.Equal(t, good+`: valid
  settings that differ from the defaults:
  endpoint = "x.example.com" (default "")
  port = 443 (default 8883)
  alpn = true (default false)
  provisioning.templateName = "t" (default "")
`, out)

	bad := write("bad.json", `{"endpoint":"x.example.com","port":443,"provisioning":{"templateName":"t"},"mqtt":{"keepAlive":"soon"},"jobs":{"runCommand":{"allowedExecutables":["echo","true","echo"]}}}`)
	code, out, errOut = run(good, bad)
	assert.Equal(t, 1, code)
	assert.Contains(t, out, good+": valid")
	assert.Equal(t, bad+`: INVALID (3 problems)
`+bad+`: field "mqtt.keepAlive": invalid duration "soon"
`+bad+`: field "alpn": must be true on port 443 (AWS IoT Core needs ALPN x-amzn-mqtt-ca for MQTT on 443)
`+bad+`: field "jobs.runCommand.allowedExecutables[2]": "echo" is listed twice (also allowedExecutables[0])
`, errOut)

	syntax := write("syntax.json", "{\n\"endpoint\": ,\n}")
	code, _, errOut = run(syntax)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, syntax+": INVALID (1 problem)\n"+syntax+": config: invalid JSON at line 2")

	code, _, errOut = run(filepath.Join(dir, "missing.json"))
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "no such file")

	code, _, errOut = run()
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "usage: fleet-agent check-config FILE")
	code, _, _ = run("--bogus", good)
	assert.Equal(t, 2, code)
	code, _, errOut = run("--help")
	assert.Equal(t, 0, code)
	assert.Contains(t, errOut, "usage: fleet-agent check-config FILE")
}
