package fleetctl

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// checkjobDoc is one of the agent's own check-job test documents.
func checkjobDoc(t *testing.T, name string) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	return filepath.Join(root, "device", "jobs", "testdata", "checkjob", name)
}

// agentConfig writes the agent's example configuration, edited.
func agentConfig(t *testing.T, dir, name string, edit func(map[string]any)) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(root, "device", "config", "example.json"))
	require.NoError(t, err)
	var c map[string]any
	require.NoError(t, json.Unmarshal(b, &c))
	edit(c)
	b, err = json.Marshal(c)
	require.NoError(t, err)
	return writeFile(t, dir, name, string(b))
}

func TestJobsCreateRefusesWhatTheAgentRefuses(t *testing.T) {
	outputs := unreachableOutputs(t)
	dir := t.TempDir()
	otaOff := agentConfig(t, dir, "ota-off.json", func(c map[string]any) { c["ota"].(map[string]any)["enabled"] = false })
	noCommands := agentConfig(t, dir, "no-commands.json", func(c map[string]any) {
		c["jobs"].(map[string]any)["runCommand"] = map[string]any{"enabled": false, "allowedExecutables": []string{}}
	})
	echo := writeFile(t, dir, "echo.json", `{"version":"1.0","steps":[{"action":{"name":"hi","type":"runCommand","input":{"command":"/bin/echo,hi"}}}]}`)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a handler outside the handler directory", []string{"--document", checkjobDoc(t, "bad-handler.json")}, "field steps[0].action.input.handler"},
		{"a truncated document", []string{"--document", checkjobDoc(t, "truncated.json")}, "job document refused by the agent's parser"},
		{"a step failure flag that is not a boolean", []string{"--document", checkjobDoc(t, "bad-ignore.json")}, "ignoreStepFailure"},
		{"an OTA document for an agent without OTA", []string{"--document", checkjobDoc(t, "ota.json"), "--agent-config", otaOff}, otaOff},
		{"a command for an agent that runs none", []string{"--document", echo, "--agent-config", noCommands}, "field steps[0].action"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := fleetctl(t, append([]string{"--outputs", outputs, "jobs", "create", "--job-id", "j1"}, tc.args...)...)
			assert.Equal(t, ExitInvalid, code, errOut)
			assert.Contains(t, errOut, tc.want)
			assert.Contains(t, errOut, "nothing was created")
			assert.NotContains(t, errOut, "127.0.0.1:1", "no AWS call was made")
		})
	}

	t.Run("a valid document goes on to AWS", func(t *testing.T) {
		code, _, errOut := fleetctl(t, "--outputs", outputs, "jobs", "create", "--job-id", "j1", "--document", checkjobDoc(t, "install-and-cleanup.json"))
		assert.Equal(t, ExitFailed, code)
		assert.Contains(t, errOut, "127.0.0.1:1", "it passed the check and called the endpoint")
	})

	t.Run("an unreadable agent configuration is not a verdict on the document", func(t *testing.T) {
		code, _, errOut := fleetctl(t, "--outputs", outputs, "jobs", "create", "--document", echo, "--agent-config", filepath.Join(dir, "missing.json"))
		assert.Equal(t, ExitFailed, code)
		assert.Contains(t, errOut, "agent configuration")
	})
}

func TestCheckDocument(t *testing.T) {
	good, err := os.ReadFile(checkjobDoc(t, "install-and-cleanup.json"))
	require.NoError(t, err)
	require.NoError(t, CheckDocument(good, ""))
	err = CheckDocument([]byte(`{"version":"1.0","steps":[]}`), "")
	require.Error(t, err)
	assert.Equal(t, ExitInvalid, ExitCode(err))
}
