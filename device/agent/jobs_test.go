package agent

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	simjobs "github.com/iot-fleet/iot-fleet/sim/jobs"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// stackConfig is testConfig against the local IoT Core with the stack's
// Lambdas (sim/stack), with serial on its allowlist.
func stackConfig(t *testing.T, st *stack.Stack) config.Config {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := st.DeployAllowlist(ctx, []byte(serial+"\n"))
	require.NoError(t, err)
	dir := t.TempDir()
	devicetest.WriteClaimFiles(t, st.Core, dir)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "serial-number"), []byte(serial+"\x00"), 0o600))
	host, port, err := net.SplitHostPort(st.Core.Endpoint())
	require.NoError(t, err)
	cfg, err := config.Parse([]byte(`{
		"endpoint": "` + host + `", "port": ` + port + `,
		"rootCAFile": "` + filepath.Join(dir, "root-ca.pem") + `", "stateDir": "` + filepath.Join(dir, "state") + `",
		"logLevel": "debug",
		"provisioning": {
			"claimCertFile": "` + filepath.Join(dir, "claim.pem") + `", "claimKeyFile": "` + filepath.Join(dir, "claim.key") + `",
			"templateName": "` + st.Core.Names().TemplateName + `", "serialFiles": ["` + filepath.Join(dir, "serial-number") + `"],
			"responseTimeout": "5s", "retryMin": "5ms", "retryMax": "50ms", "deniedBackoff": "1s"
		},
		"mqtt": {"reconnectMin": "10ms", "reconnectMax": "100ms", "connectTimeout": "5s"}
	}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	return cfg
}

// The agent wires the jobs engine to the connection (subscriptions with
// handlers, on-connect start-next) and to the outbox (updates): against
// the local IoT Core's Jobs service, a job for the thing group runs to
// SUCCEEDED with the step's stdout in its statusDetails.
func TestJobsFeatureRunsAJobEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	doc, err := json.Marshal(map[string]any{
		"version":       "1.0",
		"includeStdOut": "true",
		"steps": []any{map[string]any{"action": map[string]any{
			"name": "hello", "type": "runCommand", "input": map[string]any{"command": "echo,hello-from-job"},
		}}},
	})
	require.NoError(t, err)
	_, err = st.Core.CreateJob(ctx, simjobs.CreateJobInput{JobID: "job-1", Document: doc, Groups: []string{st.Core.Names().ThingGroup}, Continuous: true})
	require.NoError(t, err)
	cfg := stackConfig(t, st)
	_, _ = startAgent(t, cfg, &testenv.LogBuffer{}, &notifications{}, JobsFeature(nil))

	thing := st.Core.Names().ThingNamePrefix + serial
	var ex simjobs.Execution
	require.Eventually(t, func() bool {
		ex, err = st.Core.Jobs().Execution("job-1", thing)
		return err == nil && ex.Status.Terminal()
	}, 60*time.Second, 20*time.Millisecond, "job did not finish: %+v", ex)
	assert.Equal(t, protocol.JobSucceeded, ex.Status)
	var joined strings.Builder
	for k, v := range ex.StatusDetails {
		joined.WriteString(k + "=" + v + " ")
	}
	assert.Contains(t, joined.String(), "hello-from-job", "stdout of the step is reported")
}
