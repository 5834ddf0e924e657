package components

import (
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lambda"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
)

// Lambda names of certificate rotation (directories under lambdas/cmd/).
const (
	LambdaCertRotate = "certrotate"
	LambdaCertScan   = "certscan"
)

// Environment variables of the rotation Lambdas.
const (
	EnvIoTDataEndpoint  = "IOT_DATA_ENDPOINT"
	EnvExpiryWindowDays = "EXPIRY_WINDOW_DAYS"
)

// RotationScheduleExpression runs the expiry scan once a day.
const RotationScheduleExpression = "rate(1 day)"

// RotationArgs configure Rotation.
type RotationArgs struct {
	// Prefix is "iot-fleet-<env>"; ThingNamePrefix "<env>-".
	Prefix          string
	ThingNamePrefix string
	Partition       string
	Region          string
	AccountID       string
	// DataEndpoint is the account's IoT data endpoint host.
	DataEndpoint string
	// CertRotate and CertScan are the built Lambda packages.
	CertRotate lambdabuild.Artifact
	CertScan   lambdabuild.Artifact
	// Registry table name and ARN.
	RegistryName pulumi.StringInput
	RegistryArn  pulumi.StringOutput
	// DevicePolicyName and DevicePolicyArn: attached to new certificates.
	DevicePolicyName string
	DevicePolicyArn  pulumi.StringInput
	// ThingGroupArn: the group an operator may rotate at once.
	ThingGroupArn pulumi.StringInput
	// ClaimCertificateArn is explicitly denied to the rotation Lambda
	// (DenyClaimCertificate): rotation never revokes or deletes it.
	ClaimCertificateArn pulumi.StringInput
	// ExpiryWindowDays: the scan rotates certificates expiring within it.
	ExpiryWindowDays int
	// RuleRoleArn and ErrorLogGroupName: the topic rules' role and shared
	// error log group (TopicRules), used by the rotation rule's error
	// action.
	RuleRoleArn       pulumi.StringInput
	ErrorLogGroupName pulumi.StringInput
	LogRetentionDays  int
	Tags              pulumi.StringMap
}

// Rotation is certificate rotation in the cloud: the rotation Lambda and
// the topic rule that invokes it with the devices' rotation messages, the
// scan Lambda and its daily EventBridge Scheduler schedule (with a role
// that may invoke only that Lambda).
type Rotation struct {
	pulumi.ResourceState

	Rotate     *Function
	Scan       *Function
	Rule       *iot.TopicRule
	Permission *lambda.Permission
	// InvokeSchedule runs the scan daily.
	InvokeSchedule
}

// RotationRuleName is the topic rule's name.
func RotationRuleName(prefix string) string { return TopicRuleName(prefix, LogRule{Name: "rotation"}) }

