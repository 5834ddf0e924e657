package components

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lambda"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/secretsmanager"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
)

// LambdaTemplateVersions is the Lambda that prunes old provisioning
// template versions before each template update (lambdas/templateversions).
const LambdaTemplateVersions = "templateversions"

// Environment of the template-versions Lambda.
const (
	EnvTemplateName = "TEMPLATE_NAME"
	EnvKeepVersions = "KEEP_VERSIONS"
)

// TemplateVersionsKept is how many versions of the provisioning template
// (the default one included) survive a pruning: AWS keeps at most 5 and
// refuses a 6th, and every template-body update creates one, so at most
// 4 may exist when the update runs.
const TemplateVersionsKept = 4

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
	// TemplateVersions is the built template-versions Lambda, invoked
	// before every template-body update to delete old versions.
	TemplateVersions lambdabuild.Artifact
	LogRetentionDays int
	Tags             pulumi.StringMap
}

// Provisioning is fleet provisioning by claim: the claim certificate (its
// private key a secret output and stored in Secrets Manager) with the claim
// policy attached, the provisioning template with its pre-provisioning hook
// and provisioning role, and the hook's invoke permission for IoT.
type Provisioning struct {
	pulumi.ResourceState

	// ClaimCertificate is nil when an existing certificate was adopted.
	ClaimCertificate *iot.Certificate
	ClaimSecret      *secretsmanager.Secret
	Template         *iot.ProvisioningTemplate
	ProvisioningRole *iam.Role
	// Pruner is the template-versions Lambda; PruneVersions its
	// invocation, re-run (and so re-invoking it) whenever the template
	// body changes, before the template is updated.
	Pruner              *Function
	PruneVersions       *lambda.Invocation
	ClaimCertificateArn pulumi.StringOutput
	// ClaimPrivateKey is a secret output; empty when adopted.
	ClaimPrivateKey pulumi.StringOutput
	ClaimSecretArn  pulumi.StringOutput
	TemplateName    pulumi.StringOutput
	TemplateArn     pulumi.StringOutput

	name string
	args ProvisioningArgs
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

// NewProvisioning declares the first part of Provisioning: the component,
// the claim certificate and its policy attachment. DeclareTemplate
// declares the rest once the hook exists (the hook's role denies itself
// the claim certificate, so it needs the certificate's ARN first).
func NewProvisioning(ctx *pulumi.Context, name string, args ProvisioningArgs, opts ...pulumi.ResourceOption) (*Provisioning, error) {
	if args.ClaimPolicy == nil || args.TemplateBody == "" || args.SecretName == "" || args.AccountID == "" {
		return nil, fmt.Errorf("provisioning %s: ClaimPolicy, TemplateBody, SecretName and AccountID are required", name)
	}
	c := &Provisioning{name: name, args: args}
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
	return c, nil
}

// DeclareTemplate declares the rest of Provisioning: the provisioning
// role, the hook's invoke permission, the template-versions pruning and
// the template with hook as its pre-provisioning hook. Call it once.
func (c *Provisioning) DeclareTemplate(ctx *pulumi.Context, hook *Function) error {
	if hook == nil || c.Template != nil {
		return fmt.Errorf("provisioning %s: DeclareTemplate needs the hook and runs once", c.name)
	}
	name, args, parent := c.name, c.args, pulumi.Parent(c)
	var err error
	if c.ProvisioningRole, err = iam.NewRole(ctx, name+"-role", &iam.RoleArgs{
		Name:        pulumi.String(args.Prefix + "-provisioning"),
		Description: pulumi.String("Assumed by AWS IoT fleet provisioning to register things from template " + args.TemplateName),
		// Only AWS IoT acting for this account and region (IoT's
		// confused-deputy guidance).
		AssumeRolePolicy: pulumi.String(AssumeRolePolicy("iot.amazonaws.com", args.AccountID, IoTSourceArn(args.Partition, args.Region, args.AccountID))),
		Tags:             args.Tags,
	}, parent); err != nil {
		return fmt.Errorf("provisioning role: %w", err)
	}
	registration, err := iam.NewRolePolicyAttachment(ctx, name+"-role", &iam.RolePolicyAttachmentArgs{
		Role:      c.ProvisioningRole.Name,
		PolicyArn: pulumi.String(fmt.Sprintf("arn:%s:iam::aws:policy/service-role/AWSIoTThingsRegistration", args.Partition)),
	}, parent)
	if err != nil {
		return fmt.Errorf("provisioning role policy: %w", err)
	}

	tplARN := templateARN(args.Partition, args.Region, args.AccountID, args.TemplateName)
	invoke, err := lambda.NewPermission(ctx, name+"-hook-invoke", &lambda.PermissionArgs{
		Action:        pulumi.String("lambda:InvokeFunction"),
		Function:      hook.Name,
		Principal:     pulumi.String("iot.amazonaws.com"),
		SourceArn:     pulumi.String(tplARN),
		SourceAccount: pulumi.String(args.AccountID),
	}, parent)
	if err != nil {
		return fmt.Errorf("hook invoke permission: %w", err)
	}
	if err := c.pruneVersions(ctx, name, args, tplARN, parent); err != nil {
		return err
	}
	deps := append([]pulumi.Resource{registration, invoke, c.PruneVersions}, args.TemplateDependsOn...)
	if c.Template, err = iot.NewProvisioningTemplate(ctx, name+"-template", &iot.ProvisioningTemplateArgs{
		Name:                pulumi.String(args.TemplateName),
		Description:         pulumi.String("Fleet provisioning by claim for " + args.Prefix + "; admits only allowlisted serials"),
		Enabled:             pulumi.Bool(true),
		Type:                pulumi.String("FLEET_PROVISIONING"),
		ProvisioningRoleArn: c.ProvisioningRole.Arn,
		TemplateBody:        pulumi.String(args.TemplateBody),
		PreProvisioningHook: &iot.ProvisioningTemplatePreProvisioningHookArgs{
			TargetArn:      hook.Arn,
			PayloadVersion: pulumi.String(HookPayloadVersion),
		},
		Tags: args.Tags,
	}, parent, pulumi.DependsOn(deps)); err != nil {
		return fmt.Errorf("provisioning template: %w", err)
	}
	c.TemplateName, c.TemplateArn = c.Template.Name, c.Template.Arn
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{
		"templateName":        c.TemplateName,
		"claimCertificateArn": c.ClaimCertificateArn,
		"claimSecretArn":      c.ClaimSecretArn,
	}); err != nil {
		return err
	}
	return nil
}

