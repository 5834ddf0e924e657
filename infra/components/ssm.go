package components

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/cloudwatch"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lambda"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ssm"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmregistered"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

// Lambda names of SSM on demand (directories under lambdas/cmd/).
const (
	LambdaSSMToggle     = "ssmtoggle"
	LambdaSSMRegistered = "ssmregistered"
	LambdaSSMExpire     = "ssmexpire"
)

// Environment variables of the SSM Lambdas (lambdas/cmd/ssm*; the data
// endpoint is EnvIoTDataEndpoint).
const (
	EnvManagedInstanceRole   = "MANAGED_INSTANCE_ROLE"
	EnvEnvironment           = "ENVIRONMENT"
	EnvActivationExpiryHours = "ACTIVATION_EXPIRY_HOURS"
)

// SSM schedule and policies.
const (
	// SSMExpireScheduleExpression runs the activation sweep every hour.
	SSMExpireScheduleExpression = "rate(1 hour)"
	// SSMInventoryScheduleExpression re-runs the inventory association
	// (the fallback registration event) on the stack's managed nodes.
	SSMInventoryScheduleExpression = "rate(30 minutes)"
)

// ManagedNodeStatements are the managed-instance role's permissions: what
// the SSM Agent on a device registered with an activation needs for
// Session Manager and for the stack's inventory association, instead of
// the AWS managed AmazonSSMManagedInstanceCore (which also grants
// ssm:GetParameter* on every parameter, patch snapshots, package results
// and more). The credentials are issued by SSM to the registered node
// only (trust: ssm.amazonaws.com for this account). The agent-facing
// actions below are granted on "*": the node names no other resource in
// them, and SSM binds each call to the calling node. Justified one by one
// in docs/ssm.md (IAM of the managed node).
func ManagedNodeStatements(partition, region string) []Statement {
	anyResource := pulumi.StringArray{pulumi.String("*")}
	inventoryDocument := fmt.Sprintf("arn:%s:ssm:%s::document/%s", partition, region, SSMInventoryDocument)
	return []Statement{
		// The agent reports its node's details and ping (Online) status;
		// Session Manager only connects to an online node.
		{Sid: "AgentHeartbeat", Actions: []string{"ssm:UpdateInstanceInformation"}, Resources: anyResource},
		// Session Manager: the agent's control channel (session requests)
		// and data channels (the shell's input and output).
		{Sid: "SessionManagerChannels", Actions: []string{
			"ssmmessages:CreateControlChannel", "ssmmessages:OpenControlChannel",
			"ssmmessages:CreateDataChannel", "ssmmessages:OpenDataChannel",
		}, Resources: anyResource},
		// The agent's message delivery (documents sent to the node, e.g.
		// Run Command, and their replies).
		{Sid: "AgentMessages", Actions: []string{
			"ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:AcknowledgeMessage",
			"ec2messages:SendReply", "ec2messages:FailMessage", "ec2messages:DeleteMessage",
		}, Resources: anyResource},
		// State Manager: the node lists its associations (the stack's
		// inventory association, the fallback registration event), reports
		// their status and uploads the inventory they gather.
		{Sid: "OwnAssociations", Actions: []string{
			"ssm:ListInstanceAssociations", "ssm:DescribeAssociation", "ssm:UpdateInstanceAssociationStatus", "ssm:PutInventory",
		}, Resources: anyResource},
		// ...and reads only the document that association runs.
		{Sid: "InventoryDocument", Actions: []string{"ssm:GetDocument", "ssm:DescribeDocument"}, Resources: ARNs(inventoryDocument)},
	}
}

// SSMInventoryDocument is the AWS-owned document of the stack's inventory
// association.
const SSMInventoryDocument = "AWS-GatherSoftwareInventory"

// SSMManagedInstanceRoleName is the IAM role the managed nodes of
// "iot-fleet-<env>" get (sim/stack uses the same name).
func SSMManagedInstanceRoleName(prefix string) string { return prefix + "-ssm-managed-instance" }

// SSMRegistrationEventPattern is the EventBridge pattern of the
// registration events the registered Lambda handles (docs/ssm.md).
func SSMRegistrationEventPattern() string {
	b, _ := json.Marshal(map[string][]string{ // strings only: cannot fail
		"source":      {ssmregistered.Source},
		"detail-type": {ssmregistered.DetailTypeRegistration, ssmregistered.DetailTypeAssociationOK},
	})
	return string(b)
}

// managedNodesARN covers the account's SSM managed nodes in the region.
func managedNodesARN(partition, region, account string) string {
	return fmt.Sprintf("arn:%s:ssm:%s:%s:managed-instance/*", partition, region, account)
}

