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
	// SourceArn, when set, is the aws:SourceArn the role requires
	// (IoTSourceArn: AWS IoT of this account and region).
	SourceArn string
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
	objects := args.ArtifactsBucketArn.ToStringOutput().ApplyT(func(arn string) string { return arn + "/*" }).(pulumi.StringOutput)
	role, err := newServiceRole(ctx, name+"-presign", "ota presign", serviceRoleArgs{
		Name:          args.Prefix + "-presign",
		Description:   "Assumed by AWS IoT Jobs to presign OTA artifact URLs in job documents",
		Service:       "iot.amazonaws.com",
		SourceAccount: args.AccountID,
		SourceArn:     args.SourceArn,
		Statements: []Statement{{
			Sid:       "PresignOTAArtifacts",
			Actions:   []string{"s3:GetObject"},
			Resources: pulumi.StringArray{objects},
		}},
		Tags: args.Tags,
	}, parent)
	if err != nil {
		return nil, err
	}
	c.PresignRole, c.PresignPolicy = role.Role, role.Document
	c.PresignRoleArn = c.PresignRole.Arn
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{"presignRoleArn": c.PresignRoleArn}); err != nil {
		return nil, err
	}
	return c, nil
}
