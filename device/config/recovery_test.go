package config

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRecoveryFields(t *testing.T) {
	base := `{"endpoint":"x.example.com","provisioning":{"templateName":"t"`
	cfg, err := Parse([]byte(base + `}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, 3, cfg.Provisioning.RecoverAfterRefusals)
	assert.Equal(t, time.Minute, cfg.Provisioning.DeniedBackoffStart())

	// A short deniedBackoff (a lab) also shortens the first wait.
	cfg, err = Parse([]byte(base + `,"deniedBackoff":"2s"}}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, 2*time.Second, cfg.Provisioning.DeniedBackoffStart())

	for _, c := range []struct{ json, field string }{
		{`,"recoverAfterRefusals":0}}`, "provisioning.recoverAfterRefusals"},
		{`,"recoverAfterRefusals":1000}}`, "provisioning.recoverAfterRefusals"},
		{`,"recoverAfterRefusals":"3"}}`, "provisioning.recoverAfterRefusals"},
		{`,"deniedBackoffMin":"0s"}}`, "provisioning.deniedBackoffMin"},
		{`,"deniedBackoffMin":"soon"}}`, "provisioning.deniedBackoffMin"},
	} {
		cfg, err := Parse([]byte(base + c.json))
		if err == nil {
			err = cfg.Validate()
		}
		var fe *FieldError
		require.True(t, errors.As(err, &fe), "%s: %v", c.json, err)
		assert.Equal(t, c.field, fe.Field, c.json)
	}
}
