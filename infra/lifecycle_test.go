package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/infra/components"
	"github.com/iot-fleet/iot-fleet/infra/stackconfig"
)

// The template-versions Lambda runs before every template-body update:
// the invocation's trigger is the body's hash (a new body replaces the
// invocation, which invokes the Lambda again), and the template depends on
// it. The template's name, baked into flashed images, never changes.
func TestTemplateUpdatePrunesVersionsFirst(t *testing.T) {
	t.Parallel()
	run := func(cfg map[string]string) (template, invocation registration) {
		t.Helper()
		r := runProgram(t, "dev", cfg, programOptions{})
		require.NoError(t, r.err)
		template = r.one(t, tTemplate, "template")
		invocation = r.one(t, tInvocation, "prune-versions")
		fn := r.one(t, tFunction, components.LambdaTemplateVersions)
		assert.Equal(t, propString(fn.Outputs, "name"), propString(invocation.Inputs, "functionName"))
		assert.Contains(t, template.DependsOn, tInvocation+"::"+invocation.Name, "versions are pruned before the template is updated")
		sum := sha256.Sum256([]byte(propString(template.Inputs, "templateBody")))
		assert.Equal(t, hex.EncodeToString(sum[:]), propString(invocation.Inputs, "triggers", "templateBodySha256"))
		var in components.TemplateVersionsInput
		require.NoError(t, json.Unmarshal([]byte(propString(invocation.Inputs, "input")), &in))
		assert.Equal(t, hex.EncodeToString(sum[:]), in.TemplateBodySHA256)
		assert.Empty(t, propString(invocation.Inputs, "lifecycleScope"), "CREATE_ONLY: a destroy invokes nothing")
		return template, invocation
	}
	tpl1, inv1 := run(devConfig(t))
	_, inv1again := run(devConfig(t))
	assert.Equal(t, propString(inv1.Inputs, "triggers", "templateBodySha256"), propString(inv1again.Inputs, "triggers", "templateBodySha256"),
		"an unchanged body does not invoke the Lambda again")

	changed := devConfig(t)
	changed[stackconfig.KeyThingGroup] = "iot-fleet-dev-renamed" // the body names the group
	tpl2, inv2 := run(changed)
	assert.NotEqual(t, propString(tpl1.Inputs, "templateBody"), propString(tpl2.Inputs, "templateBody"))
	assert.NotEqual(t, propString(inv1.Inputs, "triggers", "templateBodySha256"), propString(inv2.Inputs, "triggers", "templateBodySha256"),
		"a new body re-runs the pruning")
	assert.Equal(t, "iot-fleet-dev", propString(tpl2.Inputs, "name"), "the template name devices know stays")
	assert.Equal(t, propString(tpl1.Inputs, "name"), propString(tpl2.Inputs, "name"))
}

// The role alias's credential duration fits the token-exchange role's
// MaxSessionDuration, which the program sets explicitly; a longer one
// fails before anything is declared, naming the key.
func TestCredentialDurationFitsTheRole(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	role := r.one(t, tRole, "token-exchange")
	maxSession, ok := prop(role.Inputs, "maxSessionDuration")
	require.True(t, ok, "MaxSessionDuration is set explicitly")
	assert.Equal(t, float64(stackconfig.TokenExchangeMaxSessionSeconds), maxSession.NumberValue())
	duration, _ := prop(r.one(t, tRoleAlias, "role-alias").Inputs, "credentialDuration")
	assert.Equal(t, float64(3600), duration.NumberValue())

	cfg := devConfig(t)
	cfg[stackconfig.KeyCredentialDurationSeconds] = "900"
	r = runProgram(t, "dev", cfg, programOptions{})
	require.NoError(t, r.err)
	duration, _ = prop(r.one(t, tRoleAlias, "role-alias").Inputs, "credentialDuration")
	assert.Equal(t, float64(900), duration.NumberValue())

	cfg[stackconfig.KeyCredentialDurationSeconds] = "7200"
	r = runProgram(t, "dev", cfg, programOptions{})
	require.Error(t, r.err)
	assert.Contains(t, r.err.Error(), stackconfig.KeyCredentialDurationSeconds+": 7200 exceeds the token-exchange role's MaxSessionDuration")
	assert.Empty(t, r.aws.resources(""))
}