// TemplateVersionsInput is the payload the template-versions Lambda gets
// from the deployment: the template body's SHA-256, which is also the
// invocation's trigger (for the Lambda's log; it acts only on the
// template its environment names).
type TemplateVersionsInput struct {
	TemplateBodySHA256 string `json:"templateBodySha256"`
}

// pruneVersions declares the template-versions Lambda (allowed to list
// and delete versions of this template only) and its invocation, which
// the template depends on: when the body changes, the invocation is
// replaced, so the Lambda runs and leaves at most TemplateVersionsKept
// versions before the provider creates the new one. The template's name,
// which devices have baked in, never changes.
func (c *Provisioning) pruneVersions(ctx *pulumi.Context, name string, args ProvisioningArgs, tplARN string, parent pulumi.ResourceOption) error {
	lambdas := lambdaDefaults{Prefix: args.Prefix, AccountID: args.AccountID, LogRetentionDays: args.LogRetentionDays, Tags: args.Tags}
	var err error
	if c.Pruner, err = lambdas.function(ctx, LambdaTemplateVersions, FunctionArgs{
		Description: "Deletes old versions of provisioning template " + args.TemplateName + " before the deployment updates it (AWS keeps 5)",
		Artifact:    args.TemplateVersions,
		Environment: pulumi.StringMap{
			EnvTemplateName: pulumi.String(args.TemplateName),
			EnvKeepVersions: pulumi.String(fmt.Sprint(TemplateVersionsKept)),
		},
		Statements: []Statement{{
			Sid:       "PruneTemplateVersions",
			Actions:   []string{"iot:ListProvisioningTemplateVersions", "iot:DeleteProvisioningTemplateVersion"},
			Resources: ARNs(tplARN),
		}},
		TimeoutSeconds: 60,
	}, parent); err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(args.TemplateBody))
	digest := hex.EncodeToString(sum[:])
	input, err := json.Marshal(TemplateVersionsInput{TemplateBodySHA256: digest})
	if err != nil {
		return fmt.Errorf("template versions input: %w", err)
	}
	if c.PruneVersions, err = lambda.NewInvocation(ctx, name+"-prune-versions", &lambda.InvocationArgs{
		FunctionName: c.Pruner.Name,
		Input:        pulumi.String(string(input)),
		Triggers:     pulumi.StringMap{"templateBodySha256": pulumi.String(digest)},
	}, parent, pulumi.DependsOn([]pulumi.Resource{c.Pruner})); err != nil {
		return fmt.Errorf("template versions invocation: %w", err)
	}
	return nil
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
