package components

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
)

func TestRotation(t *testing.T) {
	t.Parallel()
	zip := filepath.Join(t.TempDir(), "x.zip")
	require.NoError(t, os.WriteFile(zip, []byte("zip"), 0o644))
	art := lambdabuild.Artifact{ZipPath: zip, SHA256: "c2hh"}
	rec := &recorder{}
	claimARN := "arn:aws:iot:eu-central-1:123456789012:cert/" + strings.Repeat("c1", 32)
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		_, err := NewRotation(ctx, "rotation", RotationArgs{
			Prefix: "iot-fleet-dev", ThingNamePrefix: "dev-", Partition: "aws", Region: "eu-central-1", AccountID: "123456789012",
			DataEndpoint: "abc-ats.iot.eu-central-1.amazonaws.com", CertRotate: art, CertScan: art,
			RegistryName:     pulumi.String("iot-fleet-dev-registry"),
			RegistryArn:      pulumi.String("arn:aws:dynamodb:eu-central-1:123456789012:table/iot-fleet-dev-registry").ToStringOutput(),
			DevicePolicyName: "iot-fleet-dev-device", DevicePolicyArn: pulumi.String("arn:aws:iot:eu-central-1:123456789012:policy/iot-fleet-dev-device"),
			ThingGroupArn:       pulumi.String("arn:aws:iot:eu-central-1:123456789012:thinggroup/iot-fleet-dev"),
			ClaimCertificateArn: pulumi.String(claimARN),
			ExpiryWindowDays:    30, RuleRoleArn: pulumi.String("arn:aws:iam::123456789012:role/rules"),
			ErrorLogGroupName: pulumi.String("/aws/iot/iot-fleet-dev/rule-errors"), LogRetentionDays: 30,
		})
		return err
	}, pulumi.WithMocks("iot-fleet", "dev", rec))
	require.NoError(t, err)

	rot := rec.find(t, "aws:lambda/function:Function", LambdaCertRotate)
	assert.Equal(t, "iot-fleet-dev-certrotate", str(rot, "name"))
	assert.Equal(t, "iot-fleet-dev-device", str(rot, "environment", "variables", "DEVICE_POLICY"))
	assert.Equal(t, "dev-", str(rot, "environment", "variables", "THING_NAME_PREFIX"))
	assert.Equal(t, "iot-fleet-dev-registry", str(rot, "environment", "variables", "REGISTRY_TABLE"))
	assert.Equal(t, "abc-ats.iot.eu-central-1.amazonaws.com", str(rot, "environment", "variables", "IOT_DATA_ENDPOINT"))
	scan := rec.find(t, "aws:lambda/function:Function", LambdaCertScan)
	assert.Equal(t, "30", str(scan, "environment", "variables", "EXPIRY_WINDOW_DAYS"))

	// Exactly the calls the handlers make.
	certs := "arn:aws:iot:eu-central-1:123456789012:cert/*"
	assert.Equal(t, map[string][]string{
		"logs:CreateLogStream":         {"arn:aws:mock:::" + LambdaCertRotate + ":*"},
		"logs:PutLogEvents":            {"arn:aws:mock:::" + LambdaCertRotate + ":*"},
		"dynamodb:GetItem":             {"arn:aws:dynamodb:eu-central-1:123456789012:table/iot-fleet-dev-registry"},
		"dynamodb:UpdateItem":          {"arn:aws:dynamodb:eu-central-1:123456789012:table/iot-fleet-dev-registry"},
		"iot:CreateCertificateFromCsr": {"*"},
		"iot:DescribeCertificate":      {certs},
		"iot:UpdateCertificate":        {certs},
		"iot:DeleteCertificate":        {certs},
		"iot:AttachPolicy":             {certs, "arn:aws:iot:eu-central-1:123456789012:policy/iot-fleet-dev-device"},
		"iot:DetachPolicy":             {certs, "arn:aws:iot:eu-central-1:123456789012:policy/iot-fleet-dev-device"},
		"iot:AttachThingPrincipal":     {certs, "arn:aws:iot:eu-central-1:123456789012:thing/dev-*"},
		"iot:DetachThingPrincipal":     {certs, "arn:aws:iot:eu-central-1:123456789012:thing/dev-*"},
		"iot:Publish":                  {"arn:aws:iot:eu-central-1:123456789012:topic/cmd/fleet/*/rotate/cert"},
	}, grants(t, str(rec.find(t, "aws:iam/rolePolicy:RolePolicy", LambdaCertRotate), "policy")))
	// cert/* covers the claim certificate: an explicit Deny keeps rotation
	// from ever revoking, deleting or re-attaching it.
	denied := denies(t, str(rec.find(t, "aws:iam/rolePolicy:RolePolicy", LambdaCertRotate), "policy"))
	for _, a := range []string{"iot:UpdateCertificate", "iot:DeleteCertificate", "iot:AttachPolicy", "iot:DetachPolicy",
		"iot:AttachThingPrincipal", "iot:DetachThingPrincipal"} {
		assert.Equal(t, []string{claimARN}, denied[a], "%s on the claim certificate is denied", a)
	}
	// Only Lambda for this account assumes the Lambdas' roles.
	trust := statements(t, str(rec.find(t, "aws:iam/role:Role", LambdaCertRotate), "assumeRolePolicy"))
	assert.Equal(t, map[string]map[string]any{"StringEquals": {"aws:SourceAccount": "123456789012"}}, trust[0].Condition)
	assert.Equal(t, map[string][]string{
		"logs:CreateLogStream":       {"arn:aws:mock:::" + LambdaCertScan + ":*"},
		"logs:PutLogEvents":          {"arn:aws:mock:::" + LambdaCertScan + ":*"},
		"dynamodb:Query":             {"arn:aws:dynamodb:eu-central-1:123456789012:table/iot-fleet-dev-registry/index/certExpiry"},
		"dynamodb:GetItem":           {"arn:aws:dynamodb:eu-central-1:123456789012:table/iot-fleet-dev-registry"},
		"dynamodb:UpdateItem":        {"arn:aws:dynamodb:eu-central-1:123456789012:table/iot-fleet-dev-registry"},
		"iot:ListThingsInThingGroup": {"arn:aws:iot:eu-central-1:123456789012:thinggroup/iot-fleet-dev"},
		"iot:Publish":                {"arn:aws:iot:eu-central-1:123456789012:topic/cmd/fleet/*/rotate/request"},
	}, grants(t, str(rec.find(t, "aws:iam/rolePolicy:RolePolicy", LambdaCertScan), "policy")))

	// The rule sends rotation messages to the rotation Lambda, with an
	// error action, and IoT may invoke the Lambda only for this rule.
	rule := rec.find(t, "aws:iot/topicRule:TopicRule", "rotation-rule")
	assert.Equal(t, "iot_fleet_dev_rotation", str(rule, "name"))
	assert.Equal(t, certrotate.RuleSQL, str(rule, "sql"))
	lambdas := rule["lambdas"].ArrayValue()
	require.Len(t, lambdas, 1)
	assert.Equal(t, "arn:aws:mock:::"+LambdaCertRotate, lambdas[0].ObjectValue()["functionArn"].StringValue())
	assert.Equal(t, "/aws/iot/iot-fleet-dev/rule-errors", str(rule, "errorAction", "cloudwatchLogs", "logGroupName"))
	perm := rec.find(t, "aws:lambda/permission:Permission", "rotation-rule-invoke")
	assert.Equal(t, "iot.amazonaws.com", str(perm, "principal"))
	assert.Equal(t, "lambda:InvokeFunction", str(perm, "action"))
	assert.Equal(t, "arn:aws:iot:eu-central-1:123456789012:rule/iot_fleet_dev_rotation", str(perm, "sourceArn"))
	assert.Equal(t, "123456789012", str(perm, "sourceAccount"))

	// Daily schedule invoking the scan with {}; its role may do only that.
	assertInvokeSchedule(t, rec, "rotation-scan", "rotation-schedule", "rate(1 day)", LambdaCertScan)
}

func TestRotationRequiresArgs(t *testing.T) {
	t.Parallel()
	e, err := runMocked(t, func(ctx *pulumi.Context) error {
		_, err := NewRotation(ctx, "rotation", RotationArgs{Prefix: "iot-fleet-dev"})
		return err
	})
	require.Error(t, err)
	assert.Empty(t, e.types())
}