// SSMCleanUpStatements let a Lambda turn SSM off for a device: delete its
// activation and find its node (DeleteActivation and
// DescribeInstanceInformation have no resource type in the SSM
// authorization reference, hence "*"), and deregister managed nodes
// tagged for this project and environment only.
func SSMCleanUpStatements(partition, region, account, environment string) []Statement {
	ours := map[string]map[string]any{"StringEquals": {
		"ssm:resourceTag/" + ssmtoggle.TagProject:     ssmtoggle.ProjectName,
		"ssm:resourceTag/" + ssmtoggle.TagEnvironment: environment,
	}}
	return []Statement{
		{Sid: "DeleteActivationsFindNodes", Actions: []string{"ssm:DeleteActivation", "ssm:DescribeInstanceInformation"}, Resources: pulumi.StringArray{pulumi.String("*")}},
		{Sid: "DeregisterOwnNodes", Actions: []string{"ssm:DeregisterManagedInstance"}, Resources: ARNs(managedNodesARN(partition, region, account)), Condition: ours},
	}
}

// SSMArgs configure SSM.
type SSMArgs struct {
	// Prefix is "iot-fleet-<env>"; Environment "dev"/"prod";
	// ThingNamePrefix "<env>-"; SerialPattern the stack's serial pattern.
	Prefix          string
	Environment     string
	ThingNamePrefix string
	SerialPattern   string
	Partition       string
	Region          string
	AccountID       string
	// DataEndpoint is the account's IoT data endpoint host (iot:Data-ATS).
	DataEndpoint string
	// Toggle, Registered and Expire are the built Lambda packages.
	Toggle     lambdabuild.Artifact
	Registered lambdabuild.Artifact
	Expire     lambdabuild.Artifact
	// Registry table name and ARN (the SSM state lives in its items).
	RegistryName pulumi.StringInput
	RegistryArn  pulumi.StringOutput
	// ThingGroupArn: the group an operator may toggle at once.
	ThingGroupArn pulumi.StringInput
	// ActivationExpiryHours is the activations' lifetime
	// (ssmActivationExpiryHours).
	ActivationExpiryHours int
	LogRetentionDays      int
	Tags                  pulumi.StringMap
}

// SSM is AWS Systems Manager on demand in the cloud (docs/ssm.md): the
// managed-instance role, the toggle Lambda, the registered Lambda behind an
// EventBridge rule on the SSM registration events (and the inventory
// association that produces the fallback event on the stack's nodes), and
// the expiry sweep Lambda with its hourly EventBridge Scheduler schedule.
type SSM struct {
	pulumi.ResourceState

	ManagedInstanceRole *iam.Role
	// ManagedInstancePolicy is the role's inline policy document
	// (ManagedNodeStatements).
	ManagedInstancePolicy pulumi.StringOutput
	// ManagedInstanceRoleName is the stack output ssmManagedInstanceRole.
	ManagedInstanceRoleName pulumi.StringOutput
	Toggle                  *Function
	Registered              *Function
	Expire                  *Function
	Rule                    *cloudwatch.EventRule
	Target                  *cloudwatch.EventTarget
	Permission              *lambda.Permission
	Inventory               *ssm.Association
	// InvokeSchedule runs the expiry sweep hourly.
	InvokeSchedule
}

