package components

import (
	"fmt"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
	"github.com/iot-fleet/iot-fleet/infra/stackconfig"
	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/provtemplate"
)

// Lambda names: the directory under lambdas/cmd/ and the suffix of the
// function name (iot-fleet-<env>-<name>).
const (
	LambdaPreprovision  = "preprovision"
	LambdaAllowlistSync = "allowlistsync"
	// LambdaRevoke is the emergency revoke Lambda (lambdas/revoke),
	// invoked by operators.
	LambdaRevoke = "revoke"
)

// LambdaNames are the Lambdas the stack deploys.
func LambdaNames() []string {
	return []string{LambdaPreprovision, LambdaAllowlistSync, LambdaSSMToggle, LambdaSSMRegistered, LambdaSSMExpire,
		LambdaCertRotate, LambdaCertScan, LambdaTemplateVersions, LambdaRevoke}
}

// Environment variables of the Lambdas (the contract between infra and
// lambdas/cmd/*).
const (
	EnvRegistryTable   = "REGISTRY_TABLE"
	EnvSerialPattern   = "SERIAL_PATTERN"
	EnvThingGroup      = "THING_GROUP"
	EnvDevicePolicy    = "DEVICE_POLICY"
	EnvThingNamePrefix = "THING_NAME_PREFIX"
	// EnvMaxRevocationsPerSync is the sync Lambda's revocation limit
	// (stack config maxRevocationsPerSync; unset: the Lambda's default).
	EnvMaxRevocationsPerSync = "MAX_REVOCATIONS_PER_SYNC"
)

// Hook timeout: AWS IoT waits 5 seconds for a pre-provisioning hook.
const hookTimeoutSeconds = 5

// StackArgs configure Stack.
type StackArgs struct {
	Config stackconfig.Config
	// Partition, Region and AccountID of the deployment (from the AWS
	// provider: getPartition, getRegion, getCallerIdentity).
	Partition string
	Region    string
	AccountID string
	// Lambdas are the built Lambda packages by name (LambdaNames).
	Lambdas map[string]lambdabuild.Artifact
	// AllowlistPath is the (validated) allowlist file to upload.
	AllowlistPath string
	// DataEndpoint is the account's IoT data endpoint host (iot:Data-ATS).
	DataEndpoint string
	// DeployedBy is who runs the deployment (the workflow's GITHUB_ACTOR;
	// validated by the program), set as the allowlist object's
	// deployed-by metadata when not empty.
	DeployedBy string
}

// Stack is the whole iot-fleet environment. Features add their components
// here and their outputs in Outputs.
type Stack struct {
	pulumi.ResourceState

	Storage  *Storage
	Policies *IoTPolicies
	Fleet    *Fleet
	Hook     *Function
	Sync     *Function
	// Revoke is the emergency revoke Lambda: one device, now, recorded.
	Revoke       *Function
	Provisioning *Provisioning
	Allowlist    *Allowlist
	Rules        *TopicRules
	OTA          *OTA
	SSM          *SSM
	// Rotation is certificate rotation (rotation.go).
	Rotation *Rotation
	// Indexing is fleet indexing of the agent's shadow (indexing.go).
	Indexing *Indexing
}

