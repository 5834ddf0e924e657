package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pulumi/esc"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag/colors"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/config"
	"github.com/pulumi/pulumi/sdk/v3/go/common/workspace"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/internals"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/infra/components"
	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
	"github.com/iot-fleet/iot-fleet/infra/stackconfig"
	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// Resource type tokens the tests look at.
const (
	tBucket       = "aws:s3/bucketV2:BucketV2"
	tPAB          = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
	tOwnership    = "aws:s3/bucketOwnershipControls:BucketOwnershipControls"
	tVersioning   = "aws:s3/bucketVersioningV2:BucketVersioningV2"
	tSSE          = "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2"
	tBucketPolicy = "aws:s3/bucketPolicy:BucketPolicy"
	tNotification = "aws:s3/bucketNotification:BucketNotification"
	tObject       = "aws:s3/bucketObjectv2:BucketObjectv2"
	tTable        = "aws:dynamodb/table:Table"
	tIoTPolicy    = "aws:iot/policy:Policy"
	tAttachment   = "aws:iot/policyAttachment:PolicyAttachment"
	tCert         = "aws:iot/certificate:Certificate"
	tTemplate     = "aws:iot/provisioningTemplate:ProvisioningTemplate"
	tThingGroup   = "aws:iot/thingGroup:ThingGroup"
	tRoleAlias    = "aws:iot/roleAlias:RoleAlias"
	tTopicRule    = "aws:iot/topicRule:TopicRule"
	tRole         = "aws:iam/role:Role"
	tRolePolicy   = "aws:iam/rolePolicy:RolePolicy"
	tRoleAttach   = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
	tFunction     = "aws:lambda/function:Function"
	tPermission   = "aws:lambda/permission:Permission"
	tLogGroup     = "aws:cloudwatch/logGroup:LogGroup"
	tSecret       = "aws:secretsmanager/secret:Secret"
	tSecretVer    = "aws:secretsmanager/secretVersion:SecretVersion"
	tInvocation   = "aws:lambda/invocation:Invocation"
)

// lambdaPackages holds the real Lambdas, built once by TestMain from
// lambdas/cmd/<name> exactly as `pulumi up` builds them. Read-only after
// TestMain.
var lambdaPackages map[string]lambdabuild.Artifact

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "infra-test-lambdas-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		root, err := projectRoot("", "")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if lambdaPackages, err = buildLambdas(ctx, root, dir); err != nil {
			fmt.Fprintln(os.Stderr, "building the Lambdas:", err)
			return 1
		}
		return m.Run()
	}())
}

// repoRoot is the project root (Pulumi.yaml, go.mod, allowlist.txt).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := projectRoot("", "")
	require.NoError(t, err)
	return root
}

// stackConfig loads Pulumi.yaml and Pulumi.<stack>.yaml with Pulumi's own
// project loader, validates the stack config against the project's typed
// config and applies its defaults, as `pulumi up` does, and returns the
// map the engine hands to the program.
func stackConfig(t *testing.T, stack string) map[string]string {
	t.Helper()
	root := repoRoot(t)
	proj, err := workspace.LoadProject(filepath.Join(root, "Pulumi.yaml"))
	require.NoError(t, err)
	sink := diag.DefaultSink(io.Discard, io.Discard, diag.FormatOptions{Color: colors.Never})
	ps, err := workspace.LoadProjectStack(sink, proj, filepath.Join(root, "Pulumi."+stack+".yaml"))
	require.NoError(t, err)
	require.NoError(t, workspace.ValidateStackConfigAndApplyProjectConfig(
		context.Background(), stack, proj, esc.Value{}, ps.Config, config.NopEncrypter, config.NopDecrypter))
	m := map[string]string{}
	for k, v := range ps.Config {
		s, err := v.Value(config.NopDecrypter)
		require.NoError(t, err)
		m[k.String()] = s
	}
	return m
}

// result is one run of the program under mocks.
type result struct {
	aws     *fakeAWS
	err     error
	outputs map[string]any
	secret  map[string]bool
}

// runProgram runs the program as the engine would, against the fake AWS.
func runProgram(t *testing.T, stack string, cfg map[string]string, opts programOptions) result {
	t.Helper()
	if opts.Root == "" {
		opts.Root = repoRoot(t)
	}
	if opts.Prebuilt == nil && opts.BuildDir == "" {
		opts.Prebuilt = lambdaPackages
	}
	r := result{aws: newFakeAWS(cfg[stackconfig.KeyRegion]), outputs: map[string]any{}, secret: map[string]bool{}}
	var outs pulumi.Map
	r.err = pulumi.RunErr(func(ctx *pulumi.Context) error {
		var err error
		outs, err = declare(ctx, opts)
		return err
	}, pulumi.WithMocks(stackconfig.Namespace, stack, r.aws), func(info *pulumi.RunInfo) { info.Config = cfg })
	// Resolve every output as the engine would when exporting it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for name, value := range outs {
		res, err := internals.UnsafeAwaitOutput(ctx, pulumi.ToOutput(value))
		require.NoError(t, err, "output %s", name)
		require.True(t, res.Known, "output %s is known after the update", name)
		r.outputs[name], r.secret[name] = res.Value, res.Secret
	}
	return r
}

func devConfig(t *testing.T) map[string]string { return stackConfig(t, "dev") }

// mustRun runs the dev stack and requires success.
func mustRun(t *testing.T) result {
	t.Helper()
	r := runProgram(t, "dev", devConfig(t), programOptions{})
	require.NoError(t, r.err)
	return r
}

// one is the single registered resource of type typ named *suffix.
func (r result) one(t *testing.T, typ, suffix string) registration {
	t.Helper()
	return mustOne(t, r.aws, typ, suffix)
}

// bucket is the stack's bucket of kind ("artifacts", "config", "images"):
// the only one whose generated name has the kind's prefix.
func (r result) bucket(t *testing.T, kind string) registration {
	t.Helper()
	var found []registration
	for _, b := range r.aws.resources(tBucket) {
		if strings.HasPrefix(propString(b.Outputs, "bucket"), components.BucketPrefix("iot-fleet-dev", kind)) {
			found = append(found, b)
		}
	}
	require.Len(t, found, 1, "%s bucket", kind)
	return found[0]
}

func mustOne(t *testing.T, aws *fakeAWS, typ, suffix string) registration {
	t.Helper()
	reg, err := aws.one(typ, suffix)
	require.NoError(t, err)
	return reg
}

func policyDoc(t *testing.T, r registration, key string) policy.Document {
	t.Helper()
	s := propString(r.Inputs, key)
	require.NotEmpty(t, s, "%s %s has no %s", r.Type, r.Name, key)
	doc, err := policy.Parse(s)
	require.NoError(t, err)
	return doc
}