// allowlistConfirmRevocations (one deploy's input) and the deploying actor
// travel as the allowlist object's metadata; a bad actor name fails before
// anything is declared.
func TestAllowlistObjectMetadata(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	_, has := prop(r.one(t, tObject, "allowlist").Inputs, "metadata")
	assert.False(t, has, "no confirmation, no actor: no metadata")

	cfg := devConfig(t)
	cfg[stackconfig.KeyAllowlistConfirmRevocations] = "3"
	r = runProgram(t, "dev", cfg, programOptions{DeployedBy: "dependabot[bot]"})
	require.NoError(t, r.err)
	obj := r.one(t, tObject, "allowlist")
	assert.Equal(t, "3", propString(obj.Inputs, "metadata", components.MetaConfirmRevocations))
	assert.Equal(t, "dependabot[bot]", propString(obj.Inputs, "metadata", components.MetaDeployedBy))

	cfg[stackconfig.KeyAllowlistConfirmRevocations] = "0"
	r = runProgram(t, "dev", cfg, programOptions{})
	require.NoError(t, r.err)
	_, has = prop(r.one(t, tObject, "allowlist").Inputs, "metadata")
	assert.False(t, has, "0 confirms nothing")

	cfg[stackconfig.KeyAllowlistConfirmRevocations] = "-2"
	r = runProgram(t, "dev", cfg, programOptions{})
	require.Error(t, r.err)
	assert.Contains(t, r.err.Error(), stackconfig.KeyAllowlistConfirmRevocations)
	assert.Empty(t, r.aws.resources(""))

	for _, bad := range []string{"evil\nx-amz-meta-confirm-revocations: 99", "a b", "-leading", string(make([]byte, 65))} {
		r = runProgram(t, "dev", devConfig(t), programOptions{DeployedBy: bad})
		require.Error(t, r.err, "%q", bad)
		assert.Contains(t, r.err.Error(), EnvDeployedBy)
		assert.Empty(t, r.aws.resources(""))
	}
}

func TestMaxRevocationsPerSync(t *testing.T) {
	t.Parallel()
	cfg := devConfig(t)
	cfg[stackconfig.KeyMaxRevocationsPerSync] = "7"
	r := runProgram(t, "dev", cfg, programOptions{})
	require.NoError(t, r.err)
	assert.Equal(t, "7", propString(r.one(t, tFunction, components.LambdaAllowlistSync).Inputs, "environment", "variables", components.EnvMaxRevocationsPerSync))

	cfg[stackconfig.KeyMaxRevocationsPerSync] = "0"
	r = runProgram(t, "dev", cfg, programOptions{})
	require.Error(t, r.err)
	assert.Contains(t, r.err.Error(), stackconfig.KeyMaxRevocationsPerSync)
	assert.Empty(t, r.aws.resources(""))
}

// A destroy on a live fleet must not fail half-way: what devices hold (the
// device policy attached to every device certificate, the thing group with
// its things) and what holds data (the versioned buckets, a
// deletion-protected registry) is retained; docs/delivery.md lists it.
func TestDestroyKeepsWhatALiveFleetHolds(t *testing.T) {
	t.Parallel()
	for _, stack := range []string{"dev", "prod"} {
		r := runProgram(t, stack, stackConfig(t, stack), programOptions{})
		require.NoError(t, r.err)
		assert.True(t, r.one(t, tIoTPolicy, "-device").RetainOnDelete, "%s: device policy", stack)
		assert.True(t, r.one(t, tThingGroup, "group").RetainOnDelete, "%s: thing group", stack)
		assert.False(t, r.one(t, tIoTPolicy, "-claim").RetainOnDelete, "%s: the claim policy is detached by the stack first", stack)
		assert.False(t, r.one(t, tRoleAlias, "role-alias").RetainOnDelete, "%s: the role alias can go", stack)
		assert.Equal(t, stack == "prod", r.one(t, tTable, "registry").RetainOnDelete, "%s: a deletion-protected table is kept", stack)
		for _, typ := range []string{tBucket, tPAB, tOwnership, tVersioning, tSSE, tBucketPolicy} {
			for _, x := range r.aws.resources(typ) {
				assert.True(t, x.RetainOnDelete, "%s: %s %s is kept with its bucket", stack, typ, x.Name)
			}
		}
		for _, typ := range []string{tFunction, tRole, tTopicRule, tTemplate} {
			for _, x := range r.aws.resources(typ) {
				assert.False(t, x.RetainOnDelete, "%s: %s %s is destroyed", stack, typ, x.Name)
			}
		}
	}
}

