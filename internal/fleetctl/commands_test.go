package fleetctl

import (
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// unreachableOutputs writes a local stack's outputs whose endpoint
// refuses connections: a command that fails with a usage or input error
// against it never reached AWS (any call would fail with exit 1).
func unreachableOutputs(t *testing.T) string {
	t.Helper()
	return writeFile(t, t.TempDir(), "outputs.json", `{
  "localEndpoint": "http://127.0.0.1:1",
  "region": "local-1",
  "thingGroup": "iot-fleet-local",
  "thingGroupArn": "arn:aws:iot:local-1:000000000000:thinggroup/iot-fleet-local",
  "registryTable": "iot-fleet-local-registry",
  "artifactsBucket": "iot-fleet-local-artifacts",
  "otaPresignRoleArn": "arn:aws:iam::000000000000:role/iot-fleet-local-ota-presign",
  "ssmToggleLambda": "iot-fleet-local-ssmtoggle",
  "certScanLambda": "iot-fleet-local-certscan",
  "revokeLambda": "iot-fleet-local-revoke"
}`)
}

func TestEveryCommandHasHelpWithExitCodes(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			walk(sub)
		}
		path := strings.Fields(c.CommandPath())[1:]
		code, out, errOut := fleetctl(t, append(path, "--help")...)
		assert.Equal(t, ExitOK, code, "%v --help: %s", path, errOut)
		assert.Contains(t, out, "Usage:", "%v --help", path)
		if c.Runnable() {
			assert.Contains(t, out, "Exit codes", "%v --help documents its exit codes", path)
		}
		n++
	}
	walk(NewRootCommand())
	assert.GreaterOrEqual(t, n, 20, "the command tree")
}

func TestUsageErrorsNeverReachAWS(t *testing.T) {
	outputs := unreachableOutputs(t)
	doc := writeFile(t, t.TempDir(), "job.json", `{"version":"1.0","steps":[{"action":{"name":"hi","type":"runCommand","input":{"command":"/bin/echo,hi"}}}]}`)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"revoke without a reason", []string{"revoke", "10000000a1b2c3d4"}, "--reason is required"},
		{"revoke with a blank reason", []string{"revoke", "10000000a1b2c3d4", "--reason", "  "}, "--reason is required"},
		{"revoke without a device", []string{"revoke", "--reason", "stolen"}, "accepts 1 arg"},
		{"ssm without a device or group", []string{"ssm", "on"}, "DEVICE or --group"},
		{"ssm with a device and a group", []string{"ssm", "off", "dev-1", "--group", "g"}, "DEVICE or --group"},
		{"rotate with nothing", []string{"rotate"}, "exactly one of"},
		{"rotate a device and --expiring", []string{"rotate", "dev-1", "--expiring"}, "exactly one of"},
		{"ota create without an artifact", []string{"ota", "create"}, "--artifact FILE"},
		{"ota create --key without --sha256", []string{"ota", "create", "--key", "a.mender"}, "--sha256 is required"},
		{"jobs create without a document", []string{"jobs", "create"}, "--document FILE is required"},
		{"jobs create with a bad job id", []string{"jobs", "create", "--document", doc, "--job-id", "a b"}, "job id"},
		{"jobs watch without a job", []string{"jobs", "watch"}, "accepts 1 arg"},
		{"ota status with two jobs", []string{"ota", "status", "a", "b"}, "accepts 1 arg"},
		{"jobs list with a bad status", []string{"jobs", "list", "--status", "DONE"}, "--status"},
		{"devices show without a device", []string{"devices", "show"}, "accepts 1 arg"},
		{"unknown flag", []string{"devices", "list", "--nope"}, "unknown flag"},
		{"--local with --outputs", []string{"--local", t.TempDir(), "devices", "list"}, "--local reads"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--outputs", outputs}, tc.args...)
			code, _, errOut := fleetctl(t, args...)
			assert.Equal(t, ExitUsage, code, errOut)
			assert.Contains(t, errOut, tc.want)
			assert.NotContains(t, errOut, "127.0.0.1:1", "nothing was sent")
		})
	}
}

func TestLocalReadsTheLocalIoTCoresOutputs(t *testing.T) {
	dir := t.TempDir()
	code, _, errOut := fleetctl(t, "--local", dir, "devices", "list")
	assert.Equal(t, ExitFailed, code)
	assert.Contains(t, errOut, "outputs.json")
	assert.Contains(t, errOut, "fleet-sim serve --dir "+dir, "says what to start")

	// With the outputs, every client talks to localEndpoint.
	b, err := os.ReadFile(unreachableOutputs(t))
	require.NoError(t, err)
	writeFile(t, dir, LocalOutputsFile, string(b))
	code, _, errOut = fleetctl(t, "--local", dir, "jobs", "list")
	assert.Equal(t, ExitFailed, code)
	assert.Contains(t, errOut, "127.0.0.1:1", "the local endpoint was called")

	code, _, errOut = fleetctl(t, "devices", "list")
	assert.Equal(t, ExitUsage, code)
	assert.Contains(t, errOut, "--local DIR")
}

func TestOutputsNameWhatIsMissing(t *testing.T) {
	outputs := writeFile(t, t.TempDir(), "o.json", `{"localEndpoint": "http://127.0.0.1:1", "registryTable": ""}`)
	code, _, errOut := fleetctl(t, "--outputs", outputs, "revoke", "x", "--reason", "lost")
	assert.Equal(t, ExitFailed, code)
	assert.Contains(t, errOut, `"registryTable" is not a non-empty string`)

	notJSON := writeFile(t, t.TempDir(), "o.json", `registryTable: x`)
	code, _, errOut = fleetctl(t, "--outputs", notJSON, "devices", "list")
	assert.Equal(t, ExitFailed, code)
	assert.Contains(t, errOut, "not a JSON object")
}

// An operator's real AWS credentials are never sent to a local endpoint
// (a process on the workstation could log the access key id).
func TestLocalNeverSendsTheOperatorsCredentials(t *testing.T) {
	var mu sync.Mutex
	var auth []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"jobs": []}`))
	}))
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATORREALKEY0")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
	dir := t.TempDir()
	writeFile(t, dir, LocalOutputsFile, `{"localEndpoint": "`+srv.URL+`", "region": "local-1"}`)
	code, _, errOut := fleetctl(t, "--local", dir, "jobs", "list")
	require.Equal(t, ExitOK, code, errOut)
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, auth)
	for _, a := range auth {
		assert.Contains(t, a, "Credential=fleetctl-local/")
		assert.NotContains(t, a, "AKIAOPERATORREALKEY0")
	}
}
