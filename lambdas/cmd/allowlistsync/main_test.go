package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
)

const bucket = "iot-fleet-dev-config"

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return "http://" + addr
}

func s3Event(key string) events.S3Event {
	var r events.S3EventRecord
	r.EventSource = "aws:s3"
	r.EventName = "ObjectCreated:Put"
	r.S3.Bucket.Name = bucket
	r.S3.Object.Key = key
	return events.S3Event{Records: []events.S3EventRecord{r}}
}

// TestBootstrap builds the Lambda's bootstrap as the stack packages it and
// runs it as a real process under an in-test Lambda Runtime API.
func TestBootstrap(t *testing.T) {
	bin := lambdatest.BuildBootstrap(t, "./lambdas/cmd/allowlistsync")
	t.Run("SyncsAllowlist", func(t *testing.T) { testSyncsAllowlist(t, bin) })
	t.Run("ReportsMissingConfiguration", func(t *testing.T) { testReportsMissingConfiguration(t, bin) })
}

// The packaged bootstrap reads the allowlist from S3, admits its serials in
// DynamoDB (dynalite), reports a bad line by number, and reports a failed
// revocation by serial when AWS IoT cannot be reached.
func testSyncsAllowlist(t *testing.T, bin string) {
	endpoint, client := lambdatest.StartRegistryTable(t, "registry")
	store, err := registry.NewDynamoDB(client, "registry")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	s3 := lambdatest.StartS3(t, bucket)

	api := lambdatest.StartRuntimeAPI(t)
	lambdatest.Start(t, bin, api, lambdatest.DynaliteEnv(endpoint, map[string]string{
		"REGISTRY_TABLE":           "registry",
		"THING_GROUP":              "iot-fleet-dev",
		"DEVICE_POLICY":            "iot-fleet-dev-device",
		"THING_NAME_PREFIX":        "dev-",
		"SERIAL_PATTERN":           "^[0-9a-f]{16}$",
		"MAX_REVOCATIONS_PER_SYNC": "1",
		"AWS_MAX_ATTEMPTS":         "1",
		"AWS_ENDPOINT_URL_S3":      s3.URL,
		"AWS_ENDPOINT_URL_IOT":     closedPort(t),
	}))

	// 0. An event for an object S3 does not hold surfaces S3's NoSuchKey
	// and admits nothing.
	out, err := api.Invoke(ctx, s3Event("allowlist.txt"))
	require.NoError(t, err)
	require.NotNil(t, out.Error)
	assert.True(t, strings.Contains(out.Error.ErrorMessage, "NoSuchKey"), out.Error.ErrorMessage)
	_, err = store.Get(ctx, "10000000a1b2c3d4")
	require.ErrorIs(t, err, registry.ErrNotFound)

	// 1. Two new serials are admitted.
	s3.Put(t, bucket, "allowlist.txt", "# devices\n10000000a1b2c3d4\n\n10000000a1b2c3d5 # bench\n")
	out, err = api.Invoke(ctx, s3Event("allowlist.txt"))
	require.NoError(t, err)
	require.Nil(t, out.Error, "invocation failed: %+v", out.Error)
	var res allowlistsync.Result
	require.NoError(t, json.Unmarshal(out.Response, &res), string(out.Response))
	assert.Equal(t, allowlistsync.Result{Listed: 2, Added: 2}, res)
	for _, s := range []string{"10000000a1b2c3d4", "10000000a1b2c3d5"} {
		d, err := store.Get(ctx, s)
		require.NoError(t, err)
		assert.Equal(t, registry.StateAllowed, d.State)
	}
	assert.Contains(t, s3.Reads(), bucket+"/allowlist.txt")

	// 2. A bad line fails the sync with its number and changes nothing.
	s3.Put(t, bucket, "allowlist.txt", "10000000a1b2c3d4\n10000000a1b2c3d5\nZZZ\n10000000a1b2c3d6\n")
	out, err = api.Invoke(ctx, s3Event("allowlist.txt"))
	require.NoError(t, err)
	require.NotNil(t, out.Error)
	assert.Contains(t, out.Error.ErrorMessage, "allowlist line 3")
	_, err = store.Get(ctx, "10000000a1b2c3d6")
	require.ErrorIs(t, err, registry.ErrNotFound)

	// 2b. Removing both devices is over MAX_REVOCATIONS_PER_SYNC=1: the
	// sync is refused and adds nothing either.
	s3.Put(t, bucket, "allowlist.txt", "10000000a1b2c3d6\n")
	out, err = api.Invoke(ctx, s3Event("allowlist.txt"))
	require.NoError(t, err)
	require.NotNil(t, out.Error)
	assert.Contains(t, out.Error.ErrorMessage, "refused, nothing changed")
	assert.Contains(t, out.Error.ErrorMessage, "limit of 1")
	assert.Contains(t, out.Error.ErrorMessage, "confirm-revocations=2")
	_, err = store.Get(ctx, "10000000a1b2c3d6")
	require.ErrorIs(t, err, registry.ErrNotFound)

	// 3. A removed, provisioned device cannot be revoked while AWS IoT is
	// unreachable: the error names it and its record stays revoking (the
	// hook denies it; the next sync finishes the revocation).
	_, err = store.MarkProvisioned(ctx, "10000000a1b2c3d5", fmt.Sprintf("%064x", 7), "")
	require.NoError(t, err)
	s3.Put(t, bucket, "allowlist.txt", "10000000a1b2c3d4\n")
	out, err = api.Invoke(ctx, s3Event("allowlist.txt"))
	require.NoError(t, err)
	require.NotNil(t, out.Error)
	assert.Contains(t, out.Error.ErrorMessage, "1 device(s) failed: 10000000a1b2c3d5")
	d, err := store.Get(ctx, "10000000a1b2c3d5")
	require.NoError(t, err)
	assert.Equal(t, registry.StateRevoking, d.State)

	// 4. An event for another object names the object the sync reads.
	out, err = api.Invoke(ctx, s3Event("allowlist.txt"+"x"))
	require.NoError(t, err)
	require.NotNil(t, out.Error)
	assert.Contains(t, out.Error.ErrorMessage, `no record for object "allowlist.txt"`)
}

func testReportsMissingConfiguration(t *testing.T, bin string) {
	lambdatest.RequireInitError(t, bin, map[string]string{"AWS_REGION": "us-east-1", "REGISTRY_TABLE": "r"},
		"missing environment variable(s): THING_GROUP, DEVICE_POLICY, THING_NAME_PREFIX")
	for _, bad := range []string{"0", "-1", "ten"} {
		lambdatest.RequireInitError(t, bin, map[string]string{"AWS_REGION": "us-east-1", "REGISTRY_TABLE": "r",
			"THING_GROUP": "g", "DEVICE_POLICY": "p", "THING_NAME_PREFIX": "dev-", "MAX_REVOCATIONS_PER_SYNC": bad},
			`MAX_REVOCATIONS_PER_SYNC="`+bad+`": want a positive integer (unset for the default max(5, ceil(10% of the admitted fleet)))`)
	}
}
