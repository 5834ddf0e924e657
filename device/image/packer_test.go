package image_test

import (
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The Packer recipe is valid HCL with the expected blocks, and it applies
// the iot-fleet layer through image-inject (the same step as make image),
// not with a second list of files that could drift from manifest.txt.
func TestPackerRecipe(t *testing.T) {
	const path = "packer/iot-fleet.pkr.hcl"
	f, diags := hclparse.NewParser().ParseHCLFile(path)
	require.False(t, diags.HasErrors(), diags.Error())

	content, diags := f.Body.Content(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
		{Type: "variable", LabelNames: []string{"name"}},
		{Type: "source", LabelNames: []string{"type", "name"}},
		{Type: "build"},
	}})
	require.False(t, diags.HasErrors(), diags.Error())
	vars := map[string]bool{}
	var sources []string
	builds := 0
	for _, b := range content.Blocks {
		switch b.Type {
		case "variable":
			vars[b.Labels[0]] = true
		case "source":
			sources = append(sources, b.Labels[0]+"."+b.Labels[1])
		case "build":
			builds++
		}
	}
	for _, v := range []string{"raspios_url", "raspios_sha256", "image_env", "stack_outputs", "claim_secret", "artifact_verify_key", "agent_bin", "image_inject"} {
		assert.True(t, vars[v], "variable %s", v)
	}
	assert.Equal(t, []string{"arm.raspios"}, sources)
	assert.Equal(t, 1, builds)

	src := string(f.Bytes)
	assert.Contains(t, src, "mkaczanowski/packer-builder-arm")
	assert.Contains(t, src, `file_checksum_type    = "sha256"`)
	assert.Contains(t, src, `post-processor "shell-local"`)
	assert.Regexp(t, `\$\{var\.image_inject\} -image \$\{var\.output_image\}`, src)
	assert.False(t, strings.Contains(src, "claim.key"), "the recipe never names key files itself")
}
