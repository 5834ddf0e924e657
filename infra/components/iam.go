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

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
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
// account.
func AssumeRolePolicy(service, account string) string {
	st := iamStatement{
		Effect:    "Allow",
		Principal: map[string]any{"Service": service},
		Action:    []string{"sts:AssumeRole"},
	}
	if account != "" {
		st.Condition = map[string]map[string]any{"StringEquals": {"aws:SourceAccount": account}}
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