// After a destroy, the redeploy with adoptRetained imports what the
// destroy kept under fixed names instead of failing to create it; without
// the key nothing is imported.
func TestRedeployAdoptsWhatTheDestroyRetained(t *testing.T) {
	t.Parallel()
	for _, stack := range []string{"dev", "prod"} {
		r := runProgram(t, stack, stackConfig(t, stack), programOptions{})
		require.NoError(t, r.err)
		for _, x := range r.aws.resources("") {
			assert.Empty(t, x.ImportID, "%s: %s %s is created, not imported", stack, x.Type, x.Name)
		}

		cfg := stackConfig(t, stack)
		cfg[stackconfig.KeyAdoptRetained] = "true"
		r = runProgram(t, stack, cfg, programOptions{})
		require.NoError(t, r.err)
		assert.Equal(t, "iot-fleet-"+stack+"-device", r.one(t, tIoTPolicy, "-device").ImportID)
		assert.Equal(t, "iot-fleet-"+stack, r.one(t, tThingGroup, "group").ImportID)
		wantTable := ""
		if stack == "prod" { // only a deletion-protected table was retained
			wantTable = "iot-fleet-prod-registry"
		}
		assert.Equal(t, wantTable, r.one(t, tTable, "registry").ImportID)
		imported := 0
		for _, x := range r.aws.resources("") {
			if x.ImportID != "" {
				imported++
				assert.True(t, x.RetainOnDelete, "%s: only retained resources are adopted (%s)", stack, x.Name)
			}
		}
		assert.Equal(t, map[string]int{"dev": 2, "prod": 3}[stack], imported, stack)
	}
}

// Every role's trust carries the confused-deputy guard: aws:SourceAccount
// for all but the credentials provider's token-exchange role (the
// provider documents no source keys), and aws:SourceArn of this account
// and region for the roles AWS IoT and Systems Manager assume.
func TestEveryRoleTrustIsGuarded(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	roles := r.aws.resources(tRole)
	require.GreaterOrEqual(t, len(roles), 15)
	for _, role := range roles {
		name := propString(role.Inputs, "name")
		trust := policyJSON(t, propString(role.Inputs, "assumeRolePolicy"))
		require.Len(t, trust.Statement, 1, name)
		st := trust.Statement[0]
		service, _ := st.Principal.(map[string]any)["Service"].(string)
		if service == "credentials.iot.amazonaws.com" {
			assert.Equal(t, "iot-fleet-dev-token-exchange", name)
			continue
		}
		assert.Equal(t, map[string]any{"aws:SourceAccount": mockAccount}, st.Condition["StringEquals"], "%s (%s)", name, service)
		switch service {
		case "iot.amazonaws.com":
			assert.Equal(t, map[string]any{"aws:SourceArn": "arn:aws:iot:eu-west-1:" + mockAccount + ":*"}, st.Condition["ArnLike"], name)
		case "ssm.amazonaws.com":
			assert.Equal(t, map[string]any{"aws:SourceArn": "arn:aws:ssm:eu-west-1:" + mockAccount + ":*"}, st.Condition["ArnLike"], name)
		}
	}
}
