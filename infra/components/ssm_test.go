package components

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
)

const (
	ssmAccount = "123456789012"
	ssmTable   = "arn:aws:dynamodb:eu-central-1:123456789012:table/iot-fleet-dev-registry"
	ssmGroup   = "arn:aws:iot:eu-central-1:123456789012:thinggroup/iot-fleet-dev"
	ssmNodes   = "arn:aws:ssm:eu-central-1:123456789012:managed-instance/*"
)

func ssmArgs(t *testing.T) SSMArgs {
	zip := filepath.Join(t.TempDir(), "x.zip")
	require.NoError(t, os.WriteFile(zip, []byte("zip"), 0o644))
	art := lambdabuild.Artifact{ZipPath: zip, SHA256: "c2hh"}
	return SSMArgs{
		Prefix: "iot-fleet-dev", Environment: "dev", ThingNamePrefix: "dev-", SerialPattern: "^[0-9a-f]{16}$",
		Partition: "aws", Region: "eu-central-1", AccountID: ssmAccount,
		DataEndpoint: "abc-ats.iot.eu-central-1.amazonaws.com", Toggle: art, Registered: art, Expire: art,
		RegistryName:  pulumi.String("iot-fleet-dev-registry"),
		RegistryArn:   pulumi.String(ssmTable).ToStringOutput(),
		ThingGroupArn: pulumi.String(ssmGroup), ActivationExpiryHours: 6, LogRetentionDays: 30,
	}
}

