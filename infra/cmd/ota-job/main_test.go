package main

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"-job-id", "rpi-1", "-bucket", "iot-fleet-dev-artifacts-x1", "-key", "rpi.mender",
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
	assert.Equal(t, "arn:aws:iam::123456789012:role/iot-fleet-dev-presign", in.PresignedURLConfig.RoleArn)

	out.Reset()
	code = run([]string{"-document", "-bucket", "iot-fleet-dev-artifacts-x1", "-key", "rpi.mender"}, &out, &errb)
	require.Equal(t, 0, code, errb.String())
	assert.JSONEq(t, `{"operation":"mender_install","url":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/iot-fleet-dev-artifacts-x1/rpi.mender}"}`, out.String())

	errb.Reset()
	code = run([]string{"-job-id", "rpi-1", "-bucket", "iot-fleet-dev-artifacts-x1", "-key", "rpi.mender", "-role-arn", "nope",
		"-target", "arn:aws:iot:eu-west-1:123456789012:thinggroup/iot-fleet-dev"}, &out, &errb)
	assert.Equal(t, 1, code)
	assert.Contains(t, errb.String(), "presignRoleArn")
	assert.Equal(t, 2, run([]string{"-max-per-minute", "0"}, &out, &errb))
	assert.Equal(t, 2, run([]string{"extra"}, &out, &errb))
}
