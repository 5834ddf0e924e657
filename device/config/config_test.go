package config

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
)

func TestExampleFileIsValidAndEqualsDefaults(t *testing.T) {
	cfg, err := Load("example.json")
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	want := Default()
	want.Endpoint = "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com"
	want.Provisioning.TemplateName = "iot-fleet-dev"
	assert.Equal(t, want, cfg, "example.json documents the defaults")
	assert.Equal(t, "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com:8883", cfg.Address())
	assert.Equal(t, "/var/lib/fleet-agent/handlers", cfg.HandlerDir())
}

func TestMinimalFileGetsDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t","retryMin":"10ms"}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, 8883, cfg.Port)
	assert.Equal(t, 10*time.Millisecond, cfg.Provisioning.RetryMin.D())
	assert.Equal(t, time.Hour, cfg.Provisioning.DeniedBackoff.D())
}

func TestErrorsNameTheField(t *testing.T) {
	base := `"endpoint":"x.example.com","provisioning":{"templateName":"t"}`
	cases := []struct {
		name, json, field string
	}{
		{"unknown top", `{` + base + `,"endpont":"y"}`, "endpont"},
		{"unknown nested", `{"endpoint":"x","provisioning":{"templateName":"t","serail":"1"}}`, "provisioning.serail"},
		{"type", `{"endpoint":"x","port":"8883"}`, "port"},
		{"nested type", `{"endpoint":"x","outbox":{"maxMessages":"many"}}`, "outbox.maxMessages"},
		{"bad duration", `{"endpoint":"x","mqtt":{"keepAlive":"soon"}}`, "mqtt.keepAlive"},
		{"numeric duration", `{"endpoint":"x","provisioning":{"retryMax":30}}`, "provisioning.retryMax"},
		{"missing endpoint", `{"provisioning":{"templateName":"t"}}`, "endpoint"},
		{"endpoint with scheme", `{"endpoint":"mqtts://x","provisioning":{"templateName":"t"}}`, "endpoint"},
		{"endpoint with port", `{"endpoint":"x:8883","provisioning":{"templateName":"t"}}`, "endpoint"},
		{"port range", `{` + base + `,"port":70000}`, "port"},
		{"443 without alpn", `{` + base + `,"port":443}`, "alpn"},
		{"log level", `{` + base + `,"logLevel":"loud"}`, "logLevel"},
		{"template", `{"endpoint":"x"}`, "provisioning.templateName"},
		{"template chars", `{"endpoint":"x","provisioning":{"templateName":"a/b"}}`, "provisioning.templateName"},
		{"pattern", `{"endpoint":"x","provisioning":{"templateName":"t","serialPattern":"("}}`, "provisioning.serialPattern"},
		{"serial", `{"endpoint":"x","provisioning":{"templateName":"t","serial":"XYZ"}}`, "provisioning.serial"},
		{"serial files", `{"endpoint":"x","provisioning":{"templateName":"t","serialFiles":[]}}`, "provisioning.serialFiles"},
		{"serial file empty", `{"endpoint":"x","provisioning":{"templateName":"t","serialFiles":["/a",""]}}`, "provisioning.serialFiles[1]"},
		{"key algorithm", `{"endpoint":"x","provisioning":{"templateName":"t","keyAlgorithm":"dsa"}}`, "provisioning.keyAlgorithm"},
		{"retry order", `{"endpoint":"x","provisioning":{"templateName":"t","retryMin":"2m","retryMax":"1m"}}`, "provisioning.retryMax"},
		{"denied below retry", `{"endpoint":"x","provisioning":{"templateName":"t","retryMin":"2m","retryMax":"3m","deniedBackoff":"1m"}}`, "provisioning.deniedBackoff"},
		{"zero timeout", `{"endpoint":"x","provisioning":{"templateName":"t","responseTimeout":"0s"}}`, "provisioning.responseTimeout"},
		{"reconnect order", `{` + base + `,"mqtt":{"reconnectMin":"1m","reconnectMax":"1s"}}`, "mqtt.reconnectMax"},
		{"outbox", `{` + base + `,"outbox":{"maxMessages":0}}`, "outbox.maxMessages"},
		{"attempts", `{` + base + `,"outbox":{"maxAttempts":0}}`, "outbox.maxAttempts"},
		{"state dir", `{` + base + `,"stateDir":""}`, "stateDir"},
		{"root ca", `{` + base + `,"rootCAFile":""}`, "rootCAFile"},
		{"relative state dir", `{` + base + `,"stateDir":"var/lib"}`, "stateDir"},
		{"handler dir", `{` + base + `,"jobs":{"handlerDir":"handlers"}}`, "jobs.handlerDir"},
		{"allowed paths", `{` + base + `,"jobs":{"allowedPaths":["/opt/h","rel"]}}`, "jobs.allowedPaths[1]"},
		{"step timeout", `{` + base + `,"jobs":{"stepTimeout":"10ms"}}`, "jobs.stepTimeout"},
		{"bad step timeout", `{` + base + `,"jobs":{"stepTimeout":"long"}}`, "jobs.stepTimeout"},
		{"progress timeout", `{` + base + `,"jobs":{"progressTimeoutMinutes":0}}`, "jobs.progressTimeoutMinutes"},
		{"runCommand not object", `{` + base + `,"jobs":{"runCommand":false}}`, "jobs.runCommand"},
		{"runCommand enabled string", `{` + base + `,"jobs":{"runCommand":{"enabled":"false"}}}`, "jobs.runCommand.enabled"},
		{"runCommand unknown", `{` + base + `,"jobs":{"runCommand":{"enable":false}}}`, "jobs.runCommand.enable"},
		{"executable relative", `{` + base + `,"jobs":{"runCommand":{"allowedExecutables":["/bin/echo","bin/sh"]}}}`, "jobs.runCommand.allowedExecutables[1]"},
		{"executable empty", `{` + base + `,"jobs":{"runCommand":{"allowedExecutables":[""]}}}`, "jobs.runCommand.allowedExecutables[0]"},
		{"executable unclean", `{` + base + `,"jobs":{"runCommand":{"allowedExecutables":["/usr/bin/../bin/sh"]}}}`, "jobs.runCommand.allowedExecutables[0]"},
		{"executable twice", `{` + base + `,"jobs":{"runCommand":{"allowedExecutables":["echo","true","echo"]}}}`, "jobs.runCommand.allowedExecutables[2]"},
		{"duplicate key", `{` + base + `,"jobs":{"runCommand":{"enabled":false,"enabled":true}}}`, "jobs.runCommand.enabled"},
		{"duplicate section", `{` + base + `,"jobs":{"runCommand":{"enabled":false}},"jobs":{}}`, "jobs"},
		{"key case", `{` + base + `,"jobs":{"runCommand":{"Enabled":false}}}`, "jobs.runCommand.Enabled"},
		{"section case", `{` + base + `,"jobs":{"RunCommand":{"enabled":false}}}`, "jobs.RunCommand"},
		{"top-level case", `{` + base + `,"Port":443}`, "Port"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte(c.json))
			if err == nil {
				err = cfg.Validate()
			}
			var fe *FieldError
			require.ErrorAs(t, err, &fe, "%v", err)
			assert.Equal(t, c.field, fe.Field, "%v", err)
			assert.Contains(t, err.Error(), `"`+c.field+`"`)
		})
	}
}

