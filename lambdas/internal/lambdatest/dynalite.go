package lambdatest

import (
	"maps"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// StartRegistryTable starts a dynalite server with an empty registry table
// named table and returns its endpoint and a client for it.
func StartRegistryTable(t testing.TB, table string) (endpoint string, client *dynamodb.Client) {
	t.Helper()
	endpoint = testenv.StartDynalite(t)
	client = testenv.DynamoDBClient(endpoint)
	testenv.CreateRegistryTable(t, client, table)
	return endpoint, client
}

// DynaliteEnv is env plus the variables that point a bootstrap's AWS SDK
// at the dynalite server on endpoint, with test credentials (AWS_REGION,
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_DYNAMODB).
// A variable env sets wins.
func DynaliteEnv(endpoint string, env map[string]string) map[string]string {
	vars := map[string]string{
		"AWS_REGION":                testenv.DynaliteRegion,
		"AWS_ACCESS_KEY_ID":         "AKIDTEST",
		"AWS_SECRET_ACCESS_KEY":     "test-secret",
		"AWS_ENDPOINT_URL_DYNAMODB": endpoint,
	}
	maps.Copy(vars, env)
	return vars
}
