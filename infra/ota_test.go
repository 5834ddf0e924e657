package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The presign role AWS IoT Jobs assumes to sign OTA artifact URLs: only
// IoT (of this account) may assume it, and it can only read artifact
// objects.
func TestOTAPresignRoleReadsOnlyArtifacts(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	role := r.one(t, tRole, "ota-presign")
	assert.Equal(t, "iot-fleet-dev-presign", propString(role.Inputs, "name"))
	trust := policyJSON(t, propString(role.Inputs, "assumeRolePolicy"))
	require.Len(t, trust.Statement, 1)
	assert.Equal(t, "Allow", trust.Statement[0].Effect)
	assert.Equal(t, map[string]any{"Service": "iot.amazonaws.com"}, trust.Statement[0].Principal)
	assert.Equal(t, []string{"sts:AssumeRole"}, trust.Statement[0].Action.list())
	assert.Equal(t, map[string]any{
		"StringEquals": map[string]any{"aws:SourceAccount": mockAccount},
		"ArnLike":      map[string]any{"aws:SourceArn": "arn:aws:iot:eu-west-1:" + mockAccount + ":*"},
	}, trust.Statement[0].Condition, "confused-deputy guard: only jobs of this account and region")

	artifactsARN := propString(r.bucket(t, "artifacts").Outputs, "arn")
	require.NotEmpty(t, artifactsARN)
	pol := r.one(t, tRolePolicy, "ota-presign")
	assert.Equal(t, propString(role.Inputs, "name"), propString(pol.Inputs, "role"))
	doc := policyJSON(t, propString(pol.Inputs, "policy"))
	require.Len(t, doc.Statement, 1)
	st := doc.Statement[0]
	assert.Equal(t, "Allow", st.Effect)
	assert.Equal(t, []string{"s3:GetObject"}, st.Action.list())
	assert.Equal(t, []string{artifactsARN + "/*"}, st.Resource.list(), "objects of the artifacts bucket only")
	for _, res := range st.Resource.list() {
		assert.NotEqual(t, "*", res)
		assert.NotContains(t, res, "config", "never the config bucket")
		assert.NotContains(t, res, "-images-", "never the images bucket (images hold the claim key)")
	}
	assert.Empty(t, st.Condition)

	assert.Equal(t, propString(role.Outputs, "arn"), r.outputs["otaPresignRoleArn"])
	assert.False(t, r.secret["otaPresignRoleArn"])
}
