package components

import (
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/internal/policy"
)

// IoTPoliciesArgs configure IoTPolicies.
type IoTPoliciesArgs struct {
	// Params locate the policies' resources (partition, region, account,
	// provisioning template name).
	Params           policy.Params
	ClaimPolicyName  string
	DevicePolicyName string
	// RoleAliasName is the credentials-provider role alias devices may
	// assume (iot:AssumeRoleWithCertificate).
	RoleAliasName string
	// AdoptRetained imports the device policy an earlier destroy retained.
	AdoptRetained bool
	Tags          pulumi.StringMap
}

// IoTPolicies are the claim and device IoT policies, exactly the documents
// internal/policy builds (the local IoT Core enforces the same ones), plus
// the device's right to use the token-exchange role alias.
type IoTPolicies struct {
	pulumi.ResourceState

	Claim  *iot.Policy
	Device *iot.Policy
	// ClaimDocument and DeviceDocument are the documents declared.
	ClaimDocument  policy.Document
	DeviceDocument policy.Document
}

// DevicePolicyDocument is policy.Device plus iot:AssumeRoleWithCertificate
// on the stack's role alias, so the device can get temporary AWS
// credentials (e.g. to download OTA artifacts) and nothing more.
func DevicePolicyDocument(p policy.Params, roleAlias string) (policy.Document, error) {
	doc, err := policy.Device(p)
	if err != nil {
		return policy.Document{}, err
	}
	if roleAlias == "" {
		return policy.Document{}, fmt.Errorf("device policy: role alias name is required")
	}
	doc.Statement = append(doc.Statement, policy.Statement{
		Sid:      "AssumeTokenExchangeRole",
		Effect:   "Allow",
		Action:   []string{"iot:AssumeRoleWithCertificate"},
		Resource: []string{p.ARN("rolealias", roleAlias)},
	})
	return doc, nil
}

// NewIoTPolicies declares IoTPolicies.
func NewIoTPolicies(ctx *pulumi.Context, name string, args IoTPoliciesArgs, opts ...pulumi.ResourceOption) (*IoTPolicies, error) {
	claim, err := policy.Claim(args.Params)
	if err != nil {
		return nil, fmt.Errorf("claim policy: %w", err)
	}
	device, err := DevicePolicyDocument(args.Params, args.RoleAliasName)
	if err != nil {
		return nil, err
	}
	c := &IoTPolicies{ClaimDocument: claim, DeviceDocument: device}
	if err := ctx.RegisterComponentResource("iot-fleet:iot:Policies", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	if c.Claim, err = iot.NewPolicy(ctx, name+"-claim", &iot.PolicyArgs{
		Name:   pulumi.String(args.ClaimPolicyName),
		Policy: pulumi.String(claim.JSON()),
		Tags:   args.Tags,
	}, parent); err != nil {
		return nil, fmt.Errorf("claim policy: %w", err)
	}
	// Every device certificate has the device policy attached, and AWS
	// refuses to delete an attached policy: a destroy keeps it (and the
	// devices keep working until their certificates are revoked).
	if c.Device, err = iot.NewPolicy(ctx, name+"-device", &iot.PolicyArgs{
		Name:   pulumi.String(args.DevicePolicyName),
		Policy: pulumi.String(device.JSON()),
		Tags:   args.Tags,
	}, parent, RetainedOnDestroy(true), AdoptRetained(args.AdoptRetained, args.DevicePolicyName)); err != nil {
		return nil, fmt.Errorf("device policy: %w", err)
	}
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{"claimPolicy": c.Claim.Name, "devicePolicy": c.Device.Name}); err != nil {
		return nil, err
	}
	return c, nil
}
