package main

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/infra/components"
	"github.com/iot-fleet/iot-fleet/infra/stackconfig"
)

// managedNodeAgentAction: the SSM Agent's own calls, granted on "*" to the
// managed-instance role only (components.ManagedNodeStatements; docs/ssm.md
// justifies each).
func managedNodeAgentAction(a string) bool {
	return slices.Contains([]string{
		"ssm:UpdateInstanceInformation", "ssm:ListInstanceAssociations", "ssm:DescribeAssociation",
		"ssm:UpdateInstanceAssociationStatus", "ssm:PutInventory",
	}, a) || strings.HasPrefix(a, "ssmmessages:") || strings.HasPrefix(a, "ec2messages:")
}

// actionWithoutResourceType reports whether IAM action a has no resource
// type in the Service Authorization Reference, so a policy can only grant
// it on "*" (the SSM activation actions and the SSM Describe* reads).
func actionWithoutResourceType(a string) bool {
	switch a {
	case "ssm:CreateActivation", "ssm:AddTagsToResource", "ssm:DeleteActivation",
		"ssm:DescribeActivations", "ssm:DescribeInstanceInformation":
		return true
	}
	return false
}

// commandTopicRE matches an IoT topic ARN of a command topic whose thing
// level is a thing-name prefix wildcard (cmd/fleet/dev-*/ssm).
var commandTopicRE = regexp.MustCompile(`^arn:aws:iot:[a-z0-9-]+:[0-9]{12}:topic/cmd/fleet/[A-Za-z0-9_:-]*\*/[a-z/]+$`)

func thingCommandTopic(res string) bool { return commandTopicRE.MatchString(res) }

const tEventRule = "aws:cloudwatch/eventRule:EventRule"

