package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The images bucket holds the OS images, which contain the claim private
// key: private like the other buckets (TestBucketsArePrivate), exported
// as imagesBucket, and readable by no role of the stack.
func TestImagesBucketIsReadableByNoStackRole(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	images := r.bucket(t, "images")
	name, arn := propString(images.Outputs, "bucket"), propString(images.Outputs, "arn")
	assert.True(t, strings.HasPrefix(name, "iot-fleet-dev-images-"), name)
	assert.Equal(t, name, r.outputs["imagesBucket"])
	assert.False(t, r.secret["imagesBucket"])

	require.NotEmpty(t, arn)
	for _, p := range r.aws.resources(tRolePolicy) {
		for _, st := range policyJSON(t, propString(p.Inputs, "policy")).Statement {
			for _, res := range st.Resource.list() {
				assert.False(t, strings.HasPrefix(res, arn), "role policy %s grants %v on the images bucket (%s)", p.Name, st.Action, res)
			}
		}
	}
	// Nothing else of the stack touches it: no notification, no object.
	for _, typ := range []string{tNotification, tObject} {
		for _, x := range r.aws.resources(typ) {
			assert.NotEqual(t, name, propString(x.Inputs, "bucket"), "%s %s", typ, x.Name)
		}
	}
}

// The image-build role (deploy/aws, outside the stack) may write only
// images/ keys of the bucket this stack names, and may list only that
// bucket: its name patterns must follow the stack's bucket naming.
func TestImageBuildPolicyMatchesTheImagesBucket(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	pol := loadDeployPolicy(t, "image-build-role-policy.json")
	allowed := func(action, resource string) bool {
		return pol.allows(t, action, resource, map[string]string{"s3:prefix": "images/dev/"})
	}
	images := propString(r.bucket(t, "images").Outputs, "arn")
	key := "/images/dev/iot-fleet-dev-2024.06.1.img.xz"
	assert.True(t, allowed("s3:PutObject", images+key), "the build uploads to the images bucket")
	assert.True(t, allowed("s3:PutObject", images+key+".sha256"))
	assert.True(t, allowed("s3:ListBucket", images))
	assert.False(t, allowed("s3:PutObject", images+"/other/x.img.xz"), "only under images/")
	for _, kind := range []string{"artifacts", "config"} {
		other := propString(r.bucket(t, kind).Outputs, "arn")
		assert.False(t, allowed("s3:PutObject", other+key), "never the %s bucket", kind)
		assert.False(t, allowed("s3:ListBucket", other), "never the %s bucket", kind)
	}
}
