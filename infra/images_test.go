package main

import (
	"os"
	"path/filepath"
	"regexp"
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

// The image build (.github/workflows/build-image.yml) reads stack outputs
// with jq: every output it reads exists, and it uploads to imagesBucket,
// never to the config or artifacts bucket.
func TestBuildImageWorkflowUploadsToTheImagesBucket(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), ".github", "workflows", "build-image.yml"))
	require.NoError(t, err)
	workflow := string(raw)
	reads := regexp.MustCompile(`jq -r '\.([A-Za-z]+) // empty'`).FindAllStringSubmatch(workflow, -1)
	require.NotEmpty(t, reads)
	var outputs []string
	for _, m := range reads {
		outputs = append(outputs, m[1])
		assert.Contains(t, r.outputs, m[1], "the workflow reads stack output %s", m[1])
	}
	assert.Contains(t, outputs, "imagesBucket")
	for _, other := range []string{"configBucket", "artifactsBucket"} {
		assert.NotContains(t, workflow, other, "images never go to the %s", other)
	}
	assert.Contains(t, workflow, `key="images/$IMAGE_ENV/`, "the key the image-build role may write")
}
