package fleetctl

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func artifact(t *testing.T, content string) (path, sum string) {
	t.Helper()
	h := sha256.Sum256([]byte(content))
	return writeFile(t, t.TempDir(), "rpi-os-2026.12.mender", content), hex.EncodeToString(h[:])
}

func TestOTACreateDryRunRendersTheJob(t *testing.T) {
	outputs := unreachableOutputs(t)
	path, sum := artifact(t, "not really a mender artifact")
	code, out, errOut := fleetctl(t, "--outputs", outputs, "-o", "json", "ota", "create", "--artifact", path, "--job-id", "ota-1",
		"--dry-run", "--abort-threshold", "10", "--abort-min-executed", "3", "--max-per-minute", "2", "--url-expires", "600")
	require.Equal(t, ExitOK, code, errOut)
	var plan struct {
		OTAPlan
		CreateJob struct {
			JobID              string   `json:"jobId"`
			Targets            []string `json:"targets"`
			Document           string   `json:"document"`
			PresignedURLConfig struct {
				RoleArn      string `json:"roleArn"`
				ExpiresInSec int64  `json:"expiresInSec"`
			} `json:"presignedUrlConfig"`
			Rollout struct {
				MaximumPerMinute int32 `json:"maximumPerMinute"`
			} `json:"jobExecutionsRolloutConfig"`
			Abort struct {
				CriteriaList []struct {
					ThresholdPercentage       float64 `json:"thresholdPercentage"`
					MinNumberOfExecutedThings int32   `json:"minNumberOfExecutedThings"`
				} `json:"criteriaList"`
			} `json:"abortConfig"`
		} `json:"createJob"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &plan), out)
	assert.Equal(t, sum, plan.SHA256, "hashed the file")
	assert.False(t, plan.Uploaded)
	assert.Equal(t, "rpi-os-2026.12.mender", plan.Key, "the key defaults to the file name")
	cj := plan.CreateJob
	assert.Equal(t, "ota-1", cj.JobID)
	assert.Equal(t, []string{"arn:aws:iot:local-1:000000000000:thinggroup/iot-fleet-local"}, cj.Targets, "the stack's thing group by default")
	assert.Equal(t, "arn:aws:iam::000000000000:role/iot-fleet-local-ota-presign", cj.PresignedURLConfig.RoleArn)
	assert.EqualValues(t, 600, cj.PresignedURLConfig.ExpiresInSec)
	assert.EqualValues(t, 2, cj.Rollout.MaximumPerMinute)
	require.Len(t, cj.Abort.CriteriaList, 1)
	assert.EqualValues(t, 10, cj.Abort.CriteriaList[0].ThresholdPercentage)
	assert.EqualValues(t, 3, cj.Abort.CriteriaList[0].MinNumberOfExecutedThings)
	var doc map[string]string
	require.NoError(t, json.Unmarshal([]byte(cj.Document), &doc))
	assert.Equal(t, map[string]string{
		"operation": "mender_install",
		"url":       "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/iot-fleet-local-artifacts/rpi-os-2026.12.mender}",
		"sha256":    sum,
	}, doc)
	assert.NotContains(t, errOut, "127.0.0.1:1", "a dry run sends nothing")

	// Table output prints the request for aws iot create-job.
	code, out, _ = fleetctl(t, "--outputs", outputs, "ota", "create", "--key", "releases/a.mender", "--sha256", strings.ToUpper(sum), "--dry-run", "--abort-threshold", "0")
	require.Equal(t, ExitOK, code)
	assert.Contains(t, out, "aws iot create-job --cli-input-json")
	assert.Contains(t, out, "releases/a.mender")
	assert.Contains(t, out, sum, "the SHA-256 is written in lower case")
	assert.NotContains(t, out, "abortConfig", "--abort-threshold 0: no abort rule")
}

func TestOTACreateRefusesBadInputBeforeUploading(t *testing.T) {
	outputs := unreachableOutputs(t)
	path, sum := artifact(t, "release 2026.12")
	other := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"a file that is not the release named", []string{"--artifact", path, "--sha256", other}, ExitInvalid, "not the --sha256 " + other + " given"},
		{"a SHA-256 that is not one", []string{"--key", "a.mender", "--sha256", "abc"}, ExitInvalid, "64 hex digits"},
		{"not a mender artifact", []string{"--key", "a.tar.gz", "--sha256", sum}, ExitInvalid, "ends in .mender"},
		{"a key S3 would mangle", []string{"--key", "../a b.mender", "--sha256", sum}, ExitInvalid, "object key"},
		{"a presigned URL living too long", []string{"--artifact", path, "--url-expires", "7200"}, ExitInvalid, "60-3600"},
		{"a rollout rate AWS refuses", []string{"--artifact", path, "--max-per-minute", "5000"}, ExitInvalid, "1-1000"},
		{"a missing file", []string{"--artifact", path + ".nope"}, ExitFailed, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := fleetctl(t, append([]string{"--outputs", outputs, "ota", "create", "--job-id", "j1"}, tc.args...)...)
			assert.Equal(t, tc.code, code, errOut)
			assert.Contains(t, errOut, tc.want)
			assert.NotContains(t, errOut, "127.0.0.1:1", "nothing was uploaded or created")
		})
	}
}
