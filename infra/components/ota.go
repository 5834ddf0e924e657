package components

import (
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// OTAArgs configure OTA.
type OTAArgs struct {
	// Prefix is "iot-fleet-<env>".
	Prefix string
	// AccountID restricts who may make AWS IoT assume the role
	// (aws:SourceAccount, the confused-deputy guard).
	AccountID string
	// ArtifactsBucketArn is the bucket holding the .mender artifacts.
	ArtifactsBucketArn pulumi.StringInput
	Tags               pulumi.StringMap
}

// OTA is what full-system updates need in the cloud besides the artifacts
// bucket: the presign role AWS IoT Jobs assumes to sign the
// ${aws:iot:s3-presigned-url:...} placeholder of a job document
// (create-job --presigned-url-config roleArn=...). It can only read
// artifact objects.
type OTA struct {
	pulumi.ResourceState

	PresignRole *iam.Role
	// PresignRoleArn is the stack output otaPresignRoleArn.
	PresignRoleArn pulumi.StringOutput
	// PresignPolicy is the role's permission policy document.
	PresignPolicy pulumi.StringOutput
}

// NewOTA declares OTA.
func NewOTA(ctx *pulumi.Context, name string, args OTAArgs, opts ...pulumi.ResourceOption) (*OTA, error) {
	if args.ArtifactsBucketArn == nil {
		return nil, fmt.Errorf("ota: ArtifactsBucketArn is required")
	}
	c := &OTA{}
	if err := ctx.RegisterComponentResource("iot-fleet:ota:OTA", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	var err error
	if c.PresignRole, err = iam.NewRole(ctx, name+"-presign", &iam.RoleArgs{
		Name:             pulumi.String(args.Prefix + "-presign"),
		Description:      pulumi.String("Assumed by AWS IoT Jobs to presign OTA artifact URLs in job documents"),
		AssumeRolePolicy: pulumi.String(AssumeRolePolicy("iot.amazonaws.com", args.AccountID)),
		Tags:             args.Tags,
	}, parent); err != nil {
		return nil, fmt.Errorf("ota presign role: %w", err)
	}
	objects := args.ArtifactsBucketArn.ToStringOutput().ApplyT(func(arn string) string { return arn + "/*" }).(pulumi.StringOutput)
	c.PresignPolicy = PolicyDocument(Statement{
		Sid:       "PresignOTAArtifacts",
		Actions:   []string{"s3:GetObject"},
		Resources: pulumi.StringArray{objects},
	})
	if _, err := iam.NewRolePolicy(ctx, name+"-presign", &iam.RolePolicyArgs{
		Role:   c.PresignRole.ID(),
		Policy: c.PresignPolicy,
	}, parent); err != nil {
		return nil, fmt.Errorf("ota presign role policy: %w", err)
	}
	c.PresignRoleArn = c.PresignRole.Arn
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{"presignRoleArn": c.PresignRoleArn}); err != nil {
		return nil, err
	}
	return c, nil
}
