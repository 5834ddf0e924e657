package components

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
	"github.com/iot-fleet/iot-fleet/internal/policy"
)

func TestPolicyDocumentRendersOutputs(t *testing.T) {
	t.Parallel()
	rendered := make(chan string, 1)
	_, err := runMocked(t, func(ctx *pulumi.Context) error {
		arn := pulumi.String("arn:aws:s3:::bucket").ToStringOutput()
		PolicyDocument(
			Statement{Sid: "A", Actions: []string{"s3:GetObject"}, Resources: pulumi.StringArray{arn}},
			Statement{Sid: "B", Effect: "Deny", Principal: "*", Actions: []string{"s3:*"}, Resources: ARNs("arn:aws:s3:::b/*"),
				Condition: map[string]map[string]any{"Bool": {"aws:SecureTransport": "false"}}},
		).ApplyT(func(s string) string { rendered <- s; return s })
		return nil
	})
	require.NoError(t, err)
	var got string
	select {
	case got = <-rendered:
	case <-time.After(30 * time.Second):
		t.Fatal("policy document never rendered")
	}
	var doc map[string]any
	require.NoError(t, json.Unmarshal([]byte(got), &doc))
	assert.Equal(t, "2012-10-17", doc["Version"])
	sts := doc["Statement"].([]any)
	require.Len(t, sts, 2)
	a, b := sts[0].(map[string]any), sts[1].(map[string]any)
	assert.Equal(t, "Allow", a["Effect"], "Allow is the default effect")
	assert.Equal(t, []any{"arn:aws:s3:::bucket"}, a["Resource"])
	assert.NotContains(t, a, "Principal")
	assert.Equal(t, "Deny", b["Effect"])
	assert.Equal(t, "*", b["Principal"])
}

func TestPolicyDocumentRejectsStatementWithoutActions(t *testing.T) {
	t.Parallel()
	_, err := runMocked(t, func(ctx *pulumi.Context) error {
		_, err := NewFunction(ctx, "f", FunctionArgs{
			FunctionName: "f", AccountID: "123456789012", Artifact: lambdabuild.Artifact{ZipPath: "f.zip", SHA256: "x"},
			Statements: []Statement{{Sid: "Empty", Resources: ARNs("arn:aws:s3:::b")}},
		})
		return err
	})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Empty")
}

func TestAssumeRolePolicy(t *testing.T) {
	t.Parallel()
	var doc iamDocument
	require.NoError(t, json.Unmarshal([]byte(AssumeRolePolicy("iot.amazonaws.com", "123456789012", "")), &doc))
	require.Len(t, doc.Statement, 1)
	st := doc.Statement[0]
	assert.Equal(t, map[string]any{"Service": "iot.amazonaws.com"}, st.Principal)
	assert.Equal(t, []string{"sts:AssumeRole"}, st.Action)
	assert.Equal(t, map[string]map[string]any{"StringEquals": {"aws:SourceAccount": "123456789012"}}, st.Condition)

	var both iamDocument
	arn := IoTSourceArn("aws", "eu-west-1", "123456789012")
	assert.Equal(t, "arn:aws:iot:eu-west-1:123456789012:*", arn)
	require.NoError(t, json.Unmarshal([]byte(AssumeRolePolicy("iot.amazonaws.com", "123456789012", arn)), &both))
	assert.Equal(t, map[string]map[string]any{
		"StringEquals": {"aws:SourceAccount": "123456789012"},
		"ArnLike":      {"aws:SourceArn": arn},
	}, both.Statement[0].Condition)

	var plain iamDocument
	require.NoError(t, json.Unmarshal([]byte(AssumeRolePolicy("lambda.amazonaws.com", "", "")), &plain))
	assert.Empty(t, plain.Statement[0].Condition)
}

