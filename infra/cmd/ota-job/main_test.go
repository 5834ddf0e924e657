package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	artifact := filepath.Join(t.TempDir(), "rpi.mender")
	require.NoError(t, os.WriteFile(artifact, []byte("signed artifact bytes"), 0o600))
	sum := sha256.Sum256([]byte("signed artifact bytes"))
	hexSum := hex.EncodeToString(sum[:])
	var out, errb bytes.Buffer
	code := run([]string{"-job-id", "rpi-1", "-bucket", "iot-fleet-dev-artifacts-x1", "-key", "rpi.mender", "-artifact", artifact,
		"-role-arn", "arn:aws:iam::123456789012:role/iot-fleet-dev-presign",
		"-target", "arn:aws:iot:eu-west-1:123456789012:thinggroup/iot-fleet-dev",
		"-target", "arn:aws:iot:eu-west-1:123456789012:thing/dev-10000000feed0001"}, &out, &errb)
	require.Equal(t, 0, code, errb.String())
	var in struct {
		JobID              string   `json:"jobId"`
		Targets            []string `json:"targets"`
		Document           string   `json:"document"`
		PresignedURLConfig struct {
			RoleArn string `json:"roleArn"`
		} `json:"presignedUrlConfig"`
	}
	require.NoError(t, json.Unmarshal(out.Bytes(), &in))
	assert.Equal(t, "rpi-1", in.JobID)
	assert.Len(t, in.Targets, 2)
	assert.Contains(t, in.Document, "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/iot-fleet-dev-artifacts-x1/rpi.mender}")
	assert.Contains(t, in.Document, `"sha256":"`+hexSum+`"`)
	assert.Equal(t, "arn:aws:iam::123456789012:role/iot-fleet-dev-presign", in.PresignedURLConfig.RoleArn)

	out.Reset()
	code = run([]string{"-document", "-bucket", "iot-fleet-dev-artifacts-x1", "-key", "rpi.mender", "-sha256", hexSum}, &out, &errb)
	require.Equal(t, 0, code, errb.String())
	assert.JSONEq(t, `{"operation":"mender_install","url":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/iot-fleet-dev-artifacts-x1/rpi.mender}","sha256":"`+hexSum+`"}`, out.String())

	// No checksum, or one that is not the artifact's: no document.
	errb.Reset()
	assert.Equal(t, 1, run([]string{"-document", "-bucket", "iot-fleet-dev-artifacts-x1", "-key", "rpi.mender"}, &out, &errb))
	assert.Contains(t, errb.String(), "sha256")
	errb.Reset()
	assert.Equal(t, 1, run([]string{"-document", "-bucket", "b-1", "-key", "rpi.mender", "-artifact", artifact, "-sha256", strings.Repeat("0", 64)}, &out, &errb))
	assert.Contains(t, errb.String(), "is not the SHA-256 of -artifact")

	errb.Reset()
	code = run([]string{"-job-id", "rpi-1", "-bucket", "iot-fleet-dev-artifacts-x1", "-key", "rpi.mender", "-sha256", hexSum, "-role-arn", "nope",
		"-target", "arn:aws:iot:eu-west-1:123456789012:thinggroup/iot-fleet-dev"}, &out, &errb)
	assert.Equal(t, 1, code)
	assert.Contains(t, errb.String(), "presignRoleArn")
	assert.Equal(t, 2, run([]string{"-max-per-minute", "0"}, &out, &errb))
	assert.Equal(t, 2, run([]string{"extra"}, &out, &errb))
}
