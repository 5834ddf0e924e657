package otajob

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/jobs"
	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/device/ota"
	"github.com/iot-fleet/iot-fleet/device/ota/jobsop"
)

const (
	bucket  = "iot-fleet-dev-artifacts-20240601abcdef"
	role    = "arn:aws:iam::123456789012:role/iot-fleet-dev-presign"
	group   = "arn:aws:iot:eu-west-1:123456789012:thinggroup/iot-fleet-dev"
	thing   = "arn:aws:iot:eu-west-1:123456789012:thing/dev-10000000feed0001"
	artifct = "releases/rpi-2024.06.mender"
	sum     = "9f2c1e0b7a6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b"
)

// allowedHosts is what the image's configuration template allows for the
// stack's artifacts bucket (device/image/config.template.json).
var allowedHosts = []string{bucket + ".s3.eu-west-1.amazonaws.com", bucket + ".s3.amazonaws.com",
	"s3.eu-west-1.amazonaws.com/" + bucket, "s3.amazonaws.com/" + bucket}

// deviceOps is the agent's operation registry: on a device (template
// false) or as `fleet-agent check-job` builds it (template true).
func deviceOps(t *testing.T, template bool) *jobs.Registry {
	reg := jobs.NewRegistry()
	require.NoError(t, reg.Register(ota.Operation, jobsop.New(nil, ota.Policy{AllowedHosts: allowedHosts, Template: template})))
	return reg
}

func TestDocumentIsWhatTheAgentRunsOnceSubstituted(t *testing.T) {
	doc, err := Document(bucket, artifct, strings.ToUpper(sum))
	require.NoError(t, err)
	assert.JSONEq(t, `{"operation":"mender_install","url":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/`+bucket+`/`+artifct+`}","sha256":"`+sum+`"}`, string(doc))
	assert.Equal(t, ota.Operation, Operation)

	// check-job accepts the template: the URL inside the placeholder is
	// on the device's allowed bucket.
	_, err = jobdoc.Parse(doc, jobdoc.Options{Operations: deviceOps(t, true)})
	require.NoError(t, err)

	// As uploaded, the agent refuses it: the placeholder must be replaced
	// by AWS IoT Jobs (create-job --presigned-url-config).
	_, err = jobdoc.Parse(doc, jobdoc.Options{Operations: deviceOps(t, false)})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "presigned")

	// What the device receives after the substitution is valid.
	signed := "https://" + bucket + ".s3.amazonaws.com/" + artifct + "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=abc123"
	ph, err := Placeholder(bucket, artifct)
	require.NoError(t, err)
	substituted := strings.Replace(string(doc), ph, signed, 1)
	require.NotEqual(t, string(doc), substituted)
	_, err = jobdoc.Parse([]byte(substituted), jobdoc.Options{Operations: deviceOps(t, false)})
	require.NoError(t, err)
	// So is a path-style presigned URL on the same bucket; another
	// bucket is not.
	pathStyle := "https://s3.amazonaws.com/" + bucket + "/" + artifct + "?X-Amz-Signature=abc123"
	_, err = jobdoc.Parse([]byte(strings.Replace(string(doc), ph, pathStyle, 1)), jobdoc.Options{Operations: deviceOps(t, false)})
	require.NoError(t, err)
	_, err = jobdoc.Parse([]byte(strings.Replace(string(doc), ph, "https://s3.amazonaws.com/other-bucket/a.mender", 1)), jobdoc.Options{Operations: deviceOps(t, false)})
	require.ErrorContains(t, err, "not in the allowed bucket")

	_, err = Document(bucket, artifct, "")
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "sha256", e.Param)
}