func TestDevicePolicyDocumentAddsOnlyTheRoleAlias(t *testing.T) {
	t.Parallel()
	p := policy.Params{Partition: "aws", Region: "eu-west-1", AccountID: "123456789012", TemplateName: "iot-fleet-dev"}
	base, err := policy.Device(p)
	require.NoError(t, err)
	doc, err := DevicePolicyDocument(p, "iot-fleet-dev-token-exchange")
	require.NoError(t, err)
	require.Len(t, doc.Statement, len(base.Statement)+1)
	assert.Equal(t, base.Statement, doc.Statement[:len(base.Statement)], "the shared device policy is kept as is")
	extra := doc.Statement[len(doc.Statement)-1]
	assert.Equal(t, []string{"iot:AssumeRoleWithCertificate"}, extra.Action)
	assert.Equal(t, []string{"arn:aws:iot:eu-west-1:123456789012:rolealias/iot-fleet-dev-token-exchange"}, extra.Resource)

	_, err = DevicePolicyDocument(p, "")
	assert.Error(t, err)
	_, err = DevicePolicyDocument(policy.Params{}, "alias")
	assert.Error(t, err)
}

func TestTopicRulesRejectBadRules(t *testing.T) {
	t.Parallel()
	for name, rules := range map[string][]LogRule{
		"duplicate": {{Name: "a", SQL: "SELECT * FROM 'x'"}, {Name: "a", SQL: "SELECT * FROM 'y'"}},
		"bad name":  {{Name: "Bad Name", SQL: "SELECT * FROM 'x'"}},
		"no sql":    {{Name: "a"}},
	} {
		e, err := runMocked(t, func(ctx *pulumi.Context) error {
			_, err := NewTopicRules(ctx, "rules", TopicRulesArgs{Prefix: "iot-fleet-dev", Rules: rules, LogRetentionDays: 7})
			return err
		})
		assert.Error(t, err, name)
		assert.Empty(t, e.types(), "%s: nothing declared", name)
	}
	assert.Equal(t, "iot_fleet_dev_device_status", TopicRuleName("iot-fleet-dev", LogRule{Name: "device-status"}))
}

func TestFunctionRequiresABuiltArtifact(t *testing.T) {
	t.Parallel()
	e, err := runMocked(t, func(ctx *pulumi.Context) error {
		_, err := NewFunction(ctx, "f", FunctionArgs{FunctionName: "f"})
		return err
	})
	require.Error(t, err)
	assert.Empty(t, e.types())
}

func TestServiceRole(t *testing.T) {
	t.Parallel()
	rec, err := runMocked(t, func(ctx *pulumi.Context) error {
		_, err := newServiceRole(ctx, "plain", "plain", serviceRoleArgs{
			Name: "iot-fleet-dev-plain", Service: "lambda.amazonaws.com",
			Statements: []Statement{{Sid: "Read", Actions: []string{"s3:GetObject"}, Resources: ARNs("arn:aws:s3:::b/k")}},
		})
		if err != nil {
			return err
		}
		_, err = newServiceRole(ctx, "guarded", "guarded", serviceRoleArgs{
			Name: "iot-fleet-dev-guarded", Description: "for IoT", Service: "iot.amazonaws.com", SourceAccount: "123456789012",
			Statements: []Statement{{Sid: "Log", Actions: []string{"logs:PutLogEvents"}, Resources: ARNs("arn:aws:logs:eu-west-1:123456789012:log-group:g:*")}},
		})
		return err
	})
	require.NoError(t, err)

	plain := rec.find(t, "aws:iam/role:Role", "plain")
	assert.Equal(t, "iot-fleet-dev-plain", str(plain, "name"))
	_, hasDescription := plain["description"]
	assert.False(t, hasDescription, "no description is sent when none is given")
	assert.Equal(t, AssumeRolePolicy("lambda.amazonaws.com", "", ""), str(plain, "assumeRolePolicy"))
	pol := rec.find(t, "aws:iam/rolePolicy:RolePolicy", "plain")
	assert.Equal(t, "plain-id", str(pol, "role"), "the policy is the role's")
	assert.Equal(t, map[string][]string{"s3:GetObject": {"arn:aws:s3:::b/k"}}, grants(t, str(pol, "policy")))

	guarded := rec.find(t, "aws:iam/role:Role", "guarded")
	assert.Equal(t, "for IoT", str(guarded, "description"))
	assert.Equal(t, AssumeRolePolicy("iot.amazonaws.com", "123456789012", ""), str(guarded, "assumeRolePolicy"))
	assert.Equal(t, map[string][]string{"logs:PutLogEvents": {"arn:aws:logs:eu-west-1:123456789012:log-group:g:*"}},
		grants(t, str(rec.find(t, "aws:iam/rolePolicy:RolePolicy", "guarded"), "policy")))
}
