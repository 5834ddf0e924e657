package components

import (
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/cloudwatch"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lambda"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
)

// Lambda runtime settings shared by every function of the stack.
const (
	LambdaRuntime      = "provided.al2023"
	LambdaArchitecture = "arm64"
	LambdaHandler      = lambdabuild.BootstrapName
)

// FunctionArgs configure a Function.
type FunctionArgs struct {
	// FunctionName is the full Lambda name, e.g. "iot-fleet-dev-preprovision".
	FunctionName string
	// AccountID: only Lambda on behalf of this account may assume the
	// function's role (aws:SourceAccount).
	AccountID   string
	Description string
	// Artifact is the built bootstrap zip.
	Artifact lambdabuild.Artifact
	// Environment variables of the function.
	Environment pulumi.StringMap
	// Statements are the function's permissions beyond writing its own
	// logs. Name specific resources; never "*".
	Statements       []Statement
	TimeoutSeconds   int
	MemoryMB         int
	LogRetentionDays int
	// ReservedConcurrency, when positive, caps concurrent invocations
	// (1: one at a time, e.g. the allowlist sync, so two deploys seconds
	// apart cannot act on different versions of the file at once).
	ReservedConcurrency int
	Tags                pulumi.StringMap
}

// Function is a Go Lambda (provided.al2023, arm64) with its own IAM role,
// a least-privilege inline policy, and a log group with retention.
type Function struct {
	pulumi.ResourceState

	Function *lambda.Function
	Role     *iam.Role
	LogGroup *cloudwatch.LogGroup
	// Policy is the role's inline policy document.
	Policy pulumi.StringOutput
	Name   pulumi.StringOutput
	Arn    pulumi.StringOutput
}

// NewFunction declares a Function.
func NewFunction(ctx *pulumi.Context, name string, args FunctionArgs, opts ...pulumi.ResourceOption) (*Function, error) {
	if args.FunctionName == "" || args.AccountID == "" || args.Artifact.ZipPath == "" || args.Artifact.SHA256 == "" {
		return nil, fmt.Errorf("function %s: FunctionName, AccountID and a built Artifact are required", name)
	}
	c := &Function{}
	if err := ctx.RegisterComponentResource("iot-fleet:lambda:Function", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	var err error
	if c.LogGroup, err = cloudwatch.NewLogGroup(ctx, name, &cloudwatch.LogGroupArgs{
		Name:            pulumi.String("/aws/lambda/" + args.FunctionName),
		RetentionInDays: pulumi.Int(args.LogRetentionDays),
		Tags:            args.Tags,
	}, parent); err != nil {
		return nil, fmt.Errorf("function %s log group: %w", name, err)
	}
	streams := c.LogGroup.Arn.ApplyT(func(arn string) string { return arn + ":*" }).(pulumi.StringOutput)
	role, err := newServiceRole(ctx, name, "function "+name, serviceRoleArgs{
		Name:          args.FunctionName,
		Service:       "lambda.amazonaws.com",
		SourceAccount: args.AccountID,
		Statements: append([]Statement{{
			Sid:       "WriteOwnLogs",
			Actions:   []string{"logs:CreateLogStream", "logs:PutLogEvents"},
			Resources: pulumi.StringArray{streams},
		}}, args.Statements...),
		Tags: args.Tags,
	}, parent)
	if err != nil {
		return nil, err
	}
	c.Role, c.Policy = role.Role, role.Document
	timeout, memory := args.TimeoutSeconds, args.MemoryMB
	if timeout == 0 {
		timeout = 30
	}
	if memory == 0 {
		memory = 128
	}
	reserved := pulumi.IntPtrInput(nil)
	if args.ReservedConcurrency > 0 {
		reserved = pulumi.IntPtr(args.ReservedConcurrency)
	}
	if c.Function, err = lambda.NewFunction(ctx, name, &lambda.FunctionArgs{
		Name:                         pulumi.String(args.FunctionName),
		Description:                  pulumi.String(args.Description),
		Runtime:                      pulumi.String(LambdaRuntime),
		Architectures:                pulumi.StringArray{pulumi.String(LambdaArchitecture)},
		Handler:                      pulumi.String(LambdaHandler),
		Code:                         pulumi.NewFileArchive(args.Artifact.ZipPath),
		SourceCodeHash:               pulumi.String(args.Artifact.SHA256),
		Role:                         c.Role.Arn,
		Timeout:                      pulumi.Int(timeout),
		MemorySize:                   pulumi.Int(memory),
		ReservedConcurrentExecutions: reserved,
		Environment:                  &lambda.FunctionEnvironmentArgs{Variables: args.Environment},
		LoggingConfig: &lambda.FunctionLoggingConfigArgs{
			LogFormat: pulumi.String("JSON"),
			LogGroup:  c.LogGroup.Name,
		},
		Tags: args.Tags,
	}, parent, pulumi.DependsOn([]pulumi.Resource{role.Policy, c.LogGroup})); err != nil {
		return nil, fmt.Errorf("function %s: %w", name, err)
	}
	c.Name, c.Arn = c.Function.Name, c.Function.Arn
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{"name": c.Name, "arn": c.Arn}); err != nil {
		return nil, err
	}
	return c, nil
}

// lambdaDefaults are what every Lambda of the stack shares: it is named
// "<prefix>-<name>" (name: its directory under lambdas/cmd/, also its
// resource name), has 256 MB, the stack's log retention and tags.
type lambdaDefaults struct {
	// Prefix is "iot-fleet-<env>".
	Prefix           string
	AccountID        string
	LogRetentionDays int
	Tags             pulumi.StringMap
}

// function declares the stack's Lambda name: args completed with d.
func (d lambdaDefaults) function(ctx *pulumi.Context, name string, args FunctionArgs, opts ...pulumi.ResourceOption) (*Function, error) {
	args.FunctionName = d.Prefix + "-" + name
	args.AccountID = d.AccountID
	args.MemoryMB = 256
	args.LogRetentionDays = d.LogRetentionDays
	args.Tags = d.Tags
	return NewFunction(ctx, name, args, opts...)
}
