// Package components holds the Pulumi ComponentResources of the iot-fleet
// stack, one file per component, each with typed args: storage (buckets and
// the device registry), IoT policies, fleet (thing group, role alias and
// token-exchange role), Lambda functions, provisioning (claim certificate
// and template), allowlist upload and trigger, and topic rules. Stack
// composes them; later features add components there.
package components

import (
	"encoding/json"
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/internal/policy"
)

// Statement is one IAM policy statement whose resources may be outputs of
// other resources.
type Statement struct {
	Sid       string
	Effect    string // "Allow" when empty
	Actions   []string
	Resources pulumi.StringArrayInput
	// Principal is set only for resource policies (bucket policies).
	Principal any
	Condition map[string]map[string]any
}

// iamDocument is the JSON form of an IAM policy document.
type iamDocument struct {
	Version   string         `json:"Version"`
	Statement []iamStatement `json:"Statement"`
}

type iamStatement struct {
	Sid       string                    `json:"Sid,omitempty"`
	Effect    string                    `json:"Effect"`
	Principal any                       `json:"Principal,omitempty"`
	Action    []string                  `json:"Action"`
	Resource  []string                  `json:"Resource,omitempty"`
	Condition map[string]map[string]any `json:"Condition,omitempty"`
}

// PolicyDocument renders statements as an IAM policy document once every
// resource ARN is known.
func PolicyDocument(statements ...Statement) pulumi.StringOutput {
	resources := make([]any, len(statements))
	for i, s := range statements {
		if s.Resources == nil {
			resources[i] = pulumi.StringArray{}
			continue
		}
		resources[i] = s.Resources
	}
	return pulumi.All(resources...).ApplyT(func(vals []any) (string, error) {
		doc := iamDocument{Version: "2012-10-17"}
		for i, s := range statements {
			effect := s.Effect
			if effect == "" {
				effect = "Allow"
			}
			arns, _ := vals[i].([]string)
			if len(s.Actions) == 0 {
				return "", fmt.Errorf("iam statement %d (%s): no actions", i, s.Sid)
			}
			doc.Statement = append(doc.Statement, iamStatement{
				Sid: s.Sid, Effect: effect, Principal: s.Principal,
				Action: s.Actions, Resource: arns, Condition: s.Condition,
			})
		}
		b, err := json.Marshal(doc)
		if err != nil {
			return "", fmt.Errorf("iam policy: marshal: %w", err)
		}
		return string(b), nil
	}).(pulumi.StringOutput)
}

// AssumeRolePolicy is the trust policy letting service (e.g.
// "lambda.amazonaws.com") assume a role, optionally only on behalf of
// account (aws:SourceAccount) and of resources matching sourceArn
// (aws:SourceArn, ArnLike): AWS's guard against the confused deputy.
func AssumeRolePolicy(service, account, sourceArn string) string {
	st := iamStatement{
		Effect:    "Allow",
		Principal: map[string]any{"Service": service},
		Action:    []string{"sts:AssumeRole"},
	}
	if account != "" || sourceArn != "" {
		st.Condition = map[string]map[string]any{}
	}
	if account != "" {
		st.Condition["StringEquals"] = map[string]any{"aws:SourceAccount": account}
	}
	if sourceArn != "" {
		st.Condition["ArnLike"] = map[string]any{"aws:SourceArn": sourceArn}
	}
	b, err := json.Marshal(iamDocument{Version: "2012-10-17", Statement: []iamStatement{st}})
	if err != nil { // cannot happen: only strings and maps of strings
		panic(fmt.Sprintf("assume role policy: %v", err))
	}
	return string(b)
}

// ARNs turns plain strings into a StringArrayInput.
func ARNs(arns ...string) pulumi.StringArray {
	out := make(pulumi.StringArray, len(arns))
	for i, a := range arns {
		out[i] = pulumi.String(a)
	}
	return out
}

// Tags are the tags every taggable resource of the stack carries.
func Tags(environment string) pulumi.StringMap {
	return pulumi.StringMap{
		"project":     pulumi.String("iot-fleet"),
		"environment": pulumi.String(environment),
		"managed-by":  pulumi.String("pulumi"),
	}
}

