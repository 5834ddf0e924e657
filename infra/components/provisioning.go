package components

import (
	"encoding/json"
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lambda"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/secretsmanager"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// HookPayloadVersion is the only pre-provisioning hook payload version.
const HookPayloadVersion = "2020-04-01"

// ProvisioningArgs configure Provisioning.
type ProvisioningArgs struct {
	// Prefix is "iot-fleet-<env>".
	Prefix       string
	TemplateName string
	// TemplateBody is the fleet provisioning template body
	// (internal/provtemplate.Body).
	TemplateBody string
	Partition    string
	Region       string
	AccountID    string
	// ClaimPolicy is attached to the claim certificate.
	ClaimPolicy *iot.Policy
	// Hook is the pre-provisioning hook Lambda.
	Hook *Function
	// TemplateDependsOn are resources the template body names (thing
	// group, device policy), which must exist before it is used.
	TemplateDependsOn []pulumi.Resource
	// SecretName is the Secrets Manager secret holding the claim
	// certificate and private key, where the image build fetches them.
	SecretName string
	// AdoptCertificateArn, when set, uses this existing claim certificate
	// (retained from an earlier deployment) instead of creating one; its
	// secret SecretName must already exist.
	AdoptCertificateArn string
	Tags                pulumi.StringMap
}

// Provisioning is fleet provisioning by claim: the claim certificate (its
// private key a secret output and stored in Secrets Manager) with the claim
// policy attached, the provisioning template with its pre-provisioning hook
// and provisioning role, and the hook's invoke permission for IoT.
type Provisioning struct {
	pulumi.ResourceState

	// ClaimCertificate is nil when an existing certificate was adopted.
	ClaimCertificate    *iot.Certificate
	ClaimSecret         *secretsmanager.Secret
	Template            *iot.ProvisioningTemplate
	ProvisioningRole    *iam.Role
	ClaimCertificateArn pulumi.StringOutput
	// ClaimPrivateKey is a secret output; empty when adopted.
	ClaimPrivateKey pulumi.StringOutput
	ClaimSecretArn  pulumi.StringOutput
	TemplateName    pulumi.StringOutput
	TemplateArn     pulumi.StringOutput
}

// ClaimCertificateOptions are the resource options of the claim
// certificate and its secret: protected (a destroy fails until it is
// explicitly unprotected) and retained in AWS even then, so images already
// flashed with the certificate keep working after a redeploy that adopts it.
func ClaimCertificateOptions() []pulumi.ResourceOption {
	return []pulumi.ResourceOption{pulumi.Protect(true), pulumi.RetainOnDelete(true)}
}

// templateARN is the ARN a provisioning template named name gets.
func templateARN(partition, region, account, name string) string {
	return iotARN(partition, region, account, "provisioningtemplate", name)
}

// NewProvisioning declares Provisioning.
func NewProvisioning(ctx *pulumi.Context, name string, args ProvisioningArgs, opts ...pulumi.ResourceOption) (*Provisioning, error) {
	if args.ClaimPolicy == nil || args.Hook == nil || args.TemplateBody == "" || args.SecretName == "" {
		return nil, fmt.Errorf("provisioning %s: ClaimPolicy, Hook, TemplateBody and SecretName are required", name)
	}
	c := &Provisioning{}
	if err := ctx.RegisterComponentResource("iot-fleet:provisioning:Provisioning", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	if err := c.claimCertificate(ctx, name, args, parent); err != nil {
		return nil, err
	}
	if _, err := iot.NewPolicyAttachment(ctx, name+"-claim", &iot.PolicyAttachmentArgs{
		Policy: args.ClaimPolicy.Name,
		Target: c.ClaimCertificateArn,
	}, parent); err != nil {
		return nil, fmt.Errorf("claim policy attachment: %w", err)
	}

	var err error
	if c.ProvisioningRole, err = iam.NewRole(ctx, name+"-role", &iam.RoleArgs{
		Name:             pulumi.String(args.Prefix + "-provisioning"),
		Description:      pulumi.String("Assumed by AWS IoT fleet provisioning to register things from template " + args.TemplateName),
		AssumeRolePolicy: pulumi.String(AssumeRolePolicy("iot.amazonaws.com", "")),
		Tags:             args.Tags,
	}, parent); err != nil {
		return nil, fmt.Errorf("provisioning role: %w", err)
	}
	registration, err := iam.NewRolePolicyAttachment(ctx, name+"-role", &iam.RolePolicyAttachmentArgs{
		Role:      c.ProvisioningRole.Name,
		PolicyArn: pulumi.String(fmt.Sprintf("arn:%s:iam::aws:policy/service-role/AWSIoTThingsRegistration", args.Partition)),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("provisioning role policy: %w", err)
	}

	tplARN := templateARN(args.Partition, args.Region, args.AccountID, args.TemplateName)
	invoke, err := lambda.NewPermission(ctx, name+"-hook-invoke", &lambda.PermissionArgs{
		Action:        pulumi.String("lambda:InvokeFunction"),
		Function:      args.Hook.Name,
		Principal:     pulumi.String("iot.amazonaws.com"),
		SourceArn:     pulumi.String(tplARN),
		SourceAccount: pulumi.String(args.AccountID),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("hook invoke permission: %w", err)
	}
	deps := append([]pulumi.Resource{registration, invoke}, args.TemplateDependsOn...)
	if c.Template, err = iot.NewProvisioningTemplate(ctx, name+"-template", &iot.ProvisioningTemplateArgs{
		Name:                pulumi.String(args.TemplateName),
		Description:         pulumi.String("Fleet provisioning by claim for " + args.Prefix + "; admits only allowlisted serials"),
		Enabled:             pulumi.Bool(true),
		Type:                pulumi.String("FLEET_PROVISIONING"),
		ProvisioningRoleArn: c.ProvisioningRole.Arn,
		TemplateBody:        pulumi.String(args.TemplateBody),
		PreProvisioningHook: &iot.ProvisioningTemplatePreProvisioningHookArgs{
			TargetArn:      args.Hook.Arn,
			PayloadVersion: pulumi.String(HookPayloadVersion),
		},
		Tags: args.Tags,
	}, parent, pulumi.DependsOn(deps)); err != nil {
		return nil, fmt.Errorf("provisioning template: %w", err)
	}
	c.TemplateName, c.TemplateArn = c.Template.Name, c.Template.Arn
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{
		"templateName":        c.TemplateName,
		"claimCertificateArn": c.ClaimCertificateArn,
		"claimSecretArn":      c.ClaimSecretArn,
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// claimBundle is the JSON stored in the claim secret.
type claimBundle struct {
	CertificateID  string `json:"certificateId"`
	CertificateArn string `json:"certificateArn"`
	CertificatePEM string `json:"certificatePem"`
	PrivateKey     string `json:"privateKey"`
}

func (c *Provisioning) claimCertificate(ctx *pulumi.Context, name string, args ProvisioningArgs, parent pulumi.ResourceOption) error {
	if args.AdoptCertificateArn != "" {
		secret, err := secretsmanager.LookupSecret(ctx, &secretsmanager.LookupSecretArgs{Name: pulumi.StringRef(args.SecretName)}, pulumi.Parent(c))
		if err != nil {
			return fmt.Errorf("adopting claim certificate %s: its secret %s: %w", args.AdoptCertificateArn, args.SecretName, err)
		}
		c.ClaimCertificateArn = pulumi.String(args.AdoptCertificateArn).ToStringOutput()
		c.ClaimSecretArn = pulumi.String(secret.Arn).ToStringOutput()
		c.ClaimPrivateKey = pulumi.ToSecret(pulumi.String("")).(pulumi.StringOutput)
		return nil
	}
	keep := append([]pulumi.ResourceOption{parent}, ClaimCertificateOptions()...)
	cert, err := iot.NewCertificate(ctx, name+"-claim", &iot.CertificateArgs{Active: pulumi.Bool(true)}, keep...)
	if err != nil {
		return fmt.Errorf("claim certificate: %w", err)
	}
	secret, err := secretsmanager.NewSecret(ctx, name+"-claim", &secretsmanager.SecretArgs{
		Name:        pulumi.String(args.SecretName),
		Description: pulumi.String("Fleet provisioning claim certificate and private key for " + args.Prefix + " (read by the image build)"),
		Tags:        args.Tags,
	}, keep...)
	if err != nil {
		return fmt.Errorf("claim secret: %w", err)
	}
	bundle := pulumi.All(cert.ID(), cert.Arn, cert.CertificatePem, cert.PrivateKey).ApplyT(func(v []any) (string, error) {
		b, err := json.Marshal(claimBundle{
			CertificateID: string(v[0].(pulumi.ID)), CertificateArn: v[1].(string),
			CertificatePEM: v[2].(string), PrivateKey: v[3].(string),
		})
		if err != nil {
			return "", fmt.Errorf("claim secret: marshal: %w", err)
		}
		return string(b), nil
	}).(pulumi.StringOutput)
	if _, err := secretsmanager.NewSecretVersion(ctx, name+"-claim", &secretsmanager.SecretVersionArgs{
		SecretId:     secret.ID(),
		SecretString: pulumi.ToSecret(bundle).(pulumi.StringOutput),
	}, keep...); err != nil {
		return fmt.Errorf("claim secret version: %w", err)
	}
	c.ClaimCertificate, c.ClaimSecret = cert, secret
	c.ClaimCertificateArn = cert.Arn
	c.ClaimPrivateKey = pulumi.ToSecret(cert.PrivateKey).(pulumi.StringOutput)
	c.ClaimSecretArn = secret.Arn
	return nil
}
