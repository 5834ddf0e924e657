package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

// TestBootstrap builds the packaged bootstrap and runs it under an in-test
// Lambda Runtime API against dynalite: it answers status requests from the
// registry table and rejects bad requests and configuration.
func TestBootstrap(t *testing.T) {
	bin := lambdatest.BuildBootstrap(t, "./lambdas/cmd/ssmtoggle")
	t.Run("AnswersStatus", func(t *testing.T) {
		const serial = "00000000000000c1"
		endpoint, client := lambdatest.StartRegistryTable(t, "registry")
		reg, err := registry.NewDynamoDB(client, "registry")
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		require.NoError(t, reg.PutAllowed(ctx, serial))
		_, err = reg.MarkProvisioned(ctx, serial, fmt.Sprintf("%064x", 1), "dev-"+serial)
		require.NoError(t, err)
		state, err := ssmstate.NewDynamoDB(client, "registry", nil)
		require.NoError(t, err)
		_, err = state.Reserve(ctx, serial, "req-1")
		require.NoError(t, err)
		_, err = state.SetActivation(ctx, serial, "req-1", "act-1", time.Now().Add(time.Hour))
		require.NoError(t, err)

		// Systems Manager (JSON 1.1 protocol): no instance registered yet.
		var ssmCalls atomic.Int32
		ssmAPI := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ssmCalls.Add(1)
			if r.Header.Get("X-Amz-Target") != "AmazonSSM.DescribeInstanceInformation" {
				http.Error(w, `{"__type":"InvalidAction"}`, http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			_, _ = w.Write([]byte(`{"InstanceInformationList":[]}`))
		}))
		t.Cleanup(ssmAPI.Close)

		api := lambdatest.StartRuntimeAPI(t)
		lambdatest.Start(t, bin, api, lambdatest.DynaliteEnv(endpoint, map[string]string{
			"AWS_ENDPOINT_URL_SSM": ssmAPI.URL,
			"REGISTRY_TABLE":       "registry", "MANAGED_INSTANCE_ROLE": "role", "ENVIRONMENT": "dev",
			"THING_NAME_PREFIX": "dev-", "IOT_DATA_ENDPOINT": "127.0.0.1:1",
		}))
		out, err := api.Invoke(ctx, ssmtoggle.Request{DeviceID: "dev-" + serial, Action: ssmtoggle.ActionStatus})
		require.NoError(t, err)
		require.Nil(t, out.Error, "%+v", out.Error)
		var resp ssmtoggle.Response
		require.NoError(t, json.Unmarshal(out.Response, &resp), string(out.Response))
		require.Len(t, resp.Results, 1)
		r := resp.Results[0]
		assert.True(t, r.OK, r.Error)
		assert.Equal(t, serial, r.Serial)
		assert.Equal(t, ssmstate.StateActivating, r.State)
		assert.Equal(t, "act-1", r.ActivationID)
		assert.Empty(t, r.Message)
		assert.Equal(t, int32(1), ssmCalls.Load(), "status looked for a missed registration")

		out, err = api.Invoke(ctx, map[string]string{"device_id": serial, "action": "enable"})
		require.NoError(t, err)
		require.NotNil(t, out.Error)
		assert.Contains(t, out.Error.ErrorMessage, `"action"`)
	})
	t.Run("ReportsMissingConfiguration", func(t *testing.T) {
		lambdatest.RequireInitError(t, bin, map[string]string{"AWS_REGION": "us-east-1", "REGISTRY_TABLE": "t"},
			"missing environment variable(s): MANAGED_INSTANCE_ROLE, ENVIRONMENT, THING_NAME_PREFIX, IOT_DATA_ENDPOINT")
	})
}