func TestSyntaxErrorGivesLine(t *testing.T) {
	_, err := Parse([]byte("{\n\"endpoint\": \"x\",\n\"port\": ,\n}"))
	require.ErrorContains(t, err, "line 3")
	_, err = Parse([]byte(`{"endpoint":"x"} {}`))
	require.ErrorContains(t, err, "trailing")
	_, err = Load(filepath.Join(t.TempDir(), "missing.json"))
	require.Error(t, err)
}

func TestFlagsOverrideOnlyWhatIsSet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"endpoint":"file.example.com","port":8883,"provisioning":{"templateName":"t"}}`), 0o600))
	cfg, err := Load(path)
	require.NoError(t, err)
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{"-endpoint", "flag.example.com", "-port", "443", "-alpn", "-serial", "00000000deadbeef", "-key-algorithm", "rsa-2048", "-state-dir", "/tmp/s"}))
	f.Apply(&cfg)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, "flag.example.com", cfg.Endpoint)
	assert.Equal(t, 443, cfg.Port)
	assert.True(t, cfg.ALPN)
	assert.Equal(t, "00000000deadbeef", cfg.Provisioning.Serial)
	assert.Equal(t, "rsa-2048", cfg.Provisioning.KeyAlgorithm)
	assert.Equal(t, "/tmp/s", cfg.StateDir)
	assert.Equal(t, "t", cfg.Provisioning.TemplateName, "unset flags keep the file's value")
	assert.Equal(t, "/etc/fleet-agent/AmazonRootCA1.pem", cfg.RootCAFile)
}

func TestDurationJSONRoundTrip(t *testing.T) {
	b, err := json.Marshal(Duration(90 * time.Second))
	require.NoError(t, err)
	assert.Equal(t, `"1m30s"`, string(b))
}

func TestRunCommandSwitch(t *testing.T) {
	base := `"endpoint":"x.example.com","provisioning":{"templateName":"t"}`
	cfg, err := Parse([]byte(`{` + base + `}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.True(t, cfg.Jobs.RunCommand.Enabled, "runCommand is on by default (AWS IoT Device Client documents work)")
	assert.Equal(t, jobdoc.RunCommandPolicy{AllowedExecutables: []string{}}, cfg.Jobs.RunCommandPolicy())

	cfg, err = Parse([]byte(`{` + base + `,"jobs":{"runCommand":{"enabled":false}}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.True(t, cfg.Jobs.RunCommandPolicy().Disabled)

	cfg, err = Parse([]byte(`{` + base + `,"jobs":{"runCommand":{"allowedExecutables":["/usr/bin/apt-get","echo"]}}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	p := cfg.Jobs.RunCommandPolicy()
	assert.False(t, p.Disabled)
	assert.NoError(t, p.Check("echo"))
	assert.NoError(t, p.Check("/usr/bin/apt-get"))
	assert.ErrorContains(t, p.Check("apt-get"), "jobs.runCommand.allowedExecutables")

	assert.False(t, p.PathExecutablesDisabled, "executables from PATH are allowed by default (the Device Client's echo.json works)")

	cfg, err = Parse([]byte(`{` + base + `,"jobs":{"pathExecutables":false}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, jobdoc.RunCommandPolicy{AllowedExecutables: []string{}, PathExecutablesDisabled: true}, cfg.Jobs.RunCommandPolicy())
	assert.ErrorContains(t, cfg.Jobs.RunCommandPolicy().CheckPathExecutable("echo"), "jobs.pathExecutables is false")
	_, err = Parse([]byte(`{` + base + `,"jobs":{"pathExecutables":"false"}}`))
	assert.ErrorContains(t, err, "jobs.pathExecutables")

	_, err = Parse([]byte(`{` + base + `,"jobs":{"runCommand":{"Enabled":false}}}`))
	assert.ErrorContains(t, err, `keys are case-sensitive: did you mean "enabled"?`)
	_, err = Parse([]byte(`{` + base + `,"jobs":{"runCommand":{"enabled":false,"enabled":true}}}`))
	assert.ErrorContains(t, err, "appears more than once")
}
