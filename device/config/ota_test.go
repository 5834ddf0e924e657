package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOTASectionParses(t *testing.T) {
	cfg, err := Parse([]byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t"},
		"ota":{"menderFlavor":"mender4","menderUpdatePath":"/opt/m/mender-update","maxAttempts":5,"retryDelay":"1s",
			"allowHTTP":true,"preRebootCommand":["systemctl","stop","app.service"],"rebootCommand":["/sbin/reboot"],
			"healthChecks":[{"name":"app","command":["systemctl","is-active","app.service"],"timeout":"30s"},
				{"name":"disk","command":["/usr/bin/true"]}],
			"bootIdFile":"/run/test-boot-id"}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	o := cfg.OTA
	assert.True(t, o.Enabled, "default kept")
	assert.Equal(t, "mender4", o.MenderFlavor)
	assert.Equal(t, "/opt/m/mender-update", o.MenderUpdatePath)
	assert.Equal(t, "/usr/bin/mender", o.MenderPath, "default kept")
	assert.Equal(t, 5, o.MaxAttempts)
	assert.Equal(t, time.Second, o.RetryDelay.D())
	assert.Equal(t, 2*time.Hour, o.InstallTimeout.D(), "default kept")
	assert.True(t, o.AllowHTTP)
	assert.Equal(t, []string{"systemctl", "stop", "app.service"}, o.PreRebootCommand)
	assert.Equal(t, []string{"/sbin/reboot"}, o.RebootCommand)
	require.Len(t, o.HealthChecks, 2)
	assert.Equal(t, HealthCheck{Name: "app", Command: []string{"systemctl", "is-active", "app.service"}, Timeout: Duration(30 * time.Second)}, o.HealthChecks[0])
	assert.Zero(t, o.HealthChecks[1].Timeout, "omitted timeout: the updater's 1m")
	assert.Equal(t, "/run/test-boot-id", o.BootIDFile)
	assert.Empty(t, o.AllowedHosts, "default: no host allowed")
	assert.Empty(t, o.ArtifactVerifyKey)
}

func TestOTAIntegritySettings(t *testing.T) {
	cfg, err := Parse([]byte(`{"endpoint":"x.example.com","provisioning":{"templateName":"t"},
		"ota":{"allowedHosts":["iot-fleet-dev-artifacts.s3.eu-west-1.amazonaws.com","s3.amazonaws.com/iot-fleet-dev-artifacts","127.0.0.1:8080"],
			"artifactVerifyKey":"/etc/mender/artifact-verify-key.pem"}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, []string{"iot-fleet-dev-artifacts.s3.eu-west-1.amazonaws.com", "s3.amazonaws.com/iot-fleet-dev-artifacts", "127.0.0.1:8080"}, cfg.OTA.AllowedHosts)
	assert.Equal(t, "/etc/mender/artifact-verify-key.pem", cfg.OTA.ArtifactVerifyKey)
}

func TestOTAErrorsNameTheField(t *testing.T) {
	base := `"endpoint":"x.example.com","provisioning":{"templateName":"t"}`
	cases := []struct {
		name, ota, field string
	}{
		{"unknown", `{"maxAttemps":3}`, "ota.maxAttemps"},
		{"unknown in health check", `{"healthChecks":[{"name":"a","command":["true"]},{"name":"b","cmd":["true"]}]}`, "ota.healthChecks[1].cmd"},
		{"flavor", `{"menderFlavor":"mender5"}`, "ota.menderFlavor"},
		{"update path relative", `{"menderUpdatePath":"bin/mender-update"}`, "ota.menderUpdatePath"},
		{"path empty", `{"menderPath":""}`, "ota.menderPath"},
		{"boot id file relative", `{"bootIdFile":"boot_id"}`, "ota.bootIdFile"},
		{"attempts", `{"maxAttempts":0}`, "ota.maxAttempts"},
		{"attempts type", `{"maxAttempts":"3"}`, "ota.maxAttempts"},
		{"reboots", `{"maxReboots":0}`, "ota.maxReboots"},
		{"retry delay", `{"retryDelay":"0s"}`, "ota.retryDelay"},
		{"retry delay syntax", `{"retryDelay":"soon"}`, "ota.retryDelay"},
		{"install timeout", `{"installTimeout":"10ms"}`, "ota.installTimeout"},
		{"command timeout", `{"commandTimeout":"0s"}`, "ota.commandTimeout"},
		{"progress interval", `{"progressInterval":"-1s"}`, "ota.progressInterval"},
		{"reboot wait", `{"rebootWait":"0s"}`, "ota.rebootWait"},
		{"connectivity timeout", `{"connectivityTimeout":"1ms"}`, "ota.connectivityTimeout"},
		{"connectivity timeout number", `{"connectivityTimeout":120}`, "ota.connectivityTimeout"},
		{"reboot command empty", `{"rebootCommand":[]}`, "ota.rebootCommand"},
		{"reboot command program", `{"rebootCommand":["","now"]}`, "ota.rebootCommand[0]"},
		{"pre-reboot program", `{"preRebootCommand":[""]}`, "ota.preRebootCommand[0]"},
		{"health check name", `{"healthChecks":[{"command":["true"]}]}`, "ota.healthChecks[0].name"},
		{"health check duplicate", `{"healthChecks":[{"name":"a","command":["true"]},{"name":"a","command":["false"]}]}`, "ota.healthChecks[1].name"},
		{"health check command", `{"healthChecks":[{"name":"a","command":[]}]}`, "ota.healthChecks[0].command"},
		{"health check timeout", `{"healthChecks":[{"name":"a","command":["true"],"timeout":"1ms"}]}`, "ota.healthChecks[0].timeout"},
		{"allowed host shared s3", `{"allowedHosts":["s3.amazonaws.com"]}`, "ota.allowedHosts[0]"},
		{"allowed host regional shared s3", `{"allowedHosts":["b.s3.amazonaws.com","s3.eu-west-1.amazonaws.com"]}`, "ota.allowedHosts[1]"},
		{"allowed host wildcard", `{"allowedHosts":["*.s3.amazonaws.com"]}`, "ota.allowedHosts[0]"},
		{"allowed host url", `{"allowedHosts":["https://b.s3.amazonaws.com"]}`, "ota.allowedHosts[0]"},
		{"allowed host upper case", `{"allowedHosts":["B.s3.amazonaws.com"]}`, "ota.allowedHosts[0]"},
		{"allowed host duplicate", `{"allowedHosts":["b.s3.amazonaws.com","b.s3.amazonaws.com"]}`, "ota.allowedHosts[1]"},
		{"allowed hosts type", `{"allowedHosts":"b.s3.amazonaws.com"}`, "ota.allowedHosts"},
		{"verify key relative", `{"artifactVerifyKey":"artifact-verify-key.pem"}`, "ota.artifactVerifyKey"},
		{"health check timeout syntax", `{"healthChecks":[{"name":"a","command":["true"]},{"name":"b","command":["true"],"timeout":"1 minute"}]}`, "ota.healthChecks[1].timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte(`{` + base + `,"ota":` + c.ota + `}`))
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
