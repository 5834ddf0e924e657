package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
	"github.com/iot-fleet/iot-fleet/lambdas/revoke"
	"github.com/iot-fleet/iot-fleet/sim/iottest"
)

// TestBootstrap builds the Lambda's bootstrap as the stack packages it and
// runs it as a real process under an in-test Lambda Runtime API, against
// DynamoDB (dynalite) and the local IoT Core's control plane
// (AWS_ENDPOINT_URL_IOT).
func TestBootstrap(t *testing.T) {
	bin := lambdatest.BuildBootstrap(t, "./lambdas/cmd/revoke")
	endpoint, client := lambdatest.StartRegistryTable(t, "registry")
	store, err := registry.NewDynamoDB(client, "registry")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp := iottest.Start(t, iottest.Options{Policies: []string{"iot-fleet-dev-device"}, ThingGroups: []string{"iot-fleet-dev"}})
	serial, cert := "10000000a1b2c3d4", fmt.Sprintf("%064x", 7)
	require.NoError(t, store.PutAllowed(ctx, serial))
	_, err = store.MarkProvisioned(ctx, serial, cert, "dev-"+serial)
	require.NoError(t, err)
	cp.Provision(t, "dev-"+serial, "iot-fleet-dev", "iot-fleet-dev-device", cert)

	api := lambdatest.StartRuntimeAPI(t)
	lambdatest.Start(t, bin, api, lambdatest.DynaliteEnv(endpoint, map[string]string{
		"REGISTRY_TABLE":       "registry",
		"THING_GROUP":          "iot-fleet-dev",
		"DEVICE_POLICY":        "iot-fleet-dev-device",
		"THING_NAME_PREFIX":    "dev-",
		"AWS_MAX_ATTEMPTS":     "1",
		"AWS_ENDPOINT_URL_IOT": cp.URL,
	}))

	out, err := api.Invoke(ctx, map[string]string{"serial": serial, "reason": "stolen", "by": "alice"})
	require.NoError(t, err)
	require.Nil(t, out.Error, "invocation failed: %+v", out.Error)
	var res revoke.Response
	require.NoError(t, json.Unmarshal(out.Response, &res), string(out.Response))
	assert.Equal(t, revoke.Response{Serial: serial, ThingName: "dev-" + serial, CertificateID: cert, State: "revoked", RevokedCertificates: []string{cert}}, res)
	st, _ := cp.CertStatus(cert)
	assert.Equal(t, types.CertificateStatusRevoked, st)
	assert.False(t, cp.ThingExists("dev-"+serial))
	d, err := store.Get(ctx, serial)
	require.NoError(t, err)
	assert.Equal(t, registry.StateRevoked, d.State)
	assert.True(t, d.HeldOut())
	assert.Equal(t, "alice", d.RevokedBy)

	// A bad request names what is wrong.
	out, err = api.Invoke(ctx, map[string]string{"serial": serial, "by": "alice"})
	require.NoError(t, err)
	require.NotNil(t, out.Error)
	assert.Contains(t, out.Error.ErrorMessage, "empty reason")

	lambdatest.RequireInitError(t, bin, map[string]string{"AWS_REGION": "us-east-1", "REGISTRY_TABLE": "r"},
		"missing environment variable(s): THING_GROUP, DEVICE_POLICY, THING_NAME_PREFIX")
}
