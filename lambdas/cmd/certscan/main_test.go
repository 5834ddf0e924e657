package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
)

// The packaged bootstrap starts, queries the registry's expiry index on
// dynalite for the scheduled event and answers an on-demand request.
func TestBootstrap(t *testing.T) {
	bin := lambdatest.BuildBootstrap(t, "./lambdas/cmd/certscan")
	endpoint, _ := lambdatest.StartRegistryTable(t, "registry")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	api := lambdatest.StartRuntimeAPI(t)
	lambdatest.Start(t, bin, api, lambdatest.DynaliteEnv(endpoint, map[string]string{
		"REGISTRY_TABLE":       "registry",
		"THING_NAME_PREFIX":    "dev-",
		"EXPIRY_WINDOW_DAYS":   "45",
		"AWS_ENDPOINT_URL_IOT": "http://127.0.0.1:9",
		"IOT_DATA_ENDPOINT":    "127.0.0.1:9",
	}))
	invoke := func(ev any) certscan.Report {
		t.Helper()
		out, err := api.Invoke(ctx, ev)
		require.NoError(t, err)
		require.Nil(t, out.Error, "invocation failed: %+v", out.Error)
		var rep certscan.Report
		require.NoError(t, json.Unmarshal(out.Response, &rep), string(out.Response))
		return rep
	}
	rep := invoke(map[string]any{})
	require.Empty(t, rep.Requested)
	rep = invoke(certscan.Request{ThingName: "dev-10000000a1b2c3d4"})
	require.Contains(t, rep.Skipped, "dev-10000000a1b2c3d4")
}

func TestBootstrapRejectsBadConfiguration(t *testing.T) {
	bin := lambdatest.BuildBootstrap(t, "./lambdas/cmd/certscan")
	lambdatest.RequireInitError(t, bin, map[string]string{"AWS_REGION": "us-east-1", "REGISTRY_TABLE": "t",
		"THING_NAME_PREFIX": "dev-", "EXPIRY_WINDOW_DAYS": "-3"},
		`EXPIRY_WINDOW_DAYS="-3": want a positive integer`)
}
