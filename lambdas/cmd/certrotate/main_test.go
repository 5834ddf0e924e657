package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
)

// The packaged bootstrap starts under a Lambda Runtime API, reads the
// registry from DynamoDB (dynalite) and answers rule events; events that
// match no rotation are ignored without any IoT call.
func TestBootstrap(t *testing.T) {
	bin := lambdatest.BuildBootstrap(t, "./lambdas/cmd/certrotate")
	endpoint, client := lambdatest.StartRegistryTable(t, "registry")
	store, err := registry.NewDynamoDB(client, "registry")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, store.PutAllowed(ctx, "10000000a1b2c3d4"))
	_, err = store.MarkProvisioned(ctx, "10000000a1b2c3d4", "c1", "dev-10000000a1b2c3d4")
	require.NoError(t, err)

	api := lambdatest.StartRuntimeAPI(t)
	lambdatest.Start(t, bin, api, lambdatest.DynaliteEnv(endpoint, map[string]string{
		"REGISTRY_TABLE":       "registry",
		"DEVICE_POLICY":        "iot-fleet-dev-device",
		"THING_NAME_PREFIX":    "dev-",
		"IOT_DATA_ENDPOINT":    "127.0.0.1:9", // never called here
		"AWS_ENDPOINT_URL_IOT": "http://127.0.0.1:9",
	}))
	invoke := func(ev certrotate.Event) certrotate.Result {
		t.Helper()
		out, err := api.Invoke(ctx, ev)
		require.NoError(t, err)
		require.Nil(t, out.Error, "invocation failed: %+v", out.Error)
		var res certrotate.Result
		require.NoError(t, json.Unmarshal(out.Response, &res), string(out.Response))
		return res
	}
	res := invoke(certrotate.Event{ThingName: "dev-10000000a1b2c3d4", Kind: certrotate.KindCSR, RotationID: "r1", CSR: "x"})
	require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
	require.Equal(t, "no such rotation in progress", res.Reason)
	res = invoke(certrotate.Event{ThingName: "dev-10000000ffffffff", Kind: certrotate.KindConfirm, RotationID: "r1"})
	require.Equal(t, certrotate.OutcomeIgnored, res.Outcome)
	require.Equal(t, "device not in the registry", res.Reason)
}

func TestBootstrapReportsMissingConfiguration(t *testing.T) {
	bin := lambdatest.BuildBootstrap(t, "./lambdas/cmd/certrotate")
	lambdatest.RequireInitError(t, bin, map[string]string{"AWS_REGION": "us-east-1", "REGISTRY_TABLE": "t"},
		"missing environment variable(s): DEVICE_POLICY, THING_NAME_PREFIX")
}
