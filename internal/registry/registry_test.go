package registry_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

func TestMemoryContract(t *testing.T) {
	registrytest.Run(t, func(t *testing.T, now func() time.Time) registry.Store {
		return registry.NewMemory(registry.WithClock(now))
	})
}

func TestDynamoDBContract(t *testing.T) {
	endpoint := testenv.StartDynalite(t)
	client := testenv.DynamoDBClient(endpoint)
	var n atomic.Int64
	registrytest.Run(t, func(t *testing.T, now func() time.Time) registry.Store {
		table := fmt.Sprintf("registry-%d", n.Add(1))
		testenv.CreateRegistryTable(t, client, table)
		s, err := registry.NewDynamoDB(client, table, registry.WithClock(now))
		require.NoError(t, err)
		return s
	})
}

// The table holds the attributes the brief's environment contract names,
// with RFC 3339 timestamps.
func TestDynamoDBRecordLayout(t *testing.T) {
	client := testenv.DynamoDBClient(testenv.StartDynalite(t))
	testenv.CreateRegistryTable(t, client, "registry")
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	s, err := registry.NewDynamoDB(client, "registry", registry.WithClock(func() time.Time { return now }))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	require.NoError(t, s.PutAllowed(ctx, "10000000a1b2c3d4"))
	_, err = s.MarkProvisioned(ctx, "10000000a1b2c3d4", "c0ffee", "dev-10000000a1b2c3d4")
	require.NoError(t, err)

	out, err := client.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String("registry"),
		Key:       map[string]types.AttributeValue{"serial": &types.AttributeValueMemberS{Value: "10000000a1b2c3d4"}},
	})
	require.NoError(t, err)
	s2 := func(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
	require.Equal(t, map[string]types.AttributeValue{
		"serial":        s2("10000000a1b2c3d4"),
		"state":         s2("provisioned"),
		"thingName":     s2("dev-10000000a1b2c3d4"),
		"certificateId": s2("c0ffee"),
		"createdAt":     s2("2025-01-02T03:04:05Z"),
		"updatedAt":     s2("2025-01-02T03:04:05Z"),
	}, out.Item)
}

func TestDynamoDBUnknownStateIsAnError(t *testing.T) {
	client := testenv.DynamoDBClient(testenv.StartDynalite(t))
	testenv.CreateRegistryTable(t, client, "registry")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := client.PutItem(ctx, &dynamodb.PutItemInput{
		TableName: aws.String("registry"),
		Item: map[string]types.AttributeValue{
			"serial": &types.AttributeValueMemberS{Value: "x1"},
			"state":  &types.AttributeValueMemberS{Value: "bogus"},
		},
	})
	require.NoError(t, err)
	s, err := registry.NewDynamoDB(client, "registry")
	require.NoError(t, err)
	_, err = s.Get(ctx, "x1")
	require.ErrorContains(t, err, `unknown state "bogus"`)
}

func TestDynamoDBMissingTable(t *testing.T) {
	client := testenv.DynamoDBClient(testenv.StartDynalite(t))
	s, err := registry.NewDynamoDB(client, "no-such-table")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = s.Get(ctx, "x1")
	require.Error(t, err)
	require.NotErrorIs(t, err, registry.ErrNotFound)
	require.ErrorContains(t, err, "get x1")
}

func TestNewDynamoDBValidates(t *testing.T) {
	_, err := registry.NewDynamoDB(nil, "t")
	require.Error(t, err)
	_, err = registry.NewDynamoDB(testenv.DynamoDBClient("http://127.0.0.1:1"), "")
	require.Error(t, err)
}

func TestStateHelpers(t *testing.T) {
	require.True(t, registry.StateAllowed.Admitted())
	require.True(t, registry.StateProvisioned.Admitted())
	require.True(t, registry.StateReadmitted.Admitted())
	require.False(t, registry.StateRevoking.Admitted())
	require.False(t, registry.StateRevoked.Admitted())
	require.True(t, registry.StateRevoking.Valid())
	require.True(t, registry.StateReadmitted.Valid())
	require.True(t, registry.ValidReadmitToken("INC-42:2026.12.05_a"))
	require.False(t, registry.ValidReadmitToken("two words"))
	require.False(t, registry.State("").Admitted())
	require.True(t, registry.StateRevoked.Valid())
	require.False(t, registry.State("x").Valid())
}

