package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRotationSettings(t *testing.T) {
	base := `{"endpoint":"x.example.com","provisioning":{"templateName":"t"},"mqtt":{"reconnectMax":"1s"},`
	cfg, err := Parse([]byte(base + `"rotation":{"certTimeout":"4s","switchTimeout":"3s"}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, Rotation{CertTimeout: Duration(4 * time.Second), SwitchTimeout: Duration(3 * time.Second)}, cfg.Rotation)

	for body, field := range map[string]string{
		`"rotation":{"certTimeout":"500ms"}}`:    "rotation.certTimeout",
		`"rotation":{"switchTimeout":"1500ms"}}`: "rotation.switchTimeout",
		`"rotation":{"switchTimeout":"0s"}}`:     "rotation.switchTimeout",
	} {
		cfg, err := Parse([]byte(base + body))
		require.NoError(t, err, body)
		err = cfg.Validate()
		var fe *FieldError
		require.ErrorAs(t, err, &fe, body)
		require.Equal(t, field, fe.Field, body)
	}

	_, err = Parse([]byte(base + `"rotation":{"switchTimeout":"soon"}}`))
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "rotation.switchTimeout", fe.Field)
}