// NewSSM declares SSM.
func NewSSM(ctx *pulumi.Context, name string, args SSMArgs, opts ...pulumi.ResourceOption) (*SSM, error) {
	if args.Prefix == "" || args.Environment == "" || args.ThingNamePrefix == "" || args.DataEndpoint == "" ||
		args.ThingGroupArn == nil || args.ActivationExpiryHours < 1 || args.ActivationExpiryHours > 720 {
		return nil, fmt.Errorf("ssm %s: Prefix, Environment, ThingNamePrefix, DataEndpoint, ThingGroupArn and ActivationExpiryHours (1-720) are required", name)
	}
	c := &SSM{}
	if err := ctx.RegisterComponentResource("iot-fleet:ssm:SSM", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	roleName := SSMManagedInstanceRoleName(args.Prefix)
	roleArn := fmt.Sprintf("arn:%s:iam::%s:role/%s", args.Partition, args.AccountID, roleName)
	// DeregisterManagedInstance and ListTagsForResource name managed
	// nodes; the activation actions and the Describe* reads have no
	// resource type in the SSM authorization reference, so they need
	// "*" (CreateActivation is pinned by its request tags instead).
	nodes := managedNodesARN(args.Partition, args.Region, args.AccountID)
	anyResource := pulumi.StringArray{pulumi.String("*")}
	table := pulumi.StringArray{args.RegistryArn}
	// The toggle and the registered Lambda both record SSM state, delete
	// activations and deregister this stack's stray nodes.
	ssmState := Statement{Sid: "SSMState", Actions: []string{"dynamodb:GetItem", "dynamodb:UpdateItem"}, Resources: table}
	cleanUp := SSMCleanUpStatements(args.Partition, args.Region, args.AccountID, args.Environment)

	lambdas := lambdaDefaults{Prefix: args.Prefix, AccountID: args.AccountID, LogRetentionDays: args.LogRetentionDays, Tags: args.Tags}

	var err error
	if c.ManagedInstanceRole, err = iam.NewRole(ctx, name+"-managed-instance", &iam.RoleArgs{
		Name:             pulumi.String(roleName),
		Description:      pulumi.String("Assumed by Systems Manager for the devices registered with an SSM-on-demand activation"),
		AssumeRolePolicy: pulumi.String(AssumeRolePolicy("ssm.amazonaws.com", args.AccountID, fmt.Sprintf("arn:%s:ssm:%s:%s:*", args.Partition, args.Region, args.AccountID))),
		Tags:             args.Tags,
	}, parent); err != nil {
		return nil, fmt.Errorf("ssm managed-instance role: %w", err)
	}
	c.ManagedInstancePolicy = PolicyDocument(ManagedNodeStatements(args.Partition, args.Region)...)
	if _, err := iam.NewRolePolicy(ctx, name+"-managed-instance", &iam.RolePolicyArgs{
		Role:   c.ManagedInstanceRole.ID(),
		Policy: c.ManagedInstancePolicy,
	}, parent); err != nil {
		return nil, fmt.Errorf("ssm managed-instance role policy: %w", err)
	}
	c.ManagedInstanceRoleName = c.ManagedInstanceRole.Name

	if c.Toggle, err = lambdas.function(ctx, LambdaSSMToggle, FunctionArgs{
		Description: "SSM on demand: activates or deactivates Systems Manager on a device or a thing group",
		Artifact:    args.Toggle,
		Environment: pulumi.StringMap{
			EnvRegistryTable:         args.RegistryName,
			EnvManagedInstanceRole:   pulumi.String(roleName),
			EnvEnvironment:           pulumi.String(args.Environment),
			EnvThingNamePrefix:       pulumi.String(args.ThingNamePrefix),
			EnvIoTDataEndpoint:       pulumi.String(args.DataEndpoint),
			EnvSerialPattern:         pulumi.String(args.SerialPattern),
			EnvActivationExpiryHours: pulumi.String(fmt.Sprint(args.ActivationExpiryHours)),
		},
		Statements: slices.Concat([]Statement{
			ssmState,
			{
				Sid: "CreateTaggedActivation", Actions: []string{"ssm:CreateActivation", "ssm:AddTagsToResource"}, Resources: anyResource,
				Condition: map[string]map[string]any{
					"StringEquals": {
						"aws:RequestTag/" + ssmtoggle.TagProject:     ssmtoggle.ProjectName,
						"aws:RequestTag/" + ssmtoggle.TagEnvironment: args.Environment,
					},
					"ForAllValues:StringEquals": {"aws:TagKeys": []string{
						ssmtoggle.TagProject, ssmtoggle.TagEnvironment, ssmtoggle.TagThingName, ssmtoggle.TagSerial,
					}},
				},
			},
			{
				Sid: "PassManagedInstanceRole", Actions: []string{"iam:PassRole"}, Resources: ARNs(roleArn),
				Condition: map[string]map[string]any{"StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}},
			},
		}, cleanUp, []Statement{
			{Sid: "SendCommand", Actions: []string{"iot:Publish"}, Resources: ARNs(iotARN(args.Partition, args.Region, args.AccountID, "topic", protocol.CommandTopic(args.ThingNamePrefix+"*", protocol.KindSSM)))},
			{Sid: "ListGroup", Actions: []string{"iot:ListThingsInThingGroup"}, Resources: pulumi.StringArray{args.ThingGroupArn}},
		}),
		TimeoutSeconds: 300,
	}, parent); err != nil {
		return nil, err
	}

	if c.Registered, err = lambdas.function(ctx, LambdaSSMRegistered, FunctionArgs{
		Description: "SSM on demand: records a device's managed node when it registered; deregisters stray nodes of this stack",
		Artifact:    args.Registered,
		Environment: pulumi.StringMap{
			EnvRegistryTable:   args.RegistryName,
			EnvEnvironment:     pulumi.String(args.Environment),
			EnvThingNamePrefix: pulumi.String(args.ThingNamePrefix),
		},
		Statements: append([]Statement{
			ssmState,
			{Sid: "ReadNodeTags", Actions: []string{"ssm:ListTagsForResource"}, Resources: ARNs(nodes)},
		}, cleanUp...),
		TimeoutSeconds: 60,
	}, parent); err != nil {
		return nil, err
	}

	if c.Expire, err = lambdas.function(ctx, LambdaSSMExpire, FunctionArgs{
		Description: "SSM on demand: deletes expired or used activations and resets stale activating records (hourly)",
		Artifact:    args.Expire,
		Environment: pulumi.StringMap{
			EnvRegistryTable:       args.RegistryName,
			EnvManagedInstanceRole: pulumi.String(roleName),
			EnvEnvironment:         pulumi.String(args.Environment),
			EnvThingNamePrefix:     pulumi.String(args.ThingNamePrefix),
		},
		Statements: []Statement{
			{Sid: "SSMState", Actions: []string{"dynamodb:GetItem", "dynamodb:Scan", "dynamodb:UpdateItem"}, Resources: table},
			{Sid: "SweepActivations", Actions: []string{"ssm:DescribeActivations", "ssm:DeleteActivation"}, Resources: anyResource},
		},
		TimeoutSeconds: 300,
	}, parent); err != nil {
		return nil, err
	}

	// Registration events → the registered Lambda.
	if c.Rule, err = cloudwatch.NewEventRule(ctx, name+"-registered", &cloudwatch.EventRuleArgs{
		Name:         pulumi.String(args.Prefix + "-ssm-registered"),
		Description:  pulumi.String("SSM managed node registrations (and the inventory association's first run) for the registered Lambda"),
		EventPattern: pulumi.String(SSMRegistrationEventPattern()),
		Tags:         args.Tags,
	}, parent); err != nil {
		return nil, fmt.Errorf("ssm registration rule: %w", err)
	}
	if c.Permission, err = lambda.NewPermission(ctx, name+"-registered-invoke", &lambda.PermissionArgs{
		Action:        pulumi.String("lambda:InvokeFunction"),
		Function:      c.Registered.Name,
		Principal:     pulumi.String("events.amazonaws.com"),
		SourceArn:     c.Rule.Arn,
		SourceAccount: pulumi.String(args.AccountID),
	}, parent); err != nil {
		return nil, fmt.Errorf("ssm registration rule permission: %w", err)
	}
	if c.Target, err = cloudwatch.NewEventTarget(ctx, name+"-registered", &cloudwatch.EventTargetArgs{
		Rule:        c.Rule.Name,
		TargetId:    pulumi.String(LambdaSSMRegistered),
		Arn:         c.Registered.Arn,
		RetryPolicy: &cloudwatch.EventTargetRetryPolicyArgs{MaximumRetryAttempts: pulumi.Int(8), MaximumEventAgeInSeconds: pulumi.Int(3600)},
	}, parent, pulumi.DependsOn([]pulumi.Resource{c.Permission})); err != nil {
		return nil, fmt.Errorf("ssm registration rule target: %w", err)
	}
	// The reference design's event source: inventory on the stack's
	// nodes only (their tags come from the activation).
	if c.Inventory, err = ssm.NewAssociation(ctx, name+"-inventory", &ssm.AssociationArgs{
		AssociationName:    pulumi.String(args.Prefix + "-ssm-inventory"),
		Name:               pulumi.String(SSMInventoryDocument),
		ScheduleExpression: pulumi.String(SSMInventoryScheduleExpression),
		Targets: ssm.AssociationTargetArray{
			&ssm.AssociationTargetArgs{Key: pulumi.String("tag:" + ssmtoggle.TagProject), Values: pulumi.StringArray{pulumi.String(ssmtoggle.ProjectName)}},
			&ssm.AssociationTargetArgs{Key: pulumi.String("tag:" + ssmtoggle.TagEnvironment), Values: pulumi.StringArray{pulumi.String(args.Environment)}},
		},
		Tags: args.Tags,
	}, parent); err != nil {
		return nil, fmt.Errorf("ssm inventory association: %w", err)
	}

	// Hourly sweep (EventBridge Scheduler, as the rotation scan).
	if c.InvokeSchedule, err = newInvokeSchedule(ctx, name+"-schedule", name+"-expire", "ssm schedule", invokeScheduleArgs{
		Prefix: args.Prefix, Name: LambdaSSMExpire, AccountID: args.AccountID,
		Description:     "Hourly sweep of unused or expired SSM activations",
		RoleDescription: "Assumed by EventBridge Scheduler to run the hourly SSM activation sweep",
		Expression:      SSMExpireScheduleExpression,
		Target:          c.Expire, Sid: "InvokeSweep", Tags: args.Tags,
	}, parent); err != nil {
		return nil, err
	}

	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{
		"ssmToggleLambda": c.Toggle.Name, "ssmManagedInstanceRole": c.ManagedInstanceRoleName, "ssmRegistrationRule": c.Rule.Name,
	}); err != nil {
		return nil, err
	}
	return c, nil
}
