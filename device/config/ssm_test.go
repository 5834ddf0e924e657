package config

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSSMSection(t *testing.T) {
	base := `"endpoint":"x.example.com","provisioning":{"templateName":"t"}`
	cfg, err := Parse([]byte(`{` + base + `}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, DefaultSSM(), cfg.SSM)

	cfg, err = Parse([]byte(`{` + base + `,"ssm":{"installCommand":["dpkg","-i","/opt/ssm.deb"],"commandTimeout":"30s"}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, []string{"dpkg", "-i", "/opt/ssm.deb"}, cfg.SSM.InstallCommand)
	assert.Equal(t, "/usr/bin/amazon-ssm-agent", cfg.SSM.AgentPath, "other defaults kept")

	for _, c := range []struct{ json, field string }{
		{`{"agentPath":"amazon-ssm-agent"}`, "ssm.agentPath"},
		{`{"startCommand":[]}`, "ssm.startCommand"},
		{`{"stopCommand":["systemctl",""]}`, "ssm.stopCommand[1]"},
		{`{"commandTimeout":"10ms"}`, "ssm.commandTimeout"},
		{`{"registrationFile":"rel/path"}`, "ssm.registrationFile"},
	} {
		cfg, err := Parse([]byte(`{` + base + `,"ssm":` + c.json + `}`))
		require.NoError(t, err, c.json)
		var fe *FieldError
		require.ErrorAs(t, cfg.Validate(), &fe, c.json)
		assert.Equal(t, c.field, fe.Field, c.json)
	}
	_, err = Parse([]byte(`{` + base + `,"ssm":{"commandTimeout":"soon"}}`))
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "ssm.commandTimeout", fe.Field)

	cfg, err = Parse([]byte(`{` + base + `,"ssm":{"enabled":false,"startCommand":[]}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate(), "a disabled section is not validated")
}
