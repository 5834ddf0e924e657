package controlplane_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAWSCLI drives the control plane with the AWS CLI, where it is
// installed: --endpoint-url and AWS_ENDPOINT_URL_IOT both reach it.
func TestAWSCLI(t *testing.T) {
	cli, err := exec.LookPath("aws")
	if err != nil {
		t.Skip("the AWS CLI is not installed")
	}
	c, _, url, things := setup(t, 1)
	home := t.TempDir() // no operator config or credentials leak in
	env := []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "AWS_ACCESS_KEY_ID=AKIDLOCAL", "AWS_SECRET_ACCESS_KEY=secret",
		"AWS_DEFAULT_REGION=local-1", "AWS_CONFIG_FILE=" + home + "/config", "AWS_SHARED_CREDENTIALS_FILE=" + home + "/credentials",
		"AWS_EC2_METADATA_DISABLED=true"}
	run := func(extraEnv []string, args ...string) (string, string, error) {
		cmd := exec.Command(cli, args...)
		cmd.Env = append(append([]string(nil), env...), extraEnv...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	out, stderr, err := run(nil, "--endpoint-url", url, "iot", "list-things")
	require.NoError(t, err, stderr)
	var listed struct {
		Things []struct{ ThingName string }
	}
	require.NoError(t, json.Unmarshal([]byte(out), &listed), out)
	require.Len(t, listed.Things, 1)
	assert.Equal(t, things[0], listed.Things[0].ThingName)

	out, stderr, err = run([]string{"AWS_ENDPOINT_URL_IOT=" + url}, "iot", "list-jobs")
	require.NoError(t, err, stderr)
	assert.JSONEq(t, `{"jobs":[]}`, out)

	_, stderr, err = run(nil, "--endpoint-url", url, "iot", "describe-thing", "--thing-name", "no-such-thing")
	require.Error(t, err)
	assert.Contains(t, stderr, "ResourceNotFoundException")
	_, stderr, err = run(nil, "--endpoint-url", url, "iot", "create-thing-type", "--thing-type-name", "pi")
	require.Error(t, err)
	assert.Contains(t, stderr, "UnknownOperationException")

	id := c.Registry().Certificates()[0].ID
	_, stderr, err = run(nil, "--endpoint-url", url, "iot", "update-certificate", "--certificate-id", id, "--new-status", "REVOKED")
	require.NoError(t, err, stderr)
	cert, err := c.Registry().Certificate(id)
	require.NoError(t, err)
	assert.EqualValues(t, "REVOKED", cert.Status)
}