func TestDevAndProdStacks(t *testing.T) {
	t.Parallel()
	for _, stack := range []string{"dev", "prod"} {
		t.Run(stack, func(t *testing.T) {
			t.Parallel()
			cfg := stackConfig(t, stack)
			r := runProgram(t, stack, cfg, programOptions{})
			require.NoError(t, r.err)
			c, err := stackconfig.FromMap(cfg)
			require.NoError(t, err)

			table := r.one(t, tTable, "registry")
			assert.Equal(t, "iot-fleet-"+stack+"-registry", propString(table.Inputs, "name"))
			v, _ := prop(table.Inputs, "deletionProtectionEnabled")
			assert.Equal(t, stack == "prod", v.BoolValue(), "prod protects its registry, dev does not")

			for _, lg := range r.aws.resources(tLogGroup) {
				days, ok := prop(lg.Inputs, "retentionInDays")
				require.True(t, ok, lg.Name)
				assert.Equal(t, float64(c.LogRetentionDays), days.NumberValue(), "log group %s retention", lg.Name)
			}
			assert.Equal(t, "iot-fleet-"+stack, r.outputs["provisioningTemplate"])
			assert.Equal(t, "iot-fleet-"+stack, r.outputs["thingGroup"])
			assert.Equal(t, "iot-fleet-"+stack+"-token-exchange", r.outputs["roleAlias"])
			assert.Equal(t, "iot-fleet-"+stack+"-claim", r.outputs["claimPolicy"])
			assert.Equal(t, "iot-fleet-"+stack+"-device", r.outputs["devicePolicy"])
			assert.Equal(t, "iot-fleet-"+stack+"-preprovision", r.outputs["preprovisionLambda"])
			assert.Equal(t, "iot-fleet-"+stack+"-allowlistsync", r.outputs["allowlistSyncLambda"])
			assert.Equal(t, "iot-fleet-"+stack+"-revoke", r.outputs["revokeLambda"])
			assert.Equal(t, cfg[stackconfig.KeyRegion], r.outputs["region"])
		})
	}
}

func TestClaimPolicyAllowsOnlyProvisioning(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	pol := r.one(t, tIoTPolicy, "-claim")
	assert.Equal(t, "iot-fleet-dev-claim", propString(pol.Inputs, "name"))
	doc := policyDoc(t, pol, "policy")

	template := r.one(t, tTemplate, "template")
	name := propString(template.Inputs, "name")
	arn := func(kind, rest string) string {
		return fmt.Sprintf("arn:aws:iot:eu-west-1:%s:%s/%s", mockAccount, kind, rest)
	}
	csr, reg := "$aws/certificates/create-from-csr/json", "$aws/provisioning-templates/"+name+"/provision/json"
	allowed := map[string][]string{
		"iot:Connect":   {arn("client", "provision-*")},
		"iot:Publish":   {arn("topic", csr), arn("topic", reg)},
		"iot:Receive":   {arn("topic", csr+"/*"), arn("topic", reg+"/*")},
		"iot:Subscribe": {arn("topicfilter", csr+"/*"), arn("topicfilter", reg+"/*")},
	}
	granted := map[string][]string{}
	for _, st := range doc.Statement {
		assert.Equal(t, "Allow", st.Effect)
		assert.Empty(t, st.Condition)
		for _, a := range st.Action {
			_, ok := allowed[a]
			assert.True(t, ok, "claim policy grants %s", a)
			for _, res := range st.Resource {
				assert.Contains(t, allowed[a], res, "claim policy grants %s on %s", a, res)
				granted[a] = append(granted[a], res)
			}
		}
	}
	for a, want := range allowed {
		assert.ElementsMatch(t, want, granted[a], "%s resources", a)
	}

	// The claim policy is attached to the claim certificate, nothing else.
	cert := r.one(t, tCert, "-claim")
	att := r.one(t, tAttachment, "-claim")
	assert.Equal(t, "iot-fleet-dev-claim", propString(att.Inputs, "policy"))
	assert.Equal(t, propString(cert.Outputs, "arn"), propString(att.Inputs, "target"))
	assert.Len(t, r.aws.resources(tAttachment), 1)
}

func TestDevicePolicyIsLeastPrivilege(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	pol := r.one(t, tIoTPolicy, "-device")
	assert.Equal(t, "iot-fleet-dev-device", propString(pol.Inputs, "name"))
	doc := policyDoc(t, pol, "policy")
	alias := propString(r.one(t, tRoleAlias, "role-alias").Inputs, "alias")
	aliasARN := fmt.Sprintf("arn:aws:iot:eu-west-1:%s:rolealias/%s", mockAccount, alias)

	var sawConnect, sawAssume bool
	for _, st := range doc.Statement {
		assert.Equal(t, "Allow", st.Effect)
		for _, a := range st.Action {
			assert.NotEqual(t, "iot:*", a)
			assert.NotEqual(t, "*", a)
			assert.NotContains(t, a, "*", "wildcard action %s", a)
		}
		for _, res := range st.Resource {
			assert.NotEqual(t, "*", res)
			assert.True(t, strings.HasPrefix(res, "arn:aws:iot:eu-west-1:"+mockAccount+":"), "resource %s is in this account and region", res)
			if slices.Contains(st.Action, "iot:AssumeRoleWithCertificate") {
				continue
			}
			assert.Contains(t, res, policy.ThingNameVar, "%v on %s is not pinned to the connected thing", st.Action, res)
		}
		if slices.Contains(st.Action, "iot:Connect") {
			sawConnect = true
			assert.Equal(t, []string{"arn:aws:iot:eu-west-1:" + mockAccount + ":client/" + policy.ThingNameVar}, st.Resource)
			assert.Equal(t, "true", st.Condition["Bool"]["iot:Connection.Thing.IsAttached"])
		}
		if slices.Contains(st.Action, "iot:AssumeRoleWithCertificate") {
			sawAssume = true
			assert.Equal(t, []string{"iot:AssumeRoleWithCertificate"}, st.Action)
			assert.Equal(t, []string{aliasARN}, st.Resource)
		}
	}
	assert.True(t, sawConnect, "device policy lets the thing connect")
	assert.True(t, sawAssume, "device policy lets the thing use the role alias")

	// The agent's own topics are covered: its jobs, its dt/ and cmd/ topics.
	var all []string
	for _, st := range doc.Statement {
		all = append(all, st.Resource...)
	}
	joined := strings.Join(all, "\n")
	assert.Contains(t, joined, "topic/$aws/things/"+policy.ThingNameVar+"/jobs/*")
	assert.Contains(t, joined, "topic/"+protocol.DataTopic(policy.ThingNameVar, "*"))
	assert.Contains(t, joined, "topicfilter/"+protocol.CommandTopic(policy.ThingNameVar, "*"))
}

