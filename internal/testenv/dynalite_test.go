package testenv

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/stretchr/testify/require"
)

func TestStartDynaliteServesDynamoDB(t *testing.T) {
	endpoint := StartDynalite(t)
	require.Regexp(t, `^http://127\.0\.0\.1:\d+$`, endpoint)

	client := DynamoDBClient(endpoint)
	CreateRegistryTable(t, client, "registry")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	desc, err := client.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String("registry")})
	require.NoError(t, err)
	require.Equal(t, types.TableStatusActive, desc.Table.TableStatus)
	require.Len(t, desc.Table.KeySchema, 1)
	require.Equal(t, "serial", aws.ToString(desc.Table.KeySchema[0].AttributeName))
	require.Equal(t, types.KeyTypeHash, desc.Table.KeySchema[0].KeyType)

	_, err = client.PutItem(ctx, &dynamodb.PutItemInput{
		TableName: aws.String("registry"),
		Item:      map[string]types.AttributeValue{"serial": &types.AttributeValueMemberS{Value: "abc"}},
	})
	require.NoError(t, err)
	got, err := client.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String("registry"),
		Key:       map[string]types.AttributeValue{"serial": &types.AttributeValueMemberS{Value: "abc"}},
	})
	require.NoError(t, err)
	require.Equal(t, &types.AttributeValueMemberS{Value: "abc"}, got.Item["serial"])
}

func TestTwoDynalitesAreIndependent(t *testing.T) {
	a, b := StartDynalite(t), StartDynalite(t)
	require.NotEqual(t, a, b)
	CreateRegistryTable(t, DynamoDBClient(a), "only-in-a")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := DynamoDBClient(b).ListTables(ctx, &dynamodb.ListTablesInput{})
	require.NoError(t, err)
	require.Empty(t, out.TableNames)
}

func TestDynaliteMissingBinarySkipsOrFails(t *testing.T) {
	t.Setenv(DynaliteBinEnv, t.TempDir()+"/no-such-dynalite")
	t.Setenv("CI", "")
	// A sub-test observes the skip without skipping this test.
	var skipped bool
	t.Run("missing", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		StartDynalite(t)
		t.Error("StartDynalite returned without a binary")
	})
	require.True(t, skipped, "missing binary must skip outside CI")
}

func TestDynaliteMissingBinaryFailsInCI(t *testing.T) {
	if os.Getenv("TESTENV_DYNALITE_CHILD") == "1" {
		StartDynalite(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestDynaliteMissingBinaryFailsInCI$", "-test.v")
	cmd.Env = append(os.Environ(), "TESTENV_DYNALITE_CHILD=1", "CI=true", DynaliteBinEnv+"="+t.TempDir()+"/none")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "%s", out)
	require.Contains(t, string(out), "--- FAIL: TestDynaliteMissingBinaryFailsInCI")
	require.Contains(t, string(out), "make tools")
}