func TestSSM(t *testing.T) {
	t.Parallel()
	m := &recorder{}
	args := ssmArgs(t)
	require.NoError(t, pulumi.RunErr(func(ctx *pulumi.Context) error {
		_, err := NewSSM(ctx, "ssm", args)
		return err
	}, pulumi.WithMocks("iot-fleet", "dev", m)))

	// Managed-instance role: only Systems Manager of this account and
	// region assumes it; it has the project's own least-privilege policy,
	// not AmazonSSMManagedInstanceCore (ssm:GetParameter* on *, ...).
	role := m.find(t, "aws:iam/role:Role", "ssm-managed-instance")
	assert.Equal(t, "iot-fleet-dev-ssm-managed-instance", str(role, "name"))
	trust := statements(t, str(role, "assumeRolePolicy"))
	require.Len(t, trust, 1)
	assert.Equal(t, []string{"sts:AssumeRole"}, trust[0].Action)
	assert.Equal(t, map[string]map[string]any{
		"StringEquals": {"aws:SourceAccount": ssmAccount},
		"ArnLike":      {"aws:SourceArn": "arn:aws:ssm:eu-central-1:" + ssmAccount + ":*"},
	}, trust[0].Condition)
	assert.Contains(t, str(role, "assumeRolePolicy"), `"Service":"ssm.amazonaws.com"`)
	assert.Zero(t, m.count("aws:iam/rolePolicyAttachment:RolePolicyAttachment"), "no managed policy")
	nodePolicy := m.find(t, "aws:iam/rolePolicy:RolePolicy", "ssm-managed-instance")
	assert.Equal(t, "ssm-managed-instance-id", str(nodePolicy, "role"), "the policy is the role's")
	anyRes := []string{"*"}
	assert.Equal(t, map[string][]string{
		"ssm:UpdateInstanceInformation":       anyRes,
		"ssmmessages:CreateControlChannel":    anyRes,
		"ssmmessages:OpenControlChannel":      anyRes,
		"ssmmessages:CreateDataChannel":       anyRes,
		"ssmmessages:OpenDataChannel":         anyRes,
		"ec2messages:GetEndpoint":             anyRes,
		"ec2messages:GetMessages":             anyRes,
		"ec2messages:AcknowledgeMessage":      anyRes,
		"ec2messages:SendReply":               anyRes,
		"ec2messages:FailMessage":             anyRes,
		"ec2messages:DeleteMessage":           anyRes,
		"ssm:ListInstanceAssociations":        anyRes,
		"ssm:DescribeAssociation":             anyRes,
		"ssm:UpdateInstanceAssociationStatus": anyRes,
		"ssm:PutInventory":                    anyRes,
		"ssm:GetDocument":                     {"arn:aws:ssm:eu-central-1::document/AWS-GatherSoftwareInventory"},
		"ssm:DescribeDocument":                {"arn:aws:ssm:eu-central-1::document/AWS-GatherSoftwareInventory"},
	}, grants(t, str(nodePolicy, "policy")), "what the agent needs for Session Manager and the inventory association, nothing else")

	// Environments exactly as the mains read them.
	env := func(fn string) map[string]string {
		vars := m.find(t, "aws:lambda/function:Function", fn)["environment"].ObjectValue()["variables"].ObjectValue()
		out := map[string]string{}
		for k, v := range vars {
			out[string(k)] = v.StringValue()
		}
		return out
	}
	assert.Equal(t, map[string]string{
		"REGISTRY_TABLE": "iot-fleet-dev-registry", "MANAGED_INSTANCE_ROLE": "iot-fleet-dev-ssm-managed-instance",
		"ENVIRONMENT": "dev", "THING_NAME_PREFIX": "dev-", "IOT_DATA_ENDPOINT": "abc-ats.iot.eu-central-1.amazonaws.com",
		"SERIAL_PATTERN": "^[0-9a-f]{16}$", "ACTIVATION_EXPIRY_HOURS": "6",
	}, env(LambdaSSMToggle))
	assert.Equal(t, map[string]string{"REGISTRY_TABLE": "iot-fleet-dev-registry", "ENVIRONMENT": "dev", "THING_NAME_PREFIX": "dev-"}, env(LambdaSSMRegistered))
	assert.Equal(t, map[string]string{
		"REGISTRY_TABLE": "iot-fleet-dev-registry", "MANAGED_INSTANCE_ROLE": "iot-fleet-dev-ssm-managed-instance",
		"ENVIRONMENT": "dev", "THING_NAME_PREFIX": "dev-",
	}, env(LambdaSSMExpire))

	// Exactly the calls the handlers make, on the narrowest resources.
	logs := func(fn string) []string { return []string{"arn:aws:mock:::" + fn + ":*"} }
	roleARN := "arn:aws:iam::123456789012:role/iot-fleet-dev-ssm-managed-instance"
	toggle := statements(t, str(m.find(t, "aws:iam/rolePolicy:RolePolicy", LambdaSSMToggle), "policy"))
	assert.Equal(t, map[string][]string{
		"logs:CreateLogStream": logs(LambdaSSMToggle), "logs:PutLogEvents": logs(LambdaSSMToggle),
		"dynamodb:GetItem": {ssmTable}, "dynamodb:UpdateItem": {ssmTable},
		"ssm:CreateActivation": {"*"}, "ssm:AddTagsToResource": {"*"},
		"iam:PassRole":         {roleARN},
		"ssm:DeleteActivation": {"*"}, "ssm:DescribeInstanceInformation": {"*"},
		"ssm:DeregisterManagedInstance": {ssmNodes},
		"iot:Publish":                   {"arn:aws:iot:eu-central-1:123456789012:topic/cmd/fleet/dev-*/ssm"},
		"iot:ListThingsInThingGroup":    {ssmGroup},
	}, actionResources(toggle))
	registered := statements(t, str(m.find(t, "aws:iam/rolePolicy:RolePolicy", LambdaSSMRegistered), "policy"))
	assert.Equal(t, map[string][]string{
		"logs:CreateLogStream": logs(LambdaSSMRegistered), "logs:PutLogEvents": logs(LambdaSSMRegistered),
		"dynamodb:GetItem": {ssmTable}, "dynamodb:UpdateItem": {ssmTable},
		"ssm:ListTagsForResource": {ssmNodes},
		"ssm:DeleteActivation":    {"*"}, "ssm:DescribeInstanceInformation": {"*"},
		"ssm:DeregisterManagedInstance": {ssmNodes},
	}, actionResources(registered))
	expire := statements(t, str(m.find(t, "aws:iam/rolePolicy:RolePolicy", LambdaSSMExpire), "policy"))
	assert.Equal(t, map[string][]string{
		"logs:CreateLogStream": logs(LambdaSSMExpire), "logs:PutLogEvents": logs(LambdaSSMExpire),
		"dynamodb:GetItem": {ssmTable}, "dynamodb:Scan": {ssmTable}, "dynamodb:UpdateItem": {ssmTable},
		"ssm:DescribeActivations": {"*"}, "ssm:DeleteActivation": {"*"},
	}, actionResources(expire))

	// No wildcard action anywhere; every "*" resource is one of the
	// actions without a resource type, and the writes among them are
	// pinned by conditions where IAM offers one.
	noResourceType := map[string]bool{
		"ssm:CreateActivation": true, "ssm:AddTagsToResource": true, "ssm:DeleteActivation": true,
		"ssm:DescribeInstanceInformation": true, "ssm:DescribeActivations": true,
	}
	for _, sts := range [][]policyStatement{toggle, registered, expire} {
		for _, st := range sts {
			assert.Equal(t, "Allow", st.Effect)
			for _, a := range st.Action {
				assert.NotContains(t, a, "*", "wildcard action %s", a)
				if slices.Contains(st.Resource, "*") {
					assert.True(t, noResourceType[a], "%s is granted on * but has a resource type", a)
				}
			}
			switch {
			case slices.Contains(st.Action, "ssm:CreateActivation"):
				assert.Equal(t, map[string]any{"aws:RequestTag/project": "iot-fleet", "aws:RequestTag/environment": "dev"}, st.Condition["StringEquals"])
				assert.ElementsMatch(t, []any{"project", "environment", "thingName", "serial"}, st.Condition["ForAllValues:StringEquals"]["aws:TagKeys"])
			case slices.Contains(st.Action, "iam:PassRole"):
				assert.Equal(t, []string{"iam:PassRole"}, st.Action)
				assert.Equal(t, map[string]map[string]any{"StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}}, st.Condition)
			case slices.Contains(st.Action, "ssm:DeregisterManagedInstance"):
				assert.Equal(t, map[string]map[string]any{"StringEquals": {"ssm:resourceTag/project": "iot-fleet", "ssm:resourceTag/environment": "dev"}}, st.Condition,
					"only this stack's nodes can be deregistered")
			}
		}
	}

	// EventBridge: the registration events go to the registered Lambda,
	// which only that rule may invoke.
	rule := m.find(t, "aws:cloudwatch/eventRule:EventRule", "ssm-registered")
	assert.Equal(t, "iot-fleet-dev-ssm-registered", str(rule, "name"))
	var pattern map[string][]string
	require.NoError(t, json.Unmarshal([]byte(str(rule, "eventPattern")), &pattern))
	assert.Equal(t, map[string][]string{
		"source":      {"aws.ssm"},
		"detail-type": {"SSM Managed Instance Registration", "EC2 State Manager Instance Association State Change"},
	}, pattern)
	target := m.find(t, "aws:cloudwatch/eventTarget:EventTarget", "ssm-registered")
	assert.Equal(t, "iot-fleet-dev-ssm-registered", str(target, "rule"))
	assert.Equal(t, "arn:aws:mock:::"+LambdaSSMRegistered, str(target, "arn"))
	perm := m.find(t, "aws:lambda/permission:Permission", "ssm-registered-invoke")
	assert.Equal(t, "events.amazonaws.com", str(perm, "principal"))
	assert.Equal(t, "lambda:InvokeFunction", str(perm, "action"))
	assert.Equal(t, "iot-fleet-dev-"+LambdaSSMRegistered, str(perm, "function"))
	assert.Equal(t, "arn:aws:mock:::ssm-registered", str(perm, "sourceArn"), "only the registration rule")
	assert.Equal(t, ssmAccount, str(perm, "sourceAccount"))

	// The fallback event source runs only on this stack's nodes.
	inv := m.find(t, "aws:ssm/association:Association", "ssm-inventory")
	assert.Equal(t, "AWS-GatherSoftwareInventory", str(inv, "name"))
	targets := inv["targets"].ArrayValue()
	require.Len(t, targets, 2)
	var keys []string
	for _, tg := range targets {
		vals := tg.ObjectValue()["values"].ArrayValue()
		require.Len(t, vals, 1)
		keys = append(keys, str(tg.ObjectValue(), "key")+"="+vals[0].StringValue())
	}
	assert.ElementsMatch(t, []string{"tag:project=iot-fleet", "tag:environment=dev"}, keys)

	// Hourly sweep; its role may only invoke the sweep.
	assertInvokeSchedule(t, m, "ssm-expire", "ssm-schedule", "rate(1 hour)", LambdaSSMExpire)
	assert.Equal(t, 3, m.count("aws:lambda/function:Function"))
}

func TestSSMRequiresArgs(t *testing.T) {
	t.Parallel()
	for name, mod := range map[string]func(*SSMArgs){
		"no prefix":        func(a *SSMArgs) { a.Prefix = "" },
		"no data endpoint": func(a *SSMArgs) { a.DataEndpoint = "" },
		"expiry too long":  func(a *SSMArgs) { a.ActivationExpiryHours = 721 },
		"no expiry":        func(a *SSMArgs) { a.ActivationExpiryHours = 0 },
		"no environment":   func(a *SSMArgs) { a.Environment = "" },
		"no thing group":   func(a *SSMArgs) { a.ThingGroupArn = nil },
		"no thing prefix":  func(a *SSMArgs) { a.ThingNamePrefix = "" },
	} {
		t.Run(name, func(t *testing.T) {
			m := &recorder{}
			args := ssmArgs(t)
			mod(&args)
			err := pulumi.RunErr(func(ctx *pulumi.Context) error {
				_, err := NewSSM(ctx, "ssm", args)
				return err
			}, pulumi.WithMocks("iot-fleet", "dev", m))
			require.Error(t, err)
			assert.True(t, strings.Contains(err.Error(), "ssm"), err.Error())
			assert.Zero(t, m.count(""), "nothing declared")
		})
	}
}