// NewRotation declares Rotation.
func NewRotation(ctx *pulumi.Context, name string, args RotationArgs, opts ...pulumi.ResourceOption) (*Rotation, error) {
	if args.Prefix == "" || args.ThingNamePrefix == "" || args.DevicePolicyName == "" || args.ExpiryWindowDays <= 0 || args.ClaimCertificateArn == nil {
		return nil, fmt.Errorf("rotation %s: Prefix, ThingNamePrefix, DevicePolicyName, ExpiryWindowDays and ClaimCertificateArn are required", name)
	}
	c := &Rotation{}
	if err := ctx.RegisterComponentResource("iot-fleet:rotation:Rotation", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	arn := func(kind, res string) string { return iotARN(args.Partition, args.Region, args.AccountID, kind, res) }
	certs := arn("cert", "*")
	things := arn("thing", args.ThingNamePrefix+"*")
	table := pulumi.StringArray{args.RegistryArn}
	index := args.RegistryArn.ApplyT(func(a string) string { return a + "/index/" + registry.ExpiryIndex }).(pulumi.StringOutput)

	lambdas := lambdaDefaults{Prefix: args.Prefix, AccountID: args.AccountID, LogRetentionDays: args.LogRetentionDays, Tags: args.Tags}
	var err error
	if c.Rotate, err = lambdas.function(ctx, LambdaCertRotate, FunctionArgs{
		Description: "Certificate rotation: issues the certificate for a device's CSR, retires the old one once the device confirmed",
		Artifact:    args.CertRotate,
		Environment: pulumi.StringMap{
			EnvRegistryTable:   args.RegistryName,
			EnvDevicePolicy:    pulumi.String(args.DevicePolicyName),
			EnvThingNamePrefix: pulumi.String(args.ThingNamePrefix),
			EnvIoTDataEndpoint: pulumi.String(args.DataEndpoint),
		},
		Statements: []Statement{
			{Sid: "RecordRotation", Actions: []string{"dynamodb:GetItem", "dynamodb:UpdateItem"}, Resources: table},
			// CreateCertificateFromCsr has no resource-level permission.
			{Sid: "IssueCertificate", Actions: []string{"iot:CreateCertificateFromCsr"}, Resources: pulumi.StringArray{pulumi.String("*")}},
			{Sid: "ManageCertificates", Actions: []string{"iot:DescribeCertificate", "iot:UpdateCertificate", "iot:DeleteCertificate"}, Resources: ARNs(certs)},
			{Sid: "DevicePolicy", Actions: []string{"iot:AttachPolicy", "iot:DetachPolicy"}, Resources: pulumi.StringArray{pulumi.String(certs), args.DevicePolicyArn}},
			{Sid: "ThingPrincipal", Actions: []string{"iot:AttachThingPrincipal", "iot:DetachThingPrincipal"}, Resources: ARNs(things, certs)},
			{Sid: "SendCertificate", Actions: []string{"iot:Publish"}, Resources: ARNs(arn("topic", protocol.CommandTopic("*", protocol.KindRotateCert)))},
			DenyClaimCertificate(args.ClaimCertificateArn),
		},
		TimeoutSeconds: 60,
	}, parent); err != nil {
		return nil, err
	}
	if c.Scan, err = lambdas.function(ctx, LambdaCertScan, FunctionArgs{
		Description: "Finds certificates expiring within the window (daily) or the devices an operator names, and asks them to rotate",
		Artifact:    args.CertScan,
		Environment: pulumi.StringMap{
			EnvRegistryTable:    args.RegistryName,
			EnvThingNamePrefix:  pulumi.String(args.ThingNamePrefix),
			EnvExpiryWindowDays: pulumi.String(fmt.Sprint(args.ExpiryWindowDays)),
			EnvIoTDataEndpoint:  pulumi.String(args.DataEndpoint),
		},
		Statements: []Statement{
			{Sid: "QueryExpiryIndex", Actions: []string{"dynamodb:Query"}, Resources: pulumi.StringArray{index}},
			{Sid: "RecordRotation", Actions: []string{"dynamodb:GetItem", "dynamodb:UpdateItem"}, Resources: table},
			{Sid: "ListGroup", Actions: []string{"iot:ListThingsInThingGroup"}, Resources: pulumi.StringArray{args.ThingGroupArn}},
			{Sid: "AskToRotate", Actions: []string{"iot:Publish"}, Resources: ARNs(arn("topic", protocol.CommandTopic("*", protocol.KindRotateRequest)))},
		},
		TimeoutSeconds: 900,
	}, parent); err != nil {
		return nil, err
	}

	ruleName := RotationRuleName(args.Prefix)
	ruleArn := arn("rule", ruleName)
	if c.Permission, err = lambda.NewPermission(ctx, name+"-rule-invoke", &lambda.PermissionArgs{
		Action:        pulumi.String("lambda:InvokeFunction"),
		Function:      c.Rotate.Name,
		Principal:     pulumi.String("iot.amazonaws.com"),
		SourceArn:     pulumi.String(ruleArn),
		SourceAccount: pulumi.String(args.AccountID),
	}, parent); err != nil {
		return nil, fmt.Errorf("rotation rule permission: %w", err)
	}
	if c.Rule, err = iot.NewTopicRule(ctx, name+"-rule", &iot.TopicRuleArgs{
		Name:        pulumi.String(ruleName),
		Description: pulumi.String("Certificate rotation messages (CSR, confirmation) to the rotation Lambda; thing name from the topic"),
		Enabled:     pulumi.Bool(true),
		Sql:         pulumi.String(certrotate.RuleSQL),
		SqlVersion:  pulumi.String(topicRuleSQLVersion),
		Lambdas:     iot.TopicRuleLambdaArray{&iot.TopicRuleLambdaArgs{FunctionArn: c.Rotate.Arn}},
		ErrorAction: &iot.TopicRuleErrorActionArgs{
			CloudwatchLogs: &iot.TopicRuleErrorActionCloudwatchLogsArgs{LogGroupName: args.ErrorLogGroupName, RoleArn: args.RuleRoleArn},
		},
		Tags: args.Tags,
	}, parent, pulumi.DependsOn([]pulumi.Resource{c.Permission})); err != nil {
		return nil, fmt.Errorf("rotation rule: %w", err)
	}

	if c.InvokeSchedule, err = newInvokeSchedule(ctx, name+"-schedule", name+"-scan", "rotation schedule", invokeScheduleArgs{
		Prefix: args.Prefix, Name: LambdaCertScan, AccountID: args.AccountID,
		Description:     "Daily scan for device certificates expiring within the window",
		RoleDescription: "Assumed by EventBridge Scheduler to run the daily certificate-expiry scan",
		Expression:      RotationScheduleExpression,
		Target:          c.Scan, Sid: "InvokeScan", Tags: args.Tags,
	}, parent); err != nil {
		return nil, err
	}
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{
		"certRotateLambda": c.Rotate.Name, "certScanLambda": c.Scan.Name, "rotationRule": c.Rule.Name,
	}); err != nil {
		return nil, err
	}
	return c, nil
}