func TestProvisioningTemplateUsesHookAndGroup(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	template := r.one(t, tTemplate, "template")
	hook := r.one(t, tFunction, components.LambdaPreprovision)
	group := r.one(t, tThingGroup, "group")
	device := r.one(t, tIoTPolicy, "-device")
	role := r.one(t, tRole, "provisioning-role")

	assert.Equal(t, "iot-fleet-dev", propString(template.Inputs, "name"))
	assert.Equal(t, "FLEET_PROVISIONING", propString(template.Inputs, "type"))
	enabled, _ := prop(template.Inputs, "enabled")
	assert.True(t, enabled.BoolValue())
	hookARN := propString(hook.Outputs, "arn")
	require.NotEmpty(t, hookARN)
	assert.Equal(t, hookARN, propString(template.Inputs, "preProvisioningHook", "targetArn"), "the hook is the preprovision Lambda")
	assert.Equal(t, "2020-04-01", propString(template.Inputs, "preProvisioningHook", "payloadVersion"))
	assert.Equal(t, propString(role.Outputs, "arn"), propString(template.Inputs, "provisioningRoleArn"))

	var body struct {
		Parameters map[string]any
		Resources  map[string]struct {
			Type       string
			Properties map[string]any
		}
	}
	require.NoError(t, json.Unmarshal([]byte(propString(template.Inputs, "templateBody")), &body), "template body is valid JSON")
	assert.Contains(t, body.Parameters, protocol.ParamSerialNumber)
	thing := body.Resources["thing"]
	assert.Equal(t, "AWS::IoT::Thing", thing.Type)
	assert.Equal(t, []any{propString(group.Inputs, "name")}, thing.Properties["ThingGroups"], "things join the stack's thing group")
	assert.Equal(t, map[string]any{"Fn::Join": []any{"", []any{"dev-", map[string]any{"Ref": protocol.ParamSerialNumber}}}}, thing.Properties["ThingName"])
	assert.Equal(t, propString(device.Inputs, "name"), body.Resources["policy"].Properties["PolicyName"])

	// The template may only be used once the group and policy it names exist.
	assert.Contains(t, template.DependsOn, tThingGroup+"::"+group.Name)
	assert.Contains(t, template.DependsOn, tIoTPolicy+"::"+device.Name)

	// IoT may invoke the hook, for this template only.
	var perm registration
	for _, p := range r.aws.resources(tPermission) {
		// (The rotation rule has its own permission for its Lambda.)
		if propString(p.Inputs, "principal") == "iot.amazonaws.com" && propString(p.Inputs, "function") == propString(hook.Outputs, "name") {
			perm = p
		}
	}
	require.NotEmpty(t, perm.Name, "no invoke permission for iot.amazonaws.com")
	assert.Equal(t, "lambda:InvokeFunction", propString(perm.Inputs, "action"))
	assert.Equal(t, propString(hook.Outputs, "name"), propString(perm.Inputs, "function"))
	assert.Equal(t, propString(template.Outputs, "arn"), propString(perm.Inputs, "sourceArn"))
	assert.Equal(t, mockAccount, propString(perm.Inputs, "sourceAccount"))

	// The provisioning role is assumed by IoT and has the AWS managed
	// registration policy.
	trust := policyJSON(t, propString(role.Inputs, "assumeRolePolicy"))
	assert.Equal(t, map[string]any{"Service": "iot.amazonaws.com"}, trust.Statement[0].Principal)
	assert.Equal(t, map[string]any{
		"StringEquals": map[string]any{"aws:SourceAccount": mockAccount},
		"ArnLike":      map[string]any{"aws:SourceArn": "arn:aws:iot:eu-west-1:" + mockAccount + ":*"},
	}, trust.Statement[0].Condition, "only AWS IoT acting for this account and region (confused deputy)")
	att := r.one(t, tRoleAttach, "provisioning-role")
	assert.Equal(t, "arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration", propString(att.Inputs, "policyArn"))
	assert.Equal(t, propString(role.Inputs, "name"), propString(att.Inputs, "role"))
}

func TestBucketsArePrivate(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	buckets := r.aws.resources(tBucket)
	require.Len(t, buckets, 3, "artifacts, config and images buckets")
	byBucket := func(typ, bucketID string) registration {
		t.Helper()
		var found []registration
		for _, x := range r.aws.resources(typ) {
			if propString(x.Inputs, "bucket") == bucketID {
				found = append(found, x)
			}
		}
		require.Len(t, found, 1, "%s for bucket %s", typ, bucketID)
		return found[0]
	}
	for _, b := range buckets {
		id := propString(b.Outputs, "bucket")
		arn := propString(b.Outputs, "arn")
		require.NotEmpty(t, id)
		force, _ := prop(b.Inputs, "forceDestroy")
		assert.False(t, force.BoolValue(), "%s: no force destroy", id)

		pab := byBucket(tPAB, id)
		for _, k := range []string{"blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"} {
			v, ok := prop(pab.Inputs, k)
			assert.True(t, ok && v.BoolValue(), "%s: %s", id, k)
		}
		assert.Equal(t, "BucketOwnerEnforced", propString(byBucket(tOwnership, id).Inputs, "rule", "objectOwnership"))
		assert.Equal(t, "Enabled", propString(byBucket(tVersioning, id).Inputs, "versioningConfiguration", "status"))
		rules, _ := prop(byBucket(tSSE, id).Inputs, "rules")
		require.True(t, rules.IsArray() && len(rules.ArrayValue()) == 1)
		assert.Equal(t, "AES256", propString(rules.ArrayValue()[0].ObjectValue(), "applyServerSideEncryptionByDefault", "sseAlgorithm"))

		bp := byBucket(tBucketPolicy, id)
		doc := policyJSON(t, propString(bp.Inputs, "policy"))
		require.Len(t, doc.Statement, 1)
		st := doc.Statement[0]
		assert.Equal(t, "Deny", st.Effect, "the bucket policy only denies")
		assert.Equal(t, map[string]any{"Bool": map[string]any{"aws:SecureTransport": "false"}}, st.Condition)
		assert.ElementsMatch(t, []string{arn, arn + "/*"}, st.Resource.list())
		assert.Contains(t, bp.DependsOn, tPAB+"::"+pab.Name, "the policy is set after public access is blocked")
	}
}