func TestSSMOnDemand(t *testing.T) {
	t.Parallel()
	cfg := devConfig(t)
	r := runProgram(t, "dev", cfg, programOptions{})
	require.NoError(t, r.err)

	role := r.one(t, tRole, "ssm-managed-instance")
	assert.Equal(t, "iot-fleet-dev-ssm-managed-instance", propString(role.Inputs, "name"))
	trust := policyJSON(t, propString(role.Inputs, "assumeRolePolicy"))
	require.Len(t, trust.Statement, 1)
	assert.Equal(t, map[string]any{"Service": "ssm.amazonaws.com"}, trust.Statement[0].Principal)
	assert.Equal(t, map[string]any{
		"StringEquals": map[string]any{"aws:SourceAccount": mockAccount},
		"ArnLike":      map[string]any{"aws:SourceArn": "arn:aws:ssm:eu-west-1:" + mockAccount + ":*"},
	}, trust.Statement[0].Condition)
	// The project's own policy, not AmazonSSMManagedInstanceCore: no
	// parameter reads at all, documents only the inventory one.
	for _, att := range r.aws.resources(tRoleAttach) {
		assert.NotEqual(t, "iot-fleet-dev-ssm-managed-instance", propString(att.Inputs, "role"), "no managed policy on the node role")
	}
	node := policyJSON(t, propString(r.one(t, tRolePolicy, "ssm-managed-instance").Inputs, "policy"))
	for _, st := range node.Statement {
		for _, a := range st.Action {
			assert.False(t, strings.HasPrefix(a, "ssm:GetParameter"), "%s: the node reads no parameters", a)
			if a == "ssm:GetDocument" {
				assert.Equal(t, []string{"arn:aws:ssm:eu-west-1::document/AWS-GatherSoftwareInventory"}, st.Resource.list())
			}
		}
	}
	assert.Equal(t, "iot-fleet-dev-ssm-managed-instance", r.outputs["ssmManagedInstanceRole"])
	assert.Equal(t, "iot-fleet-dev-ssmtoggle", r.outputs["ssmToggleLambda"])

	// The toggle passes only the managed-instance role, only to SSM, and
	// gets the stack's activation lifetime.
	toggle := r.one(t, tFunction, components.LambdaSSMToggle)
	assert.Equal(t, cfg[stackconfig.KeySSMActivationExpiryHours], propString(toggle.Inputs, "environment", "variables", "ACTIVATION_EXPIRY_HOURS"))
	timeout, _ := prop(toggle.Inputs, "timeout")
	assert.Equal(t, float64(300), timeout.NumberValue(), "a thing group takes time")
	doc := policyJSON(t, propString(r.one(t, tRolePolicy, components.LambdaSSMToggle).Inputs, "policy"))
	var passes int
	for _, st := range doc.Statement {
		for _, a := range st.Action {
			if a == "iam:PassRole" {
				passes++
				assert.Equal(t, []string{propString(role.Outputs, "arn")}, st.Resource.list())
				assert.Equal(t, map[string]any{"StringEquals": map[string]any{"iam:PassedToService": "ssm.amazonaws.com"}}, st.Condition)
			}
			if a == "iot:Publish" {
				assert.Equal(t, []string{"arn:aws:iot:eu-west-1:" + mockAccount + ":topic/cmd/fleet/dev-*/ssm"}, st.Resource.list())
			}
			if a == "iot:ListThingsInThingGroup" {
				assert.Equal(t, []string{propString(r.one(t, tThingGroup, "group").Outputs, "arn")}, st.Resource.list())
			}
			if strings.HasPrefix(a, "dynamodb:") {
				assert.Equal(t, []string{propString(r.one(t, tTable, "registry").Outputs, "arn")}, st.Resource.list())
			}
		}
	}
	assert.Equal(t, 1, passes)

	// The registration events reach the registered Lambda, which only the
	// rule may invoke.
	rule := r.one(t, tEventRule, "ssm-registered")
	var pattern map[string][]string
	require.NoError(t, json.Unmarshal([]byte(propString(rule.Inputs, "eventPattern")), &pattern))
	assert.Equal(t, []string{"aws.ssm"}, pattern["source"])
	assert.Contains(t, pattern["detail-type"], "SSM Managed Instance Registration")
	registered := r.one(t, tFunction, components.LambdaSSMRegistered)
	target := r.one(t, "aws:cloudwatch/eventTarget:EventTarget", "ssm-registered")
	assert.Equal(t, propString(registered.Outputs, "arn"), propString(target.Inputs, "arn"))
	assert.Equal(t, propString(rule.Inputs, "name"), propString(target.Inputs, "rule"))
	var perm registration
	for _, p := range r.aws.resources(tPermission) {
		if propString(p.Inputs, "principal") == "events.amazonaws.com" {
			require.Empty(t, perm.Name, "one EventBridge permission")
			perm = p
		}
	}
	require.NotEmpty(t, perm.Name)
	assert.Equal(t, propString(registered.Outputs, "name"), propString(perm.Inputs, "function"))
	ruleARN := propString(rule.Outputs, "arn")
	require.NotEmpty(t, ruleARN)
	assert.Equal(t, ruleARN, propString(perm.Inputs, "sourceArn"))
	assert.Contains(t, target.DependsOn, tPermission+"::"+perm.Name, "the target is added once the Lambda may be invoked")

	// The hourly sweep.
	sched := r.one(t, "aws:scheduler/schedule:Schedule", "ssm-expire")
	assert.Equal(t, "rate(1 hour)", propString(sched.Inputs, "scheduleExpression"))
	expire := r.one(t, tFunction, components.LambdaSSMExpire)
	assert.Equal(t, propString(expire.Outputs, "arn"), propString(sched.Inputs, "target", "arn"))
	assert.Equal(t, propString(r.one(t, tRole, "ssm-schedule").Outputs, "arn"), propString(sched.Inputs, "target", "roleArn"))
}

func TestProdSSMActivationLifetime(t *testing.T) {
	t.Parallel()
	cfg := stackConfig(t, "prod")
	r := runProgram(t, "prod", cfg, programOptions{})
	require.NoError(t, r.err)
	toggle := r.one(t, tFunction, components.LambdaSSMToggle)
	assert.Equal(t, cfg[stackconfig.KeySSMActivationExpiryHours], propString(toggle.Inputs, "environment", "variables", "ACTIVATION_EXPIRY_HOURS"))
	assert.Equal(t, "prod", propString(toggle.Inputs, "environment", "variables", "ENVIRONMENT"))
	assert.Equal(t, "iot-fleet-prod-ssm-managed-instance", propString(toggle.Inputs, "environment", "variables", "MANAGED_INSTANCE_ROLE"))
}