// serviceRoleArgs configure newServiceRole.
type serviceRoleArgs struct {
	// Name is the IAM role name.
	Name        string
	Description string
	// Service assumes the role (e.g. "lambda.amazonaws.com"), only on
	// behalf of SourceAccount when that is set (the confused-deputy guard).
	Service       string
	SourceAccount string
	// SourceArn, when set, also requires the request to come from a
	// resource matching it (aws:SourceArn, ArnLike).
	SourceArn string
	// MaxSessionDurationSeconds, when set, is the role's
	// MaxSessionDuration (else AWS's default, one hour).
	MaxSessionDurationSeconds int
	// Statements are the role's inline policy.
	Statements []Statement
	Tags       pulumi.StringMap
}

// serviceRole is an IAM role a service assumes, with one inline policy.
type serviceRole struct {
	Role *iam.Role
	// Document is the inline policy document; Policy the resource that
	// sets it (depend on it before the role is used).
	Document pulumi.StringOutput
	Policy   *iam.RolePolicy
}

// newServiceRole declares a serviceRole: the role and its inline policy
// are both resources named resName, parented by opts. It is a helper, not
// a component, so that the resources keep the URNs they have as children
// of the component declaring them. label prefixes errors ("<label> role:
// ...", "<label> role policy: ...").
func newServiceRole(ctx *pulumi.Context, resName, label string, args serviceRoleArgs, opts ...pulumi.ResourceOption) (serviceRole, error) {
	roleArgs := &iam.RoleArgs{
		Name:             pulumi.String(args.Name),
		AssumeRolePolicy: pulumi.String(AssumeRolePolicy(args.Service, args.SourceAccount, args.SourceArn)),
		Tags:             args.Tags,
	}
	if args.MaxSessionDurationSeconds != 0 {
		roleArgs.MaxSessionDuration = pulumi.Int(args.MaxSessionDurationSeconds)
	}
	if args.Description != "" {
		roleArgs.Description = pulumi.String(args.Description)
	}
	var r serviceRole
	var err error
	if r.Role, err = iam.NewRole(ctx, resName, roleArgs, opts...); err != nil {
		return serviceRole{}, fmt.Errorf("%s role: %w", label, err)
	}
	r.Document = PolicyDocument(args.Statements...)
	if r.Policy, err = iam.NewRolePolicy(ctx, resName, &iam.RolePolicyArgs{Role: r.Role.ID(), Policy: r.Document}, opts...); err != nil {
		return serviceRole{}, fmt.Errorf("%s role policy: %w", label, err)
	}
	return r, nil
}

// IoTSourceArn is the aws:SourceArn AWS IoT's confused-deputy guidance
// gives for roles AWS IoT assumes: any IoT resource of the account in the
// region ("arn:<partition>:iot:<region>:<account>:*").
func IoTSourceArn(partition, region, account string) string {
	return fmt.Sprintf("arn:%s:iot:%s:%s:*", partition, region, account)
}

// ClaimCertificateChanges are the IoT actions that would change the claim
// certificate or its attachments: revoking or deleting it would brick
// every image not yet provisioned; attaching the device policy or a thing
// to it would give every holder of the claim key a device's rights.
var ClaimCertificateChanges = []string{
	"iot:UpdateCertificate", "iot:DeleteCertificate",
	"iot:AttachPolicy", "iot:DetachPolicy",
	"iot:AttachThingPrincipal", "iot:DetachThingPrincipal",
}

// DenyClaimCertificate is the explicit Deny of ClaimCertificateChanges on
// the claim certificate that every role allowed to change certificates
// (cert/*) carries: it wins over any Allow.
func DenyClaimCertificate(claimCertificateArn pulumi.StringInput) Statement {
	return Statement{
		Sid: "NeverTheClaimCertificate", Effect: "Deny",
		Actions:   ClaimCertificateChanges,
		Resources: pulumi.StringArray{claimCertificateArn},
	}
}

// iotARN is the ARN of an AWS IoT resource of the deployment, e.g.
// iotARN("aws", "eu-west-1", "123456789012", "thing", "dev-*").
func iotARN(partition, region, account, kind, name string) string {
	return policy.Params{Partition: partition, Region: region, AccountID: account}.ARN(kind, name)
}
