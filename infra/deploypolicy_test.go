package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/infra/components"
)

// deployPolicy is an IAM permission policy of deploy/aws, rendered for the
// fake AWS account and region, with just enough of IAM's evaluation to
// ask whether it allows an action on a resource in a request context.
type deployPolicy struct {
	Statement []struct {
		Sid       string
		Effect    string
		Action    stringOrList
		Resource  stringOrList
		Condition map[string]map[string]stringOrList
	}
}

func loadDeployPolicy(t *testing.T, name string) deployPolicy {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "aws", name))
	require.NoError(t, err)
	rendered := strings.NewReplacer("ACCOUNT_ID", mockAccount, "REGION", "eu-west-1").Replace(string(raw))
	var p deployPolicy
	require.NoError(t, json.Unmarshal([]byte(rendered), &p), name)
	return p
}

// iamPattern compiles an IAM pattern ('*' any run of characters, '?' one
// character) into an anchored regexp.
func iamPattern(pattern string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for _, r := range pattern {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// allows reports whether an Allow statement grants action on res with the
// request context ctx (condition key → value). Supported operators:
// StringEquals, ArnEquals (exact), StringLike, ArnLike (patterns); any
// other operator fails the test rather than being ignored.
func (p deployPolicy) allows(t *testing.T, action, res string, ctx map[string]string) bool {
	t.Helper()
	for _, st := range p.Statement {
		if st.Effect != "Allow" || !slices.Contains(st.Action.list(), action) {
			continue
		}
		if !slices.ContainsFunc(st.Resource.list(), func(pat string) bool { return iamPattern(pat).MatchString(res) }) {
			continue
		}
		ok := true
		for op, kv := range st.Condition {
			for key, values := range kv {
				got, present := ctx[key]
				var match bool
				switch op {
				case "StringEquals", "ArnEquals":
					match = present && slices.Contains(values.list(), got)
				case "StringLike", "ArnLike":
					match = present && slices.ContainsFunc(values.list(), func(pat string) bool { return iamPattern(pat).MatchString(got) })
				default:
					t.Fatalf("%s: condition operator %s is not evaluated by this test", st.Sid, op)
				}
				ok = ok && match
			}
		}
		if ok {
			return true
		}
	}
	return false
}

var roleARN = regexp.MustCompile(`^arn:aws:iam::[0-9]{12}:role/.+$`)

// roleARNs are the IAM role ARNs anywhere in v.
func roleARNs(v resource.PropertyValue) []string {
	switch {
	case v.IsSecret():
		return roleARNs(v.SecretValue().Element)
	case v.IsString() && roleARN.MatchString(v.StringValue()):
		return []string{v.StringValue()}
	case v.IsArray():
		var out []string
		for _, e := range v.ArrayValue() {
			out = append(out, roleARNs(e)...)
		}
		return out
	case v.IsObject():
		var out []string
		for _, e := range v.ObjectValue() {
			out = append(out, roleARNs(e)...)
		}
		return out
	}
	return nil
}

// passedTo is the service each resource type passes the roles it names
// to (iam:PassedToService). A new resource type naming a role fails
// TestDeployPolicyCoversTheStack until it is added here and the deploy
// policy may pass the role.
var passedTo = map[string]string{
	tFunction:                                "lambda.amazonaws.com",
	tTemplate:                                "iot.amazonaws.com",
	tTopicRule:                               "iot.amazonaws.com",
	tRoleAlias:                               "iot.amazonaws.com",
	"aws:scheduler/schedule:Schedule":        "scheduler.amazonaws.com",
	"aws:cloudwatch/eventTarget:EventTarget": "events.amazonaws.com",
}

// The deploy role (deploy/aws/deploy-role-policy.json) can deploy what
// the stack declares: pass every role a resource names to that resource's
// service, attach the managed policies the stack attaches, and manage the
// stack's EventBridge rules, schedules and SSM association by name. The
// policy is written by hand against the stack's names; this keeps the two
// from drifting apart.
func TestDeployPolicyCoversTheStack(t *testing.T) {
	t.Parallel()
	r := mustRun(t)
	pol := loadDeployPolicy(t, "deploy-role-policy.json")

	passes := 0
	for _, x := range r.aws.resources("") {
		if strings.HasPrefix(x.Type, "aws:iam/") {
			continue // role and policy documents name roles, they do not pass them
		}
		for _, role := range roleARNs(resource.NewObjectProperty(x.Inputs)) {
			svc, ok := passedTo[x.Type]
			if !assert.True(t, ok, "%s %s passes %s: map its service in passedTo and allow it in the deploy policy", x.Type, x.Name, role) {
				continue
			}
			passes++
			assert.True(t, pol.allows(t, "iam:PassRole", role, map[string]string{"iam:PassedToService": svc}),
				"%s %s: the deploy role may not pass %s to %s", x.Type, x.Name, role, svc)
			for _, other := range []string{"lambda.amazonaws.com", "iot.amazonaws.com", "scheduler.amazonaws.com", "events.amazonaws.com", "ssm.amazonaws.com", "ec2.amazonaws.com"} {
				if other == svc || (svc == "iot.amazonaws.com" && strings.HasSuffix(role, "-token-exchange")) {
					continue
				}
				assert.False(t, pol.allows(t, "iam:PassRole", role, map[string]string{"iam:PassedToService": other}),
					"%s may be passed to %s, which does not use it", role, other)
			}
		}
	}
	assert.GreaterOrEqual(t, passes, 12, "sanity: the Lambdas, template, rules, role alias and schedules pass roles")

	// Every role of the stack can be created; the managed-instance role is
	// passed at run time by the toggle Lambda, never by the deploy role.
	for _, role := range r.aws.resources(tRole) {
		arn := propString(role.Outputs, "arn")
		assert.True(t, pol.allows(t, "iam:CreateRole", arn, nil), arn)
	}
	mi := propString(r.one(t, tRole, "ssm-managed-instance").Outputs, "arn")
	assert.False(t, pol.allows(t, "iam:PassRole", mi, map[string]string{"iam:PassedToService": "ssm.amazonaws.com"}))

	// Managed policies: exactly those the stack attaches, to those roles.
	attached := 0
	for _, att := range r.aws.resources(tRoleAttach) {
		arn := fmt.Sprintf("arn:aws:iam::%s:role/%s", mockAccount, propString(att.Inputs, "role"))
		policyARN := propString(att.Inputs, "policyArn")
		attached++
		for _, a := range []string{"iam:AttachRolePolicy", "iam:DetachRolePolicy"} {
			assert.True(t, pol.allows(t, a, arn, map[string]string{"iam:PolicyARN": policyARN}), "%s %s on %s", a, policyARN, arn)
			assert.False(t, pol.allows(t, a, arn, map[string]string{"iam:PolicyARN": "arn:aws:iam::aws:policy/AdministratorAccess"}), "%s AdministratorAccess", a)
		}
	}
	assert.Equal(t, 1, attached, "the provisioning role only (the SSM managed-instance role has its own inline policy)")

	// The deployment invokes the template-versions Lambda (and nothing
	// else) through its aws.lambda.Invocation.
	invocations := r.aws.resources(tInvocation)
	require.Len(t, invocations, 1)
	fn := fmt.Sprintf("arn:aws:lambda:eu-west-1:%s:function:%s", mockAccount, propString(invocations[0].Inputs, "functionName"))
	assert.True(t, pol.allows(t, "lambda:InvokeFunction", fn, nil), fn)
	for _, other := range []string{components.LambdaPreprovision, components.LambdaAllowlistSync, components.LambdaCertRotate} {
		arn := fmt.Sprintf("arn:aws:lambda:eu-west-1:%s:function:iot-fleet-dev-%s", mockAccount, other)
		assert.False(t, pol.allows(t, "lambda:InvokeFunction", arn, nil), "the deploy role cannot invoke %s", other)
	}

	// EventBridge rules and Scheduler schedules by name; the association
	// of its document.
	for _, rule := range r.aws.resources("aws:cloudwatch/eventRule:EventRule") {
		arn := propString(rule.Outputs, "arn")
		for _, a := range []string{"events:PutRule", "events:DescribeRule", "events:DeleteRule", "events:PutTargets", "events:RemoveTargets", "events:TagResource"} {
			assert.True(t, pol.allows(t, a, arn, nil), "%s on %s", a, arn)
		}
	}
	schedules := r.aws.resources("aws:scheduler/schedule:Schedule")
	require.Len(t, schedules, 2)
	for _, s := range schedules {
		group := propString(s.Inputs, "groupName")
		if group == "" {
			group = "default"
		}
		arn := fmt.Sprintf("arn:aws:scheduler:eu-west-1:%s:schedule/%s/%s", mockAccount, group, propString(s.Inputs, "name"))
		for _, a := range []string{"scheduler:CreateSchedule", "scheduler:GetSchedule", "scheduler:UpdateSchedule", "scheduler:DeleteSchedule"} {
			assert.True(t, pol.allows(t, a, arn, nil), "%s on %s", a, arn)
		}
	}
	associations := r.aws.resources("aws:ssm/association:Association")
	require.Len(t, associations, 1)
	doc := "arn:aws:ssm:eu-west-1::document/" + propString(associations[0].Inputs, "name")
	assert.True(t, pol.allows(t, "ssm:CreateAssociation", doc, nil), doc)
	assert.False(t, pol.allows(t, "ssm:CreateAssociation", "arn:aws:ssm:eu-west-1::document/AWS-RunShellScript", nil),
		"the deploy role cannot associate a document that runs commands")
}