// NewStack declares the environment.
func NewStack(ctx *pulumi.Context, name string, args StackArgs, opts ...pulumi.ResourceOption) (*Stack, error) {
	cfg := args.Config
	for _, n := range LambdaNames() {
		if _, ok := args.Lambdas[n]; !ok {
			return nil, fmt.Errorf("stack: Lambda %q was not built", n)
		}
	}
	params := policy.Params{Partition: args.Partition, Region: args.Region, AccountID: args.AccountID, TemplateName: cfg.TemplateName()}
	body, err := provtemplate.Body(provtemplate.Params{
		ThingNamePrefix: cfg.ThingNamePrefix(),
		ThingGroup:      cfg.ThingGroup,
		DevicePolicy:    cfg.DevicePolicyName(),
	})
	if err != nil {
		return nil, err
	}

	s := &Stack{}
	if err := ctx.RegisterComponentResource("iot-fleet:index:Stack", name, s, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(s)
	tags := Tags(cfg.Environment)
	prefix := cfg.Prefix()

	if s.Storage, err = NewStorage(ctx, "storage", StorageArgs{Prefix: prefix, DeletionProtection: cfg.DeletionProtection, AdoptRetained: cfg.AdoptRetained, Tags: tags}, parent); err != nil {
		return nil, err
	}
	if s.Policies, err = NewIoTPolicies(ctx, "policies", IoTPoliciesArgs{
		Params: params, ClaimPolicyName: cfg.ClaimPolicyName(), DevicePolicyName: cfg.DevicePolicyName(),
		RoleAliasName: cfg.RoleAliasName(), AdoptRetained: cfg.AdoptRetained, Tags: tags,
	}, parent); err != nil {
		return nil, err
	}
	if s.Fleet, err = NewFleet(ctx, "fleet", FleetArgs{
		Prefix: prefix, ThingGroupName: cfg.ThingGroup, RoleAliasName: cfg.RoleAliasName(),
		ArtifactsBucketArn: s.Storage.Artifacts.Arn, CredentialDurationSeconds: cfg.CredentialDurationSeconds,
		AdoptRetained: cfg.AdoptRetained, Tags: tags,
	}, parent); err != nil {
		return nil, err
	}

	// The claim certificate first: every role that may change
	// certificates denies itself this one.
	if s.Provisioning, err = NewProvisioning(ctx, "provisioning", ProvisioningArgs{
		Prefix: prefix, TemplateName: cfg.TemplateName(), TemplateBody: body,
		Partition: args.Partition, Region: args.Region, AccountID: args.AccountID,
		ClaimPolicy:         s.Policies.Claim,
		TemplateDependsOn:   []pulumi.Resource{s.Fleet.ThingGroup, s.Policies.Device},
		SecretName:          cfg.ClaimSecretName(),
		AdoptCertificateArn: cfg.ClaimCertificateArn,
		TemplateVersions:    args.Lambdas[LambdaTemplateVersions],
		LogRetentionDays:    cfg.LogRetentionDays,
		Tags:                tags,
	}, parent); err != nil {
		return nil, err
	}
	denyClaim := DenyClaimCertificate(s.Provisioning.ClaimCertificateArn)

	lambdas := lambdaDefaults{Prefix: prefix, AccountID: args.AccountID, LogRetentionDays: cfg.LogRetentionDays, Tags: tags}
	table := pulumi.StringArray{s.Storage.RegistryArn}
	certs := params.ARN("cert", "*")
	things := params.ARN("thing", cfg.ThingNamePrefix()+"*")
	if s.Hook, err = lambdas.function(ctx, LambdaPreprovision, FunctionArgs{
		Description: "Fleet provisioning pre-provisioning hook: admits only allowlisted serials",
		Artifact:    args.Lambdas[LambdaPreprovision],
		Environment: pulumi.StringMap{
			EnvRegistryTable:   s.Storage.RegistryName,
			EnvSerialPattern:   pulumi.String(cfg.SerialPattern),
			EnvThingNamePrefix: pulumi.String(cfg.ThingNamePrefix()),
			EnvDevicePolicy:    pulumi.String(cfg.DevicePolicyName()),
		},
		Statements: []Statement{
			{Sid: "ReadAndRecordDevice", Actions: []string{"dynamodb:GetItem", "dynamodb:UpdateItem"}, Resources: table},
			// A re-admitted serial's retired certificate is revoked and
			// detached (never the claim certificate: denied below).
			{Sid: "RetireCertificates", Actions: []string{"iot:DescribeCertificate", "iot:UpdateCertificate"}, Resources: ARNs(certs)},
			{Sid: "DetachDevicePolicy", Actions: []string{"iot:DetachPolicy"}, Resources: pulumi.StringArray{pulumi.String(certs), s.Policies.Device.Arn}},
			{Sid: "DetachRetiredFromThing", Actions: []string{"iot:DetachThingPrincipal"}, Resources: ARNs(things, certs)},
			denyClaim,
		},
		TimeoutSeconds: hookTimeoutSeconds,
	}, parent); err != nil {
		return nil, err
	}

	allowlistObject := s.Storage.Config.Arn.ApplyT(func(arn string) string { return arn + "/" + AllowlistKey }).(pulumi.StringOutput)
	syncEnv := pulumi.StringMap{
		EnvRegistryTable:   s.Storage.RegistryName,
		EnvSerialPattern:   pulumi.String(cfg.SerialPattern),
		EnvThingGroup:      pulumi.String(cfg.ThingGroup),
		EnvDevicePolicy:    pulumi.String(cfg.DevicePolicyName()),
		EnvThingNamePrefix: pulumi.String(cfg.ThingNamePrefix()),
	}
	if cfg.MaxRevocationsPerSync > 0 {
		syncEnv[EnvMaxRevocationsPerSync] = pulumi.String(fmt.Sprint(cfg.MaxRevocationsPerSync))
	}
	if s.Sync, err = lambdas.function(ctx, LambdaAllowlistSync, FunctionArgs{
		Description: "Syncs allowlist.txt into the registry; revokes devices removed from it",
		Artifact:    args.Lambdas[LambdaAllowlistSync],
		Environment: syncEnv,
		Statements: append([]Statement{
			{Sid: "ReadAllowlist", Actions: []string{"s3:GetObject", "s3:GetObjectVersion"}, Resources: pulumi.StringArray{allowlistObject}},
			// Registry records, including their SSM state (internal/ssmstate).
			{Sid: "SyncRegistry", Actions: []string{"dynamodb:GetItem", "dynamodb:Scan", "dynamodb:UpdateItem"}, Resources: table},
			{Sid: "RevokeCertificates", Actions: []string{"iot:DescribeCertificate", "iot:UpdateCertificate", "iot:DetachPolicy"}, Resources: ARNs(certs)},
			// Thing actions on this environment's things only; leaving the
			// group names the thing and the group.
			{Sid: "RemoveThings", Actions: []string{"iot:ListThingPrincipals", "iot:DetachThingPrincipal", "iot:DeleteThing"}, Resources: pulumi.StringArray{pulumi.String(things)}},
			{Sid: "LeaveThingGroup", Actions: []string{"iot:RemoveThingFromThingGroup"}, Resources: pulumi.StringArray{pulumi.String(things), s.Fleet.ThingGroupArn}},
			denyClaim,
		}, SSMCleanUpStatements(args.Partition, args.Region, args.AccountID, cfg.Environment)...),
		TimeoutSeconds: 300,
		// One sync at a time: two deploys seconds apart must not act on
		// two versions of the file at once (Lambda queues the second S3
		// event and retries it).
		ReservedConcurrency: 1,
	}, parent); err != nil {
		return nil, err
	}

	// The emergency revoke: what the sync may do to one device, without
	// reading the allowlist or scanning the registry. Operators invoke it
	// (lambda:InvokeFunction on its ARN); no service may.
	if s.Revoke, err = lambdas.function(ctx, LambdaRevoke, FunctionArgs{
		Description: "Emergency revoke of one device: revokes now, records why and who, holds it out of later allowlist deploys",
		Artifact:    args.Lambdas[LambdaRevoke],
		Environment: pulumi.StringMap{
			EnvRegistryTable:   s.Storage.RegistryName,
			EnvSerialPattern:   pulumi.String(cfg.SerialPattern),
			EnvThingGroup:      pulumi.String(cfg.ThingGroup),
			EnvDevicePolicy:    pulumi.String(cfg.DevicePolicyName()),
			EnvThingNamePrefix: pulumi.String(cfg.ThingNamePrefix()),
		},
		Statements: append([]Statement{
			// Registry records, including their SSM state (internal/ssmstate).
			{Sid: "RevokeInRegistry", Actions: []string{"dynamodb:GetItem", "dynamodb:UpdateItem"}, Resources: table},
			{Sid: "RevokeCertificates", Actions: []string{"iot:DescribeCertificate", "iot:UpdateCertificate", "iot:DetachPolicy"}, Resources: ARNs(certs)},
			// Thing actions on this environment's things only; leaving the
			// group names the thing and the group.
			{Sid: "RemoveThing", Actions: []string{"iot:ListThingPrincipals", "iot:DetachThingPrincipal", "iot:DeleteThing"}, Resources: pulumi.StringArray{pulumi.String(things)}},
			{Sid: "LeaveThingGroup", Actions: []string{"iot:RemoveThingFromThingGroup"}, Resources: pulumi.StringArray{pulumi.String(things), s.Fleet.ThingGroupArn}},
			denyClaim,
		}, SSMCleanUpStatements(args.Partition, args.Region, args.AccountID, cfg.Environment)...),
		TimeoutSeconds: 60,
	}, parent); err != nil {
		return nil, err
	}

	if err := s.Provisioning.DeclareTemplate(ctx, s.Hook); err != nil {
		return nil, err
	}

	if s.Allowlist, err = NewAllowlist(ctx, "allowlist", AllowlistArgs{
		Path:   args.AllowlistPath,
		Bucket: s.Storage.Config, Sync: s.Sync, AccountID: args.AccountID,
		ConfirmRevocations: cfg.AllowlistConfirmRevocations, DeployedBy: args.DeployedBy,
	}, parent); err != nil {
		return nil, err
	}

	// Roles AWS IoT assumes require this account and region's IoT as the
	// source (IoT's confused-deputy guidance).
	iotSource := IoTSourceArn(args.Partition, args.Region, args.AccountID)
	if s.Rules, err = NewTopicRules(ctx, "rules", TopicRulesArgs{
		Prefix: prefix, AccountID: args.AccountID, SourceArn: iotSource, LogRetentionDays: cfg.LogRetentionDays, Tags: tags,
		Rules: []LogRule{{
			Name:        "device-status",
			Description: "Agent status messages (version, uptime) published on connect, with the sending thing and receive time",
			SQL:         fmt.Sprintf("SELECT *, topic(3) AS thingName, timestamp() AS receivedAt FROM '%s'", protocol.DataTopic("+", protocol.KindStatus)),
		}},
	}, parent); err != nil {
		return nil, err
	}

	if s.OTA, err = NewOTA(ctx, "ota", OTAArgs{
		Prefix: prefix, AccountID: args.AccountID, SourceArn: iotSource, ArtifactsBucketArn: s.Storage.Artifacts.Arn, Tags: tags,
	}, parent); err != nil {
		return nil, err
	}

	if s.SSM, err = NewSSM(ctx, "ssm", SSMArgs{
		Prefix: prefix, Environment: cfg.Environment, ThingNamePrefix: cfg.ThingNamePrefix(), SerialPattern: cfg.SerialPattern,
		Partition: args.Partition, Region: args.Region, AccountID: args.AccountID, DataEndpoint: args.DataEndpoint,
		Toggle: args.Lambdas[LambdaSSMToggle], Registered: args.Lambdas[LambdaSSMRegistered], Expire: args.Lambdas[LambdaSSMExpire],
		RegistryName: s.Storage.RegistryName, RegistryArn: s.Storage.RegistryArn, ThingGroupArn: s.Fleet.ThingGroupArn,
		ActivationExpiryHours: cfg.SSMActivationExpiryHours, LogRetentionDays: cfg.LogRetentionDays, Tags: tags,
	}, parent); err != nil {
		return nil, err
	}

	if s.Rotation, err = NewRotation(ctx, "rotation", RotationArgs{
		Prefix: prefix, ThingNamePrefix: cfg.ThingNamePrefix(),
		Partition: args.Partition, Region: args.Region, AccountID: args.AccountID, DataEndpoint: args.DataEndpoint,
		CertRotate: args.Lambdas[LambdaCertRotate], CertScan: args.Lambdas[LambdaCertScan],
		RegistryName: s.Storage.RegistryName, RegistryArn: s.Storage.RegistryArn,
		DevicePolicyName: cfg.DevicePolicyName(), DevicePolicyArn: s.Policies.Device.Arn,
		ThingGroupArn: s.Fleet.ThingGroupArn, ExpiryWindowDays: cfg.CertExpiryWindowDays,
		ClaimCertificateArn: s.Provisioning.ClaimCertificateArn,
		RuleRoleArn:         s.Rules.Role.Arn, ErrorLogGroupName: s.Rules.ErrorLogGroup.Name,
		LogRetentionDays: cfg.LogRetentionDays, Tags: tags,
	}, parent); err != nil {
		return nil, err
	}

	if s.Indexing, err = NewIndexing(ctx, "indexing", parent); err != nil {
		return nil, err
	}

	if err := ctx.RegisterResourceOutputs(s, s.Outputs()); err != nil {
		return nil, err
	}
	return s, nil
}

// Outputs are the stack outputs that come from resources (the program adds
// the IoT endpoints).
func (s *Stack) Outputs() pulumi.Map {
	return pulumi.Map{
		"provisioningTemplate":      s.Provisioning.TemplateName,
		"claimCertificateArn":       s.Provisioning.ClaimCertificateArn,
		"claimCertificateSecretArn": s.Provisioning.ClaimSecretArn,
		"claimPrivateKey":           s.Provisioning.ClaimPrivateKey,
		"claimPolicy":               s.Policies.Claim.Name,
		"devicePolicy":              s.Policies.Device.Name,
		"thingGroup":                s.Fleet.ThingGroupName,
		"roleAlias":                 s.Fleet.RoleAliasName,
		"artifactsBucket":           s.Storage.Artifacts.Name,
		"configBucket":              s.Storage.Config.Name,
		"imagesBucket":              s.Storage.Images.Name,
		"allowlistKey":              pulumi.String(s.Allowlist.Key),
		"registryTable":             s.Storage.RegistryName,
		"preprovisionLambda":        s.Hook.Name,
		"allowlistSyncLambda":       s.Sync.Name,
		"revokeLambda":              s.Revoke.Name,
		"ruleErrorLogGroup":         s.Rules.ErrorLogGroup.Name,
		"otaPresignRoleArn":         s.OTA.PresignRoleArn,
		"ssmToggleLambda":           s.SSM.Toggle.Name,
		"ssmManagedInstanceRole":    s.SSM.ManagedInstanceRoleName,
		"certRotateLambda":          s.Rotation.Rotate.Name,
		"certScanLambda":            s.Rotation.Scan.Name,
		"thingGroupArn":             s.Fleet.ThingGroupArn,
		"registryTableArn":          s.Storage.RegistryArn,
		"ssmRegisteredLambda":       s.SSM.Registered.Name,
		"ssmExpireLambda":           s.SSM.Expire.Name,
		"templateVersionsLambda":    s.Provisioning.Pruner.Name,
		"provisioningRoleArn":       s.Provisioning.ProvisioningRole.Arn,
		"tokenExchangeRoleArn":      s.Fleet.TokenExchangeRole.Arn,
		"roleAliasArn":              s.Fleet.RoleAlias.Arn,
	}
}