func TestRegistryTable(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	table := r.one(t, tTable, "registry")
	assert.Equal(t, "PAY_PER_REQUEST", propString(table.Inputs, "billingMode"))
	assert.Equal(t, "serial", propString(table.Inputs, "hashKey"))
	pitr, _ := prop(table.Inputs, "pointInTimeRecovery", "enabled")
	assert.True(t, pitr.BoolValue(), "point-in-time recovery")
	sse, _ := prop(table.Inputs, "serverSideEncryption", "enabled")
	assert.True(t, sse.BoolValue())
	attrs, _ := prop(table.Inputs, "attributes")
	require.Len(t, attrs.ArrayValue(), 3, "the key and the expiry index's keys")
	assert.Equal(t, "serial", propString(attrs.ArrayValue()[0].ObjectValue(), "name"))
	assert.Equal(t, "S", propString(attrs.ArrayValue()[0].ObjectValue(), "type"))
	// The certificate-expiry index the rotation scan queries, as
	// testenv.CreateRegistryTable declares it for the registry's tests.
	gsis, _ := prop(table.Inputs, "globalSecondaryIndexes")
	require.Len(t, gsis.ArrayValue(), 1)
	gsi := gsis.ArrayValue()[0].ObjectValue()
	assert.Equal(t, registry.ExpiryIndex, propString(gsi, "name"))
	assert.Equal(t, registry.AttrExpiryPartition, propString(gsi, "hashKey"))
	assert.Equal(t, registry.AttrCertNotAfter, propString(gsi, "rangeKey"))
	assert.Equal(t, "ALL", propString(gsi, "projectionType"))
	assert.Equal(t, propString(table.Inputs, "name"), r.outputs["registryTable"])
}

func TestClaimCertificateIsProtectedAndRetained(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	cert := r.one(t, tCert, "-claim")
	active, _ := prop(cert.Inputs, "active")
	assert.True(t, active.BoolValue())
	_, hasCSR := prop(cert.Inputs, "csr")
	assert.False(t, hasCSR, "AWS generates the claim key pair")
	// Protect and RetainOnDelete as sent to the engine in the
	// RegisterResource request.
	assert.True(t, cert.Protect, "claim certificate is protected")
	assert.True(t, cert.RetainOnDelete, "claim certificate is retained on delete")

	secret := r.one(t, tSecret, "-claim")
	version := r.one(t, tSecretVer, "-claim")
	for _, x := range []registration{secret, version} {
		assert.True(t, x.Protect && x.RetainOnDelete, "%s is protected and retained with the certificate", x.Type)
	}
	assert.Equal(t, "iot-fleet/dev/claim-certificate", propString(secret.Inputs, "name"))

	// The secret holds the certificate and private key, and is a secret.
	raw := version.Inputs["secretString"]
	require.True(t, raw.IsSecret(), "secretString must be sent as a secret")
	var bundle map[string]string
	require.NoError(t, json.Unmarshal([]byte(raw.SecretValue().Element.StringValue()), &bundle))
	assert.Equal(t, propString(cert.Outputs, "privateKey"), bundle["privateKey"])
	assert.Equal(t, propString(cert.Outputs, "certificatePem"), bundle["certificatePem"])
	assert.Equal(t, propString(cert.Outputs, "arn"), bundle["certificateArn"])
	assert.Equal(t, propString(secret.Outputs, "arn"), propString(version.Inputs, "secretId"))

	assert.Equal(t, propString(secret.Outputs, "arn"), r.outputs["claimCertificateSecretArn"])
	assert.Equal(t, propString(cert.Outputs, "privateKey"), r.outputs["claimPrivateKey"])
	assert.True(t, r.secret["claimPrivateKey"], "the private key output is a secret")
}

func TestAdoptRetainedClaimCertificate(t *testing.T) {
	t.Parallel()
	cfg := devConfig(t)
	certARN := "arn:aws:iot:eu-west-1:" + mockAccount + ":cert/" + strings.Repeat("c0", 32)
	cfg[stackconfig.KeyClaimCertificateArn] = certARN

	// Without the retained secret, adoption fails and says why.
	r := runProgram(t, "dev", cfg, programOptions{})
	require.Error(t, r.err)
	assert.Contains(t, r.err.Error(), "iot-fleet/dev/claim-certificate")

	secretARN := "arn:aws:secretsmanager:eu-west-1:" + mockAccount + ":secret:iot-fleet/dev/claim-certificate-Old123"
	aws := newFakeAWS("eu-west-1")
	aws.secrets["iot-fleet/dev/claim-certificate"] = secretARN
	var outs pulumi.Map
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		var err error
		outs, err = declare(ctx, programOptions{Root: repoRoot(t), Prebuilt: lambdaPackages})
		return err
	}, pulumi.WithMocks(stackconfig.Namespace, "dev", aws), func(info *pulumi.RunInfo) { info.Config = cfg })
	require.NoError(t, err)
	assert.Empty(t, aws.resources(tCert), "no new claim certificate")
	assert.Empty(t, aws.resources(tSecret), "no new secret")
	att := mustOne(t, aws, tAttachment, "-claim")
	assert.Equal(t, certARN, propString(att.Inputs, "target"), "the claim policy is attached to the adopted certificate")
	require.NotNil(t, outs)
	assert.Len(t, aws.calls("aws:secretsmanager/getSecret:getSecret"), 1)
}

// iamDoc is an IAM policy document; Action and Resource may be a string or
// a list.
type iamDoc struct {
	Statement []struct {
		Sid       string
		Effect    string
		Principal any
		Action    stringOrList
		Resource  stringOrList
		Condition map[string]any
	}
}

type stringOrList []string

func (s *stringOrList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*s = many
	return nil
}

func (s stringOrList) list() []string { return s }

func policyJSON(t *testing.T, s string) iamDoc {
	t.Helper()
	var d iamDoc
	require.NoError(t, json.Unmarshal([]byte(s), &d), "policy %s", s)
	require.NotEmpty(t, d.Statement)
	return d
}

func TestIAMPoliciesNameSpecificResources(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	policies := r.aws.resources(tRolePolicy)
	require.Len(t, policies, 15, "three Lambdas (hook, sync, revoke), the token-exchange role, the topic-rule role, the OTA presign role, the SSM managed-instance role, "+
		"the three SSM Lambdas and the SSM schedule role, the two rotation Lambdas and the rotation schedule role, the template-versions Lambda")
	for _, p := range policies {
		doc := policyJSON(t, propString(p.Inputs, "policy"))
		for _, st := range doc.Statement {
			if st.Effect == "Deny" {
				// Only the claim-certificate guard denies.
				assert.Equal(t, "NeverTheClaimCertificate", st.Sid, p.Name)
				continue
			}
			assert.Equal(t, "Allow", st.Effect, p.Name)
			for _, a := range st.Action {
				assert.NotContains(t, a, "*", "%s: wildcard action %s", p.Name, a)
			}
			require.NotEmpty(t, st.Resource, "%s: statement %s has no resources", p.Name, st.Sid)
			for _, res := range st.Resource {
				if res == "*" {
					// Only actions IAM cannot scope to a resource.
					for _, a := range st.Action {
						// iot:CreateCertificateFromCsr (rotation) has no
						// resource type either.
						assert.True(t, actionWithoutResourceType(a) || a == "iot:CreateCertificateFromCsr" ||
							(p.Name == "ssm-managed-instance" && managedNodeAgentAction(a)), "%s: %s on * but it has a resource type", p.Name, a)
					}
					continue
				}
				assert.True(t, strings.HasPrefix(res, "arn:aws:"), "%s: %s is not an ARN", p.Name, res)
				// A wildcard may only narrow within a named resource
				// (objects of one bucket, streams of one log group,
				// certificates or things of this account), or stand for
				// the thing name of a command topic.
				if thingCommandTopic(res) {
					continue
				}
				if i := strings.Index(res, "*"); i >= 0 {
					assert.Equal(t, len(res)-1, i, "%s: %s: wildcard only at the end", p.Name, res)
				}
			}
		}
	}
	// Every role policy belongs to a role the stack declares (a role's id
	// is its name).
	var roles []string
	for _, role := range r.aws.resources(tRole) {
		roles = append(roles, propString(role.Inputs, "name"))
	}
	for _, p := range policies {
		assert.Contains(t, roles, propString(p.Inputs, "role"), p.Name)
	}
}

