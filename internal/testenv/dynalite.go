package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// DynaliteBinEnv names the environment variable that overrides the path of
// the dynalite binary.
const DynaliteBinEnv = "DYNALITE_BIN"

// DynaliteRegion is the region tests use with dynalite (any value works).
const DynaliteRegion = "us-east-1"

// DynaliteBin returns the dynalite binary tests use: $DYNALITE_BIN, else
// <repo root>/.tools/node_modules/.bin/dynalite (installed by `make tools`).
// The repo root is found by walking up from the working directory to go.mod.
func DynaliteBin() (string, error) {
	if p := os.Getenv(DynaliteBinEnv); p != "" {
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".tools", "node_modules", ".bin", "dynalite"), nil
}

// RepoRoot returns the nearest directory at or above the working directory
// that holds go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repo root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repo root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// StartDynalite starts a dynalite server (an in-memory DynamoDB API) on a
// free 127.0.0.1 port, waits until it answers and returns its endpoint URL.
// The server is killed when the test ends. When the binary is missing the
// test is skipped with a hint to run `make tools`, or fails if $CI is set.
func StartDynalite(t testing.TB) string {
	t.Helper()
	bin, err := DynaliteBin()
	if err != nil {
		t.Fatalf("dynalite: %v", err)
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("dynalite not found at %s (set %s or run `make tools`): %v", bin, DynaliteBinEnv, err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// Picking a free port and handing it to another process races with
	// other listeners; retry a few times if dynalite loses the race.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		endpoint, stop, err := startDynalite(bin)
		if err == nil {
			t.Cleanup(stop)
			return endpoint
		}
		lastErr = err
	}
	t.Fatalf("dynalite: %v", lastErr)
	return ""
}

func startDynalite(bin string) (endpoint string, stop func(), err error) {
	port, err := dynaliteFreePort()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0")
	out := &LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop = func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	endpoint = "http://127.0.0.1:" + strconv.Itoa(port)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-exited:
			return "", nil, fmt.Errorf("dynalite exited before answering: %s", out.String())
		case <-ctx.Done():
			stop()
			return "", nil, fmt.Errorf("dynalite did not answer on %s within 20s: %s", endpoint, out.String())
		case <-time.After(50 * time.Millisecond):
		}
		// Any HTTP answer (dynalite rejects the unsigned request) means
		// the server is up.
		resp, err := client.Get(endpoint)
		if err == nil {
			_ = resp.Body.Close()
			return endpoint, stop, nil
		}
	}
}

func dynaliteFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// DynamoDBClient returns a DynamoDB client for a dynalite endpoint, with
// fixed fake credentials.
func DynamoDBClient(endpoint string) *dynamodb.Client {
	return dynamodb.New(dynamodb.Options{
		Region:       DynaliteRegion,
		BaseEndpoint: aws.String(endpoint),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "AKIDTEST", SecretAccessKey: "test-secret", Source: "testenv"}, nil
		}),
	})
}

// CreateRegistryTable creates table with the device registry's key schema
// (partition key registry.PartitionKey, type S; on-demand billing) and its
// expiry index (registry.ExpiryIndex: partition key
// registry.AttrExpiryPartition, sort key registry.AttrCertNotAfter, both S,
// projection ALL), as the Pulumi program declares them, and waits until it
// is active.
func CreateRegistryTable(t testing.TB, client *dynamodb.Client, table string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName: aws.String(table),
		AttributeDefinitions: []types.AttributeDefinition{
			{AttributeName: aws.String(registry.PartitionKey), AttributeType: types.ScalarAttributeTypeS},
			{AttributeName: aws.String(registry.AttrExpiryPartition), AttributeType: types.ScalarAttributeTypeS},
			{AttributeName: aws.String(registry.AttrCertNotAfter), AttributeType: types.ScalarAttributeTypeS},
		},
		KeySchema: []types.KeySchemaElement{
			{AttributeName: aws.String(registry.PartitionKey), KeyType: types.KeyTypeHash},
		},
		GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{{
			IndexName: aws.String(registry.ExpiryIndex),
			KeySchema: []types.KeySchemaElement{
				{AttributeName: aws.String(registry.AttrExpiryPartition), KeyType: types.KeyTypeHash},
				{AttributeName: aws.String(registry.AttrCertNotAfter), KeyType: types.KeyTypeRange},
			},
			Projection: &types.Projection{ProjectionType: types.ProjectionTypeAll},
		}},
		BillingMode: types.BillingModePayPerRequest,
	})
	if err != nil {
		t.Fatalf("create table %s: %v", table, err)
	}
	w := dynamodb.NewTableExistsWaiter(client, func(o *dynamodb.TableExistsWaiterOptions) {
		o.MinDelay = 10 * time.Millisecond
		o.MaxDelay = 200 * time.Millisecond
	})
	if err := w.Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)}, 20*time.Second); err != nil {
		t.Fatalf("table %s not active: %v", table, err)
	}
}
