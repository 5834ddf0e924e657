package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
)

func hookEvent(serial string, cert int) protocol.PreProvisioningHookRequest {
	return protocol.PreProvisioningHookRequest{
		ClaimCertificateID: fmt.Sprintf("%064x", 999),
		CertificateID:      fmt.Sprintf("%064x", cert),
		CertificatePEM:     "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		TemplateARN:        "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/iot-fleet-dev",
		ClientID:           protocol.ClaimClientID(serial),
		Parameters:         map[string]string{protocol.ParamSerialNumber: serial},
	}
}

// TestBootstrap builds the Lambda's bootstrap as the stack packages it and
// runs it as a real process under an in-test Lambda Runtime API.
func TestBootstrap(t *testing.T) {
	bin := lambdatest.BuildBootstrap(t, "./lambdas/cmd/preprovision")
	t.Run("AnswersHookEvents", func(t *testing.T) { testAnswersHookEvents(t, bin) })
	t.Run("ReportsMissingConfiguration", func(t *testing.T) { testReportsMissingConfiguration(t, bin) })
}

// The packaged bootstrap starts under a Lambda Runtime API, reads the
// registry from DynamoDB (dynalite) and answers hook events; a warm process
// keeps denying after it admitted.
func testAnswersHookEvents(t *testing.T, bin string) {
	const allowed, unknown = "10000000a1b2c3d4", "10000000ffffffff"
	endpoint, client := lambdatest.StartRegistryTable(t, "registry")
	store, err := registry.NewDynamoDB(client, "registry")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, store.PutAllowed(ctx, allowed))

	api := lambdatest.StartRuntimeAPI(t)
	lambdatest.Start(t, bin, api, lambdatest.DynaliteEnv(endpoint, map[string]string{
		"REGISTRY_TABLE":    "registry",
		"DEVICE_POLICY":     "iot-fleet-dev-device",
		"SERIAL_PATTERN":    "^[0-9a-f]{16}$",
		"THING_NAME_PREFIX": "dev-",
	}))

	invoke := func(ev protocol.PreProvisioningHookRequest) protocol.PreProvisioningHookResponse {
		t.Helper()
		out, err := api.Invoke(ctx, ev)
		require.NoError(t, err)
		require.Nil(t, out.Error, "invocation failed: %+v", out.Error)
		var resp protocol.PreProvisioningHookResponse
		require.NoError(t, json.Unmarshal(out.Response, &resp), string(out.Response))
		return resp
	}
	assert.True(t, invoke(hookEvent(allowed, 1)).AllowProvisioning)
	assert.False(t, invoke(hookEvent(unknown, 2)).AllowProvisioning)
	assert.False(t, invoke(hookEvent("not-a-serial", 3)).AllowProvisioning)
	assert.True(t, invoke(hookEvent(allowed, 1)).AllowProvisioning, "a retried hook is admitted again")
	assert.False(t, invoke(hookEvent(allowed, 4)).AllowProvisioning, "another certificate for a provisioned serial is a clone")

	d, err := store.Get(ctx, allowed)
	require.NoError(t, err)
	assert.Equal(t, registry.StateProvisioned, d.State)
	assert.Equal(t, fmt.Sprintf("%064x", 1), d.CertificateID)
	assert.Equal(t, "dev-"+allowed, d.ThingName)
	_, err = store.Get(ctx, unknown)
	require.ErrorIs(t, err, registry.ErrNotFound)
}

func testReportsMissingConfiguration(t *testing.T, bin string) {
	lambdatest.RequireInitError(t, bin, map[string]string{"AWS_REGION": "us-east-1"},
		"missing environment variable(s): REGISTRY_TABLE, DEVICE_POLICY")
}