func TestTokenExchangeRoleReadsOnlyArtifacts(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	role := r.one(t, tRole, "token-exchange")
	trust := policyJSON(t, propString(role.Inputs, "assumeRolePolicy"))
	require.Len(t, trust.Statement, 1)
	assert.Equal(t, map[string]any{"Service": "credentials.iot.amazonaws.com"}, trust.Statement[0].Principal)
	assert.Equal(t, []string{"sts:AssumeRole"}, trust.Statement[0].Action.list())

	artifactsARN := propString(r.bucket(t, "artifacts").Outputs, "arn")
	require.NotEmpty(t, artifactsARN)
	pol := r.one(t, tRolePolicy, "token-exchange")
	doc := policyJSON(t, propString(pol.Inputs, "policy"))
	require.Len(t, doc.Statement, 1)
	assert.Equal(t, []string{"s3:GetObject"}, doc.Statement[0].Action.list())
	assert.Equal(t, []string{artifactsARN + "/*"}, doc.Statement[0].Resource.list())
	images := propString(r.bucket(t, "images").Outputs, "arn")
	for _, res := range doc.Statement[0].Resource.list() {
		assert.False(t, strings.HasPrefix(res, images), "devices must not read the images bucket (%s): images hold the claim key", res)
	}

	alias := r.one(t, tRoleAlias, "role-alias")
	assert.Equal(t, propString(role.Outputs, "arn"), propString(alias.Inputs, "roleArn"))
	assert.Equal(t, "iot-fleet-dev-token-exchange", propString(alias.Inputs, "alias"))
}

func TestLambdas(t *testing.T) {
	t.Parallel()
	cfg := devConfig(t)
	r := runProgram(t, "dev", cfg, programOptions{})
	require.NoError(t, r.err)
	table := propString(r.one(t, tTable, "registry").Inputs, "name")
	group := propString(r.one(t, tThingGroup, "group").Inputs, "name")

	wantEnv := map[string]map[string]string{
		components.LambdaPreprovision: {
			"REGISTRY_TABLE": table, "SERIAL_PATTERN": cfg[stackconfig.KeySerialPattern], "THING_NAME_PREFIX": "dev-",
			"DEVICE_POLICY": "iot-fleet-dev-device",
		},
		components.LambdaAllowlistSync: {
			"REGISTRY_TABLE": table, "THING_GROUP": group, "SERIAL_PATTERN": cfg[stackconfig.KeySerialPattern],
			"DEVICE_POLICY": "iot-fleet-dev-device", "THING_NAME_PREFIX": "dev-",
		},
		components.LambdaSSMToggle: {
			"REGISTRY_TABLE": table, "MANAGED_INSTANCE_ROLE": "iot-fleet-dev-ssm-managed-instance", "ENVIRONMENT": "dev",
			"THING_NAME_PREFIX": "dev-", "IOT_DATA_ENDPOINT": "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com",
			"SERIAL_PATTERN": cfg[stackconfig.KeySerialPattern], "ACTIVATION_EXPIRY_HOURS": cfg[stackconfig.KeySSMActivationExpiryHours],
		},
		components.LambdaSSMRegistered: {"REGISTRY_TABLE": table, "ENVIRONMENT": "dev", "THING_NAME_PREFIX": "dev-"},
		components.LambdaSSMExpire: {
			"REGISTRY_TABLE": table, "MANAGED_INSTANCE_ROLE": "iot-fleet-dev-ssm-managed-instance", "ENVIRONMENT": "dev", "THING_NAME_PREFIX": "dev-",
		},
		components.LambdaCertRotate: {
			"REGISTRY_TABLE": table, "DEVICE_POLICY": "iot-fleet-dev-device", "THING_NAME_PREFIX": "dev-",
			"IOT_DATA_ENDPOINT": "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com",
		},
		components.LambdaCertScan: {
			"REGISTRY_TABLE": table, "THING_NAME_PREFIX": "dev-", "EXPIRY_WINDOW_DAYS": cfg[stackconfig.KeyCertExpiryWindowDays],
			"IOT_DATA_ENDPOINT": "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com",
		},
		components.LambdaTemplateVersions: {"TEMPLATE_NAME": "iot-fleet-dev", "KEEP_VERSIONS": "4"},
		components.LambdaRevoke: {
			"REGISTRY_TABLE": table, "THING_GROUP": group, "SERIAL_PATTERN": cfg[stackconfig.KeySerialPattern],
			"DEVICE_POLICY": "iot-fleet-dev-device", "THING_NAME_PREFIX": "dev-",
		},
	}
	require.Len(t, r.aws.resources(tFunction), len(wantEnv))
	for name, env := range wantEnv {
		fn := r.one(t, tFunction, name)
		fnName := "iot-fleet-dev-" + name
		assert.Equal(t, fnName, propString(fn.Inputs, "name"))
		assert.Equal(t, "provided.al2023", propString(fn.Inputs, "runtime"))
		assert.Equal(t, "bootstrap", propString(fn.Inputs, "handler"))
		arch, _ := prop(fn.Inputs, "architectures")
		require.Len(t, arch.ArrayValue(), 1)
		assert.Equal(t, "arm64", arch.ArrayValue()[0].StringValue())
		memory, _ := prop(fn.Inputs, "memorySize")
		assert.Equal(t, float64(256), memory.NumberValue(), "%s memory", name)
		assert.Equal(t, "dev", propString(fn.Inputs, "tags", "environment"), "%s carries the stack's tags", name)

		vars, ok := prop(fn.Inputs, "environment", "variables")
		require.True(t, ok, name)
		got := map[string]string{}
		for k, v := range vars.ObjectValue() {
			got[string(k)] = v.StringValue()
		}
		assert.Equal(t, env, got, "%s environment", name)

		// The code is the built zip, and the hash is that zip's.
		code, ok := prop(fn.Inputs, "code")
		require.True(t, ok && code.IsArchive(), "%s code is an archive", name)
		zipPath := code.ArchiveValue().Path
		zipped, err := os.ReadFile(zipPath)
		require.NoError(t, err)
		sum := sha256.Sum256(zipped)
		assert.Equal(t, base64.StdEncoding.EncodeToString(sum[:]), propString(fn.Inputs, "sourceCodeHash"))
		assert.Equal(t, name+".zip", filepath.Base(zipPath))

		// Its log group, with the configured retention, is the one it
		// logs to, and its role may write only there.
		lg := r.one(t, tLogGroup, name)
		assert.Equal(t, "/aws/lambda/"+fnName, propString(lg.Inputs, "name"))
		assert.Equal(t, propString(lg.Inputs, "name"), propString(fn.Inputs, "loggingConfig", "logGroup"))
		role := r.one(t, tRole, name)
		assert.Equal(t, propString(role.Outputs, "arn"), propString(fn.Inputs, "role"))
		trust := policyJSON(t, propString(role.Inputs, "assumeRolePolicy"))
		assert.Equal(t, map[string]any{"Service": "lambda.amazonaws.com"}, trust.Statement[0].Principal)
		assert.Equal(t, map[string]any{"StringEquals": map[string]any{"aws:SourceAccount": mockAccount}}, trust.Statement[0].Condition,
			"%s: only Lambda acting for this account assumes the role", name)
		doc := policyJSON(t, propString(r.one(t, tRolePolicy, name).Inputs, "policy"))
		assert.Equal(t, []string{propString(lg.Outputs, "arn") + ":*"}, doc.Statement[0].Resource.list())
		assert.Contains(t, fn.DependsOn, tLogGroup+"::"+lg.Name, "the log group exists before the function logs")
	}
	hook := r.one(t, tFunction, components.LambdaPreprovision)
	timeout, _ := prop(hook.Inputs, "timeout")
	assert.LessOrEqual(t, timeout.NumberValue(), float64(5), "the hook must answer within IoT's 5 s limit")
	reserved, ok := prop(r.one(t, tFunction, components.LambdaAllowlistSync).Inputs, "reservedConcurrentExecutions")
	require.True(t, ok, "the allowlist sync has reserved concurrency")
	assert.Equal(t, float64(1), reserved.NumberValue(), "one allowlist sync at a time")
}

