package components

import (
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/infra/stackconfig"
)

// FleetArgs configure Fleet.
type FleetArgs struct {
	// Prefix is "iot-fleet-<env>".
	Prefix         string
	ThingGroupName string
	RoleAliasName  string
	// ArtifactsBucketArn is the OTA artifacts bucket devices may read.
	ArtifactsBucketArn pulumi.StringInput
	// CredentialDurationSeconds is the lifetime of the credentials the
	// role alias hands out: 900 up to the token-exchange role's
	// MaxSessionDuration (stackconfig.TokenExchangeMaxSessionSeconds,
	// which the role sets explicitly); 0 means 3600.
	CredentialDurationSeconds int
	// AdoptRetained imports the thing group an earlier destroy retained.
	AdoptRetained bool
	Tags          pulumi.StringMap
}

// Fleet is what devices belong to and act as: the environment's thing
// group, and the role alias with its token-exchange role, which lets a
// device trade its certificate for short-lived AWS credentials that can
// only read OTA artifacts.
type Fleet struct {
	pulumi.ResourceState

	ThingGroup          *iot.ThingGroup
	TokenExchangeRole   *iam.Role
	RoleAlias           *iot.RoleAlias
	ThingGroupName      pulumi.StringOutput
	ThingGroupArn       pulumi.StringOutput
	RoleAliasName       pulumi.StringOutput
	TokenExchangePolicy pulumi.StringOutput
}

// NewFleet declares Fleet.
func NewFleet(ctx *pulumi.Context, name string, args FleetArgs, opts ...pulumi.ResourceOption) (*Fleet, error) {
	duration := args.CredentialDurationSeconds
	if duration == 0 {
		duration = stackconfig.DefaultCredentialDurationSeconds
	}
	if duration < stackconfig.MinCredentialDurationSeconds || duration > stackconfig.TokenExchangeMaxSessionSeconds {
		return nil, fmt.Errorf("fleet %s: %s: %d is outside [%d, %d] (the token-exchange role's MaxSessionDuration)", name,
			stackconfig.KeyCredentialDurationSeconds, duration, stackconfig.MinCredentialDurationSeconds, stackconfig.TokenExchangeMaxSessionSeconds)
	}
	c := &Fleet{}
	if err := ctx.RegisterComponentResource("iot-fleet:fleet:Fleet", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	var err error
	if c.ThingGroup, err = iot.NewThingGroup(ctx, name+"-group", &iot.ThingGroupArgs{
		Name: pulumi.String(args.ThingGroupName),
		Properties: &iot.ThingGroupPropertiesArgs{
			Description: pulumi.String("Devices provisioned into " + args.Prefix),
		},
		Tags: args.Tags,
		// The group holds the provisioned things and is the target of
		// fleet jobs: a destroy keeps it, with its members.
	}, parent, RetainedOnDestroy(true), AdoptRetained(args.AdoptRetained, args.ThingGroupName)); err != nil {
		return nil, fmt.Errorf("thing group: %w", err)
	}
	artifacts := pulumi.StringInput(args.ArtifactsBucketArn).ToStringOutput().ApplyT(func(arn string) string { return arn + "/*" }).(pulumi.StringOutput)
	role, err := newServiceRole(ctx, name+"-token-exchange", "token-exchange", serviceRoleArgs{
		Name:        args.Prefix + "-token-exchange",
		Description: "Assumed by devices through the IoT credentials provider (role alias " + args.RoleAliasName + ")",
		Service:     "credentials.iot.amazonaws.com",
		// Set explicitly: the role alias's credential duration is
		// validated against it.
		MaxSessionDurationSeconds: stackconfig.TokenExchangeMaxSessionSeconds,
		Statements: []Statement{{
			Sid:       "ReadOTAArtifacts",
			Actions:   []string{"s3:GetObject"},
			Resources: pulumi.StringArray{artifacts},
		}},
		Tags: args.Tags,
	}, parent)
	if err != nil {
		return nil, err
	}
	c.TokenExchangeRole, c.TokenExchangePolicy = role.Role, role.Document
	if c.RoleAlias, err = iot.NewRoleAlias(ctx, name+"-role-alias", &iot.RoleAliasArgs{
		Alias:              pulumi.String(args.RoleAliasName),
		RoleArn:            c.TokenExchangeRole.Arn,
		CredentialDuration: pulumi.Int(duration),
		Tags:               args.Tags,
	}, parent, pulumi.DependsOn([]pulumi.Resource{role.Policy})); err != nil {
		return nil, fmt.Errorf("role alias: %w", err)
	}
	c.ThingGroupName, c.ThingGroupArn, c.RoleAliasName = c.ThingGroup.Name, c.ThingGroup.Arn, c.RoleAlias.Alias
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{"thingGroup": c.ThingGroupName, "roleAlias": c.RoleAliasName}); err != nil {
		return nil, err
	}
	return c, nil
}