func TestScanAllStopsOnCallbackError(t *testing.T) {
	ctx := context.Background()
	m := registry.NewMemory()
	for i := range 3 {
		require.NoError(t, m.PutAllowed(ctx, fmt.Sprint(i)))
	}
	stop := fmt.Errorf("stop")
	calls := 0
	err := registry.ScanAll(ctx, m, func(registry.Device) error { calls++; return stop })
	require.ErrorIs(t, err, stop)
	require.Equal(t, 1, calls)
}

// A provisioned record with a known expiry carries the expiry index's keys;
// a revoked one loses the index partition (the index is sparse).
func TestDynamoDBExpiryLayout(t *testing.T) {
	client := testenv.DynamoDBClient(testenv.StartDynalite(t))
	testenv.CreateRegistryTable(t, client, "registry")
	s, err := registry.NewDynamoDB(client, "registry")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, s.PutAllowed(ctx, "a1"))
	notAfter := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	_, err = s.RecordProvisioned(ctx, "a1", "dev-a1", registry.Certificate{ID: "c1", NotAfter: notAfter})
	require.NoError(t, err)
	get := func() map[string]types.AttributeValue {
		out, err := client.GetItem(ctx, &dynamodb.GetItemInput{
			TableName: aws.String("registry"),
			Key:       map[string]types.AttributeValue{"serial": &types.AttributeValueMemberS{Value: "a1"}},
		})
		require.NoError(t, err)
		return out.Item
	}
	item := get()
	require.Equal(t, &types.AttributeValueMemberS{Value: "2026-05-06T07:08:09Z"}, item["certNotAfter"])
	require.Equal(t, &types.AttributeValueMemberS{Value: "provisioned"}, item["expiryPartition"])
	require.NoError(t, s.MarkRevoked(ctx, "a1", "c1"))
	item = get()
	require.NotContains(t, item, "expiryPartition")
	require.Contains(t, item, "certNotAfter")
}

// A record written before readmitTokens existed knows only its last token:
// that token still re-admits nothing, and the next re-admission starts the
// set with both.
func TestDynamoDBReadmitLegacyRecord(t *testing.T) {
	client := testenv.DynamoDBClient(testenv.StartDynalite(t))
	testenv.CreateRegistryTable(t, client, "registry")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s2 := func(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
	_, err := client.PutItem(ctx, &dynamodb.PutItemInput{
		TableName: aws.String("registry"),
		Item: map[string]types.AttributeValue{
			"serial": s2("x1"), "state": s2("provisioned"), "certificateId": s2("c1"),
			"readmitToken": s2("T1"), "createdAt": s2("2025-01-02T03:04:05Z"), "updatedAt": s2("2025-01-02T03:04:05Z"),
		},
	})
	require.NoError(t, err)
	s, err := registry.NewDynamoDB(client, "registry")
	require.NoError(t, err)
	_, changed, err := s.Readmit(ctx, "x1", "T1", "revert")
	require.NoError(t, err)
	require.False(t, changed)
	d, changed, err := s.Readmit(ctx, "x1", "T2", "ops")
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, registry.StateReadmitted, d.State)
	require.Equal(t, []string{"T1", "T2"}, d.ReadmitTokens)
	out, err := client.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String("registry"), Key: map[string]types.AttributeValue{"serial": s2("x1")}})
	require.NoError(t, err)
	ss, ok := out.Item["readmitTokens"].(*types.AttributeValueMemberSS)
	require.True(t, ok, "readmitTokens is a string set: %T", out.Item["readmitTokens"])
	require.ElementsMatch(t, []string{"T1", "T2"}, ss.Value)
}