func TestLambdaPermissionsMatchTheirJobs(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	tableARN := propString(r.one(t, tTable, "registry").Outputs, "arn")
	configARN := propString(r.bucket(t, "config").Outputs, "arn")
	byEffect := func(name, effect string) map[string][]string {
		doc := policyJSON(t, propString(r.one(t, tRolePolicy, name).Inputs, "policy"))
		g := map[string][]string{}
		for _, st := range doc.Statement {
			if st.Effect != effect {
				continue
			}
			for _, a := range st.Action {
				g[a] = append(g[a], st.Resource...)
			}
		}
		return g
	}
	grants := func(name string) map[string][]string { return byEffect(name, "Allow") }
	denies := func(name string) map[string][]string { return byEffect(name, "Deny") }
	certs := "arn:aws:iot:eu-west-1:" + mockAccount + ":cert/*"
	things := "arn:aws:iot:eu-west-1:" + mockAccount + ":thing/dev-*"
	devicePolicy := propString(r.one(t, tIoTPolicy, "-device").Outputs, "arn")
	claimCert := propString(r.one(t, tCert, "-claim").Outputs, "arn")
	hook := grants(components.LambdaPreprovision)
	assert.Equal(t, map[string][]string{
		"logs:CreateLogStream":     hook["logs:CreateLogStream"],
		"logs:PutLogEvents":        hook["logs:PutLogEvents"],
		"dynamodb:GetItem":         {tableARN},
		"dynamodb:UpdateItem":      {tableARN},
		"iot:DescribeCertificate":  {certs},
		"iot:UpdateCertificate":    {certs},
		"iot:DetachPolicy":         {certs, devicePolicy},
		"iot:DetachThingPrincipal": {things, certs},
	}, hook, "the hook retires a re-admitted device's certificate, nothing more")
	// Every role that may change cert/* denies itself the claim
	// certificate.
	for _, name := range []string{components.LambdaPreprovision, components.LambdaAllowlistSync, components.LambdaCertRotate, components.LambdaRevoke} {
		denied := denies(name)
		for _, a := range components.ClaimCertificateChanges {
			assert.Equal(t, []string{claimCert}, denied[a], "%s: %s on the claim certificate", name, a)
		}
	}

	sync := grants(components.LambdaAllowlistSync)
	assert.Equal(t, []string{configARN + "/allowlist.txt"}, sync["s3:GetObject"], "sync reads only the allowlist object")
	assert.Equal(t, []string{tableARN}, sync["dynamodb:Scan"])
	assert.Equal(t, []string{"arn:aws:iot:eu-west-1:" + mockAccount + ":cert/*"}, sync["iot:UpdateCertificate"])
	groupARN := propString(r.one(t, tThingGroup, "group").Outputs, "arn")
	assert.Equal(t, []string{"arn:aws:iot:eu-west-1:" + mockAccount + ":thing/dev-*"}, sync["iot:DeleteThing"],
		"sync may delete only this environment's things")
	for _, action := range []string{"iot:ListThingPrincipals", "iot:DetachThingPrincipal"} {
		assert.Equal(t, sync["iot:DeleteThing"], sync[action], "%s on things only, not the thing group", action)
	}
	assert.ElementsMatch(t, []string{"arn:aws:iot:eu-west-1:" + mockAccount + ":thing/dev-*", groupARN}, sync["iot:RemoveThingFromThingGroup"])
	// It turns SSM off for the devices it revokes: activations (no
	// resource type) and this stack's tagged managed nodes only.
	assert.Equal(t, []string{"*"}, sync["ssm:DeleteActivation"])
	assert.Equal(t, []string{"*"}, sync["ssm:DescribeInstanceInformation"])
	assert.Equal(t, []string{"arn:aws:ssm:eu-west-1:" + mockAccount + ":managed-instance/*"}, sync["ssm:DeregisterManagedInstance"])
	syncDoc := policyJSON(t, propString(r.one(t, tRolePolicy, components.LambdaAllowlistSync).Inputs, "policy"))
	for _, st := range syncDoc.Statement {
		if slices.Contains(st.Action, "ssm:DeregisterManagedInstance") {
			assert.Equal(t, map[string]any{"StringEquals": map[string]any{
				"ssm:resourceTag/project": "iot-fleet", "ssm:resourceTag/environment": "dev",
			}}, st.Condition)
		}
	}
	for _, a := range []string{"dynamodb:GetItem", "dynamodb:UpdateItem"} {
		assert.Equal(t, []string{tableARN}, sync[a], "sync reads and writes the registry, SSM state included")
	}

	// The emergency revoke may do to one device what the sync does, and
	// nothing else: no allowlist, no registry scan.
	revoke := grants(components.LambdaRevoke)
	assert.Equal(t, map[string][]string{
		"logs:CreateLogStream":            revoke["logs:CreateLogStream"],
		"logs:PutLogEvents":               revoke["logs:PutLogEvents"],
		"dynamodb:GetItem":                {tableARN},
		"dynamodb:UpdateItem":             {tableARN},
		"iot:DescribeCertificate":         {certs},
		"iot:UpdateCertificate":           {certs},
		"iot:DetachPolicy":                {certs},
		"iot:ListThingPrincipals":         sync["iot:ListThingPrincipals"],
		"iot:DetachThingPrincipal":        sync["iot:DetachThingPrincipal"],
		"iot:RemoveThingFromThingGroup":   sync["iot:RemoveThingFromThingGroup"],
		"iot:DeleteThing":                 sync["iot:DeleteThing"],
		"ssm:DeleteActivation":            sync["ssm:DeleteActivation"],
		"ssm:DeregisterManagedInstance":   sync["ssm:DeregisterManagedInstance"],
		"ssm:DescribeInstanceInformation": sync["ssm:DescribeInstanceInformation"],
	}, revoke, "the revoke Lambda: one device's revocation, nothing more")
	assert.Equal(t, []string{things}, revoke["iot:DeleteThing"])
	assert.ElementsMatch(t, []string{things, groupARN}, revoke["iot:RemoveThingFromThingGroup"])
	revokeName := propString(r.one(t, tFunction, components.LambdaRevoke).Outputs, "name")
	for _, p := range r.aws.resources(tPermission) {
		assert.NotEqual(t, revokeName, propString(p.Inputs, "function"), "no service may invoke the revoke Lambda; operators do, with their own IAM")
	}

	// The template-versions Lambda lists and deletes versions of this
	// template only.
	tplARN := "arn:aws:iot:eu-west-1:" + mockAccount + ":provisioningtemplate/iot-fleet-dev"
	prune := grants(components.LambdaTemplateVersions)
	assert.Equal(t, []string{tplARN}, prune["iot:ListProvisioningTemplateVersions"])
	assert.Equal(t, []string{tplARN}, prune["iot:DeleteProvisioningTemplateVersion"])
	assert.Len(t, prune, 4, "its logs and the two version calls")
}