func TestCreateJobInputMatchesTheCreateJobAPI(t *testing.T) {
	out, err := CreateJobInput(Params{
		JobID: "rpi-2024-06-dev-1", Targets: []string{group, thing}, Bucket: bucket, Key: artifct, SHA256: sum,
		PresignRoleArn: role, Description: "rootfs 2024.06",
	})
	require.NoError(t, err)
	// The CLI's --cli-input-json uses the API member names; decoding into
	// the SDK's input with unknown fields disallowed checks every name.
	dec := json.NewDecoder(strings.NewReader(string(out)))
	dec.DisallowUnknownFields()
	var in iot.CreateJobInput
	require.NoError(t, dec.Decode(&in), "%s", out)
	assert.Equal(t, "rpi-2024-06-dev-1", *in.JobId)
	assert.Equal(t, []string{group, thing}, in.Targets)
	assert.Equal(t, "SNAPSHOT", string(in.TargetSelection))
	assert.Equal(t, "rootfs 2024.06", *in.Description)
	require.NotNil(t, in.PresignedUrlConfig)
	assert.Equal(t, role, *in.PresignedUrlConfig.RoleArn)
	assert.Equal(t, int64(3600), *in.PresignedUrlConfig.ExpiresInSec)
	assert.Equal(t, int64(120), *in.TimeoutConfig.InProgressTimeoutInMinutes)
	assert.Equal(t, int32(10), *in.JobExecutionsRolloutConfig.MaximumPerMinute)
	require.Len(t, in.AbortConfig.CriteriaList, 1)
	assert.Equal(t, "FAILED", string(in.AbortConfig.CriteriaList[0].FailureType))
	assert.Equal(t, "CANCEL", string(in.AbortConfig.CriteriaList[0].Action))
	doc, err := Document(bucket, artifct, sum)
	require.NoError(t, err)
	assert.JSONEq(t, string(doc), *in.Document)

	out, err = CreateJobInput(Params{JobID: "j", Targets: []string{group}, Bucket: bucket, Key: "a.mender", SHA256: sum, PresignRoleArn: role, Continuous: true, ExpiresInSec: 900})
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(out, &in))
	assert.Equal(t, "CONTINUOUS", string(in.TargetSelection))
	assert.Equal(t, int64(900), *in.PresignedUrlConfig.ExpiresInSec)
}

func TestBadParamsNameTheParam(t *testing.T) {
	ok := Params{JobID: "j-1", Targets: []string{group}, Bucket: bucket, Key: "a.mender", SHA256: sum, PresignRoleArn: role}
	cases := []struct {
		param string
		edit  func(p *Params)
	}{
		{"jobId", func(p *Params) { p.JobID = "" }},
		{"jobId", func(p *Params) { p.JobID = "has space" }},
		{"targets", func(p *Params) { p.Targets = nil }},
		{"targets[1]", func(p *Params) { p.Targets = []string{group, "iot-fleet-dev"} }},
		{"presignRoleArn", func(p *Params) { p.PresignRoleArn = "iot-fleet-dev-presign" }},
		{"bucket", func(p *Params) { p.Bucket = "Bad_Bucket" }},
		{"key", func(p *Params) { p.Key = "" }},
		{"key", func(p *Params) { p.Key = "/abs.mender" }},
		{"key", func(p *Params) { p.Key = "a}.mender" }},
		{"key", func(p *Params) { p.Key = "my artifact.mender" }},
		{"expiresInSec", func(p *Params) { p.ExpiresInSec = 7200 }},
		{"expiresInSec", func(p *Params) { p.ExpiresInSec = 30 }},
		{"inProgressMinutes", func(p *Params) { p.InProgressMinutes = -1 }},
		{"maxPerMinute", func(p *Params) { p.MaxPerMinute = 5000 }},
		{"sha256", func(p *Params) { p.SHA256 = "" }},
		{"sha256", func(p *Params) { p.SHA256 = sum[:63] }},
		{"sha256", func(p *Params) { p.SHA256 = strings.Repeat("g", 64) }},
	}
	for _, c := range cases {
		p := ok
		c.edit(&p)
		_, err := CreateJobInput(p)
		var e *Error
		require.ErrorAs(t, err, &e, "%s: %v", c.param, err)
		assert.Equal(t, c.param, e.Param, "%v", err)
	}
	_, err := CreateJobInput(ok)
	require.NoError(t, err)
}

func TestFileSHA256(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rpi.mender")
	require.NoError(t, os.WriteFile(path, []byte("signed artifact bytes"), 0o600))
	sum, size, err := FileSHA256(path)
	require.NoError(t, err)
	want := sha256.Sum256([]byte("signed artifact bytes"))
	assert.Equal(t, hex.EncodeToString(want[:]), sum)
	assert.Equal(t, int64(len("signed artifact bytes")), size)
	_, _, err = FileSHA256(path + ".missing")
	require.ErrorIs(t, err, os.ErrNotExist)
}