func TestAllowlistUploadTriggersSync(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	sync := r.one(t, tFunction, components.LambdaAllowlistSync)
	config := r.bucket(t, "config")
	bucketID := propString(config.Outputs, "bucket")
	require.NotEmpty(t, bucketID)

	obj := r.one(t, tObject, "allowlist")
	assert.Equal(t, "allowlist.txt", propString(obj.Inputs, "key"))
	assert.Equal(t, bucketID, propString(obj.Inputs, "bucket"))
	content, err := os.ReadFile(filepath.Join(repoRoot(t), "allowlist.txt"))
	require.NoError(t, err)
	sum := sha256.Sum256(content)
	assert.Equal(t, hex.EncodeToString(sum[:]), propString(obj.Inputs, "sourceHash"), "the object is content-hashed")
	src, ok := prop(obj.Inputs, "source")
	require.True(t, ok && src.IsAsset())
	assert.Equal(t, filepath.Join(repoRoot(t), "allowlist.txt"), src.AssetValue().Path)

	n := r.one(t, tNotification, "notify")
	assert.Equal(t, bucketID, propString(n.Inputs, "bucket"))
	fns, _ := prop(n.Inputs, "lambdaFunctions")
	require.Len(t, fns.ArrayValue(), 1)
	fn := fns.ArrayValue()[0].ObjectValue()
	assert.Equal(t, propString(sync.Outputs, "arn"), propString(fn, "lambdaFunctionArn"))
	events, _ := prop(fn, "events")
	require.Len(t, events.ArrayValue(), 1)
	assert.Equal(t, "s3:ObjectCreated:*", events.ArrayValue()[0].StringValue())
	assert.Equal(t, "allowlist.txt", propString(fn, "filterPrefix"))
	assert.Equal(t, "allowlist.txt", propString(fn, "filterSuffix"))
	assert.Contains(t, obj.DependsOn, tNotification+"::"+n.Name, "the first upload already triggers the sync")

	var perm registration
	for _, p := range r.aws.resources(tPermission) {
		if propString(p.Inputs, "principal") == "s3.amazonaws.com" {
			perm = p
		}
	}
	require.NotEmpty(t, perm.Name)
	assert.Equal(t, propString(sync.Outputs, "name"), propString(perm.Inputs, "function"))
	assert.Equal(t, propString(config.Outputs, "arn"), propString(perm.Inputs, "sourceArn"))
	assert.Equal(t, mockAccount, propString(perm.Inputs, "sourceAccount"))
	assert.Contains(t, n.DependsOn, tPermission+"::"+perm.Name)
}

func TestTopicRulesHaveErrorActions(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	rules := r.aws.resources(tTopicRule)
	require.NotEmpty(t, rules)
	errGroup := r.one(t, tLogGroup, "rules-errors")
	role := r.one(t, tRole, "rules")
	doc := policyJSON(t, propString(r.one(t, tRolePolicy, "rules").Inputs, "policy"))
	writable := doc.Statement[0].Resource.list()
	trust := policyJSON(t, propString(role.Inputs, "assumeRolePolicy"))
	assert.Equal(t, map[string]any{"Service": "iot.amazonaws.com"}, trust.Statement[0].Principal)
	assert.Equal(t, map[string]any{
		"StringEquals": map[string]any{"aws:SourceAccount": mockAccount},
		"ArnLike":      map[string]any{"aws:SourceArn": "arn:aws:iot:eu-west-1:" + mockAccount + ":*"},
	}, trust.Statement[0].Condition)

	var sawStatus, sawRotation bool
	for _, rule := range rules {
		sql := propString(rule.Inputs, "sql")
		if strings.Contains(sql, "FROM 'dt/fleet/+/status'") {
			sawStatus = true
			assert.Contains(t, sql, "topic(3) AS thingName", "the thing is taken from the topic, which the device policy pins")
		}
		assert.Equal(t, "2016-03-23", propString(rule.Inputs, "sqlVersion"))
		assert.Regexp(t, `^[a-zA-Z0-9_]+$`, propString(rule.Inputs, "name"))
		assert.Equal(t, propString(errGroup.Inputs, "name"), propString(rule.Inputs, "errorAction", "cloudwatchLogs", "logGroupName"), "%s has an error action", rule.Name)
		assert.Equal(t, propString(role.Outputs, "arn"), propString(rule.Inputs, "errorAction", "cloudwatchLogs", "roleArn"))
		if lambdas, ok := prop(rule.Inputs, "lambdas"); ok && lambdas.IsArray() {
			// The rotation rule invokes its Lambda (infra/components
			// TestRotation checks it); the others log.
			sawRotation = true
			assert.Contains(t, sql, "FROM 'dt/fleet/+/rotate/+'")
			continue
		}
		actions, _ := prop(rule.Inputs, "cloudwatchLogs")
		require.Len(t, actions.ArrayValue(), 1)
		target := propString(actions.ArrayValue()[0].ObjectValue(), "logGroupName")
		lg := r.one(t, tLogGroup, strings.TrimPrefix(rule.Name, "rules-"))
		assert.Equal(t, propString(lg.Inputs, "name"), target)
		assert.Contains(t, writable, propString(lg.Outputs, "arn")+":*", "the rule role may write to %s", target)
	}
	assert.Contains(t, writable, propString(errGroup.Outputs, "arn")+":*")
	assert.True(t, sawStatus, "device status messages are logged")
	assert.True(t, sawRotation, "rotation messages reach the rotation Lambda")
}

func TestOutputs(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	endpoints := r.aws.calls("aws:iot/getEndpoint:getEndpoint")
	var types []string
	for _, c := range endpoints {
		types = append(types, c.Args["endpointType"].StringValue())
	}
	assert.ElementsMatch(t, []string{"iot:Data-ATS", "iot:CredentialProvider"}, types)
	assert.Equal(t, "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com", r.outputs["iotDataEndpoint"])
	assert.Equal(t, "c1d2e3f4g5h6i7.credentials.iot.eu-west-1.amazonaws.com", r.outputs["iotCredentialsEndpoint"])
	for _, k := range []string{
		"iotDataEndpoint", "iotCredentialsEndpoint", "provisioningTemplate", "claimCertificateArn",
		"claimCertificateSecretArn", "claimPrivateKey", "artifactsBucket", "configBucket", "imagesBucket", "allowlistKey",
		"roleAlias", "registryTable", "preprovisionLambda", "allowlistSyncLambda", "revokeLambda", "thingGroup",
		"certRotateLambda", "certScanLambda", "thingGroupArn", "registryTableArn", "ssmToggleLambda",
		"ssmRegisteredLambda", "ssmExpireLambda", "templateVersionsLambda", "provisioningRoleArn",
		"tokenExchangeRoleArn", "roleAliasArn",
	} {
		v, ok := r.outputs[k].(string)
		assert.True(t, ok && v != "", "output %s", k)
	}
	for k, secret := range r.secret {
		assert.Equal(t, k == "claimPrivateKey", secret, "only the private key output is secret (%s)", k)
	}
}

// writeAllowlist writes a project root whose allowlist holds n serials.
func writeAllowlist(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("# generated\n\n")
	for i := range n {
		fmt.Fprintf(&b, "%016x\n", 0x1000000000000000+i)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "allowlist.txt"), []byte(b.String()), 0o644))
	return dir
}

func TestResourceCountDoesNotDependOnFleetSize(t *testing.T) {
	t.Parallel()
	counts := map[int]map[string]int{}
	for _, n := range []int{3, 10000} {
		r := runProgram(t, "dev", devConfig(t), programOptions{Root: writeAllowlist(t, n)})
		require.NoError(t, r.err, "%d serials", n)
		byType := map[string]int{}
		for _, x := range r.aws.resources("") {
			byType[x.Type]++
		}
		counts[n] = byType
	}
	assert.Equal(t, counts[3], counts[10000])
	total := 0
	for _, c := range counts[3] {
		total += c
	}
	assert.Greater(t, total, 40, "sanity: the whole stack was declared")
}

func TestBadAllowlistFailsBeforeAnyResource(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "allowlist.txt"), []byte("10000000a1b2c3d4\n# ok\nNOT-A-SERIAL\n"), 0o644))
	r := runProgram(t, "dev", devConfig(t), programOptions{Root: dir})
	require.Error(t, r.err)
	assert.Contains(t, r.err.Error(), "line 3")
	assert.Empty(t, r.aws.resources(""), "nothing is declared when the allowlist is bad")
}

func TestMissingAllowlistFailsWithItsKey(t *testing.T) {
	t.Parallel()
	r := runProgram(t, "dev", devConfig(t), programOptions{Root: t.TempDir()})
	require.Error(t, r.err)
	assert.Contains(t, r.err.Error(), stackconfig.KeyAllowlistPath)
	assert.Empty(t, r.aws.resources(""))
}

func TestBadConfigFailsBeforeAnyResource(t *testing.T) {
	t.Parallel()
	cfg := devConfig(t)
	delete(cfg, stackconfig.KeyEnvironment)
	cfg[stackconfig.KeyLogRetentionDays] = "8"
	r := runProgram(t, "dev", cfg, programOptions{})
	require.Error(t, r.err)
	assert.Contains(t, r.err.Error(), stackconfig.KeyEnvironment)
	assert.Contains(t, r.err.Error(), stackconfig.KeyLogRetentionDays)
	assert.Empty(t, r.aws.resources(""))
}

func TestRegionMismatchFails(t *testing.T) {
	t.Parallel()
	cfg := devConfig(t)
	aws := newFakeAWS("us-east-1") // the provider deploys elsewhere
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		_, err := declare(ctx, programOptions{Root: repoRoot(t), Prebuilt: lambdaPackages})
		return err
	}, pulumi.WithMocks(stackconfig.Namespace, "dev", aws), func(info *pulumi.RunInfo) { info.Config = cfg })
	require.Error(t, err)
	assert.Contains(t, err.Error(), stackconfig.KeyRegion)
	assert.Empty(t, aws.resources(""))
}

// TestProgramBuildsLambdas runs the program the way `pulumi up` does: it
// builds the Lambdas itself, and an unchanged Lambda keeps its hash.
func TestProgramBuildsLambdas(t *testing.T) {
	t.Parallel()
	hashes := func() map[string]string {
		r := runProgram(t, "dev", devConfig(t), programOptions{BuildDir: t.TempDir()})
		require.NoError(t, r.err)
		h := map[string]string{}
		for _, fn := range r.aws.resources(tFunction) {
			h[fn.Name] = propString(fn.Inputs, "sourceCodeHash")
		}
		return h
	}
	first, second := hashes(), hashes()
	require.Len(t, first, len(components.LambdaNames()))
	assert.Equal(t, first, second, "an unchanged Lambda has the same hash, so it is not redeployed")
	for name, art := range lambdaPackages {
		assert.Equal(t, art.SHA256, first[name], "%s: same bytes as the separately built package", name)
	}
}

func TestEveryResourceIsInsideAComponent(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	for _, x := range r.aws.resources("") {
		if x.Custom {
			assert.Contains(t, x.Parent, "iot-fleet:", "%s %s is parented to a component", x.Type, x.Name)
		}
	}
}
