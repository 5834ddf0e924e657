package iotpolicy

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

var params = policy.Params{Partition: "aws", Region: "local-1", AccountID: "000000000000", TemplateName: "iot-fleet-dev"}

func compiled(t *testing.T) (claim, device *Policy) {
	t.Helper()
	cd, err := policy.Claim(params)
	require.NoError(t, err)
	dd, err := policy.Device(params)
	require.NoError(t, err)
	claim, err = Compile("claim", cd)
	require.NoError(t, err)
	device, err = Compile("device", dd)
	require.NoError(t, err)
	return claim, device
}

func TestStackPolicies(t *testing.T) {
	claim, device := compiled(t)
	a := params.ARN
	claimCtx := Context{ClientID: protocol.ClaimClientID("10000000a1b2c3d4")}
	devA := Context{ClientID: "dev-a", ThingName: "dev-a"}
	// The client id names a thing, but not one attached to this
	// certificate: Connection.Thing variables do not resolve.
	devAUnattached := Context{ClientID: "dev-a"}
	// Certificate of dev-a used with dev-b's client id.
	devAasB := Context{ClientID: "dev-b"}

	cases := []struct {
		name     string
		pol      *Policy
		ctx      Context
		action   string
		resource string
		want     Decision
	}{
		// Claim policy: only the provisioning topics.
		{"claim connects with provisioning client id", claim, claimCtx, ActionConnect, a("client", claimCtx.ClientID), Allowed},
		{"claim cannot connect with other client id", claim, Context{ClientID: "dev-a"}, ActionConnect, a("client", "dev-a"), ImplicitDeny},
		{"claim publishes CSR", claim, claimCtx, ActionPublish, a("topic", protocol.CreateCertFromCSRTopic), Allowed},
		{"claim publishes RegisterThing", claim, claimCtx, ActionPublish, a("topic", protocol.RegisterThingTopic("iot-fleet-dev")), Allowed},
		{"claim cannot RegisterThing another template", claim, claimCtx, ActionPublish, a("topic", protocol.RegisterThingTopic("other")), ImplicitDeny},
		{"claim cannot CreateKeysAndCertificate", claim, claimCtx, ActionPublish, a("topic", protocol.CreateKeysAndCertTopic), ImplicitDeny},
		{"claim subscribes CSR answers", claim, claimCtx, ActionSubscribe, a("topicfilter", protocol.CreateCertFromCSRTopic+"/+"), Allowed},
		{"claim subscribes accepted", claim, claimCtx, ActionSubscribe, a("topicfilter", protocol.CreateCertFromCSRAcceptedTopic), Allowed},
		{"claim receives accepted", claim, claimCtx, ActionReceive, a("topic", protocol.RegisterThingAcceptedTopic("iot-fleet-dev")), Allowed},
		{"claim cannot subscribe everything", claim, claimCtx, ActionSubscribe, a("topicfilter", "#"), ImplicitDeny},
		{"claim cannot publish device data", claim, claimCtx, ActionPublish, a("topic", protocol.DataTopic("dev-a", "status")), ImplicitDeny},
		{"claim cannot publish jobs", claim, claimCtx, ActionPublish, a("topic", protocol.JobsStartNextTopic("dev-a")), ImplicitDeny},
		{"claim cannot receive commands", claim, claimCtx, ActionReceive, a("topic", protocol.CommandTopic("dev-a", "ssm")), ImplicitDeny},

		// Device policy: the client id must be the attached thing.
		{"device connects as its thing", device, devA, ActionConnect, a("client", "dev-a"), Allowed},
		{"device cannot connect when thing not attached", device, devAUnattached, ActionConnect, a("client", "dev-a"), ImplicitDeny},
		{"device cannot connect as another thing", device, devAasB, ActionConnect, a("client", "dev-b"), ImplicitDeny},
		{"device publishes its jobs update", device, devA, ActionPublish, a("topic", protocol.JobsUpdateTopic("dev-a", "job1")), Allowed},
		{"device publishes its data", device, devA, ActionPublish, a("topic", protocol.DataTopic("dev-a", "status")), Allowed},
		{"device subscribes its notify-next", device, devA, ActionSubscribe, a("topicfilter", protocol.JobsNotifyNextTopic("dev-a")), Allowed},
		{"device subscribes its jobs wildcard", device, devA, ActionSubscribe, a("topicfilter", "$aws/things/dev-a/jobs/#"), Allowed},
		{"device subscribes its commands", device, devA, ActionSubscribe, a("topicfilter", "cmd/fleet/dev-a/#"), Allowed},
		{"device receives its commands", device, devA, ActionReceive, a("topic", protocol.CommandTopic("dev-a", "ssm")), Allowed},

		// Cross-device: A cannot touch B.
		{"A cannot publish B's jobs", device, devA, ActionPublish, a("topic", protocol.JobsUpdateTopic("dev-b", "job1")), ImplicitDeny},
		{"A cannot publish B's data", device, devA, ActionPublish, a("topic", protocol.DataTopic("dev-b", "status")), ImplicitDeny},
		{"A cannot subscribe B's jobs", device, devA, ActionSubscribe, a("topicfilter", protocol.JobsNotifyNextTopic("dev-b")), ImplicitDeny},
		{"A cannot subscribe B's commands", device, devA, ActionSubscribe, a("topicfilter", "cmd/fleet/dev-b/#"), ImplicitDeny},
		{"A cannot receive B's commands", device, devA, ActionReceive, a("topic", protocol.CommandTopic("dev-b", "ssm")), ImplicitDeny},
		{"A cannot subscribe all things", device, devA, ActionSubscribe, a("topicfilter", "$aws/things/+/jobs/#"), ImplicitDeny},
		{"A cannot subscribe cmd wildcard", device, devA, ActionSubscribe, a("topicfilter", "cmd/fleet/#"), ImplicitDeny},
		{"A cannot publish commands to itself", device, devA, ActionPublish, a("topic", protocol.CommandTopic("dev-a", "ssm")), ImplicitDeny},
		{"unattached device cannot publish its own topics", device, devAUnattached, ActionPublish, a("topic", protocol.DataTopic("dev-a", "status")), ImplicitDeny},
		{"device cannot use provisioning", device, devA, ActionPublish, a("topic", protocol.CreateCertFromCSRTopic), ImplicitDeny},
		{"wrong account", device, devA, ActionPublish, "arn:aws:iot:local-1:111111111111:topic/dt/fleet/dev-a/status", ImplicitDeny},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, Evaluate([]*Policy{tc.pol}, tc.action, tc.resource, tc.ctx))
		})
	}
}

func TestExplicitDenyWinsAndWildcards(t *testing.T) {
	_, device := compiled(t)
	deny, err := Compile("deny-status", policy.Document{Version: "2012-10-17", Statement: []policy.Statement{{
		Effect: "Deny", Action: []string{"iot:Publ*"}, Resource: []string{"arn:aws:iot:*:*:topic/dt/fleet/${iot:ClientId}/stat??"},
	}}})
	require.NoError(t, err)
	ctx := Context{ClientID: "dev-a", ThingName: "dev-a"}
	pols := []*Policy{device, deny}
	assert.Equal(t, ExplicitDeny, Evaluate(pols, ActionPublish, params.ARN("topic", "dt/fleet/dev-a/status"), ctx))
	assert.Equal(t, Allowed, Evaluate(pols, ActionPublish, params.ARN("topic", "dt/fleet/dev-a/statuses"), ctx), "? matches exactly one character")
	assert.Equal(t, Allowed, Evaluate(pols, ActionPublish, params.ARN("topic", "dt/fleet/dev-a/ota/progress"), ctx))
	assert.Equal(t, Allowed, Evaluate(pols, "IOT:PUBLISH", params.ARN("topic", "dt/fleet/dev-a/x"), ctx), "actions are case-insensitive")

	all, err := Compile("all", policy.Document{Statement: []policy.Statement{{Effect: "Allow", Action: []string{"iot:*"}, Resource: []string{"*"}}}})
	require.NoError(t, err)
	assert.Equal(t, Allowed, Evaluate([]*Policy{all}, ActionSubscribe, params.ARN("topicfilter", "#"), Context{}))
	assert.Equal(t, ImplicitDeny, Evaluate(nil, ActionSubscribe, params.ARN("topicfilter", "#"), Context{}))
}

func TestMQTTWildcardsAreLiteralInResources(t *testing.T) {
	p, err := Compile("lit", policy.Document{Statement: []policy.Statement{{
		Effect: "Allow", Action: []string{ActionSubscribe}, Resource: []string{"arn:aws:iot:local-1:000000000000:topicfilter/a/+/c"},
	}}})
	require.NoError(t, err)
	assert.Equal(t, Allowed, Evaluate([]*Policy{p}, ActionSubscribe, "arn:aws:iot:local-1:000000000000:topicfilter/a/+/c", Context{}))
	assert.Equal(t, ImplicitDeny, Evaluate([]*Policy{p}, ActionSubscribe, "arn:aws:iot:local-1:000000000000:topicfilter/a/b/c", Context{}))
}

func TestConditionsAndAttributes(t *testing.T) {
	p, err := Compile("cond", policy.Document{Statement: []policy.Statement{{
		Effect:    "Allow",
		Action:    []string{ActionPublish},
		Resource:  []string{"arn:aws:iot:local-1:000000000000:topic/site/${iot:Connection.Thing.Attributes[site]}/*"},
		Condition: map[string]map[string]string{"StringLike": {"iot:ClientId": "dev-*"}, "StringNotEquals": {"iot:Connection.Thing.ThingName": "dev-banned"}},
	}}})
	require.NoError(t, err)
	res := "arn:aws:iot:local-1:000000000000:topic/site/paris/temp"
	ok := Context{ClientID: "dev-a", ThingName: "dev-a", ThingAttributes: map[string]string{"site": "paris"}}
	assert.Equal(t, Allowed, Evaluate([]*Policy{p}, ActionPublish, res, ok))
	other := ok
	other.ThingAttributes = map[string]string{"site": "rome"}
	assert.Equal(t, ImplicitDeny, Evaluate([]*Policy{p}, ActionPublish, res, other))
	banned := Context{ClientID: "dev-banned", ThingName: "dev-banned", ThingAttributes: map[string]string{"site": "paris"}}
	assert.Equal(t, ImplicitDeny, Evaluate([]*Policy{p}, ActionPublish, res, banned))
	noThing := Context{ClientID: "dev-a"}
	assert.Equal(t, ImplicitDeny, Evaluate([]*Policy{p}, ActionPublish, res, noThing), "attribute variable needs an attached thing")
	wrongClient := Context{ClientID: "x-a", ThingName: "x-a", ThingAttributes: map[string]string{"site": "paris"}}
	assert.Equal(t, ImplicitDeny, Evaluate([]*Policy{p}, ActionPublish, res, wrongClient))
}

func TestCompileErrorsNameTheField(t *testing.T) {
	cases := map[string]struct {
		st   policy.Statement
		want string
	}{
		"effect":       {policy.Statement{Effect: "Maybe", Action: []string{"iot:Connect"}, Resource: []string{"*"}}, "Statement[0]: Effect \"Maybe\""},
		"no action":    {policy.Statement{Effect: "Allow", Resource: []string{"*"}}, "no Action"},
		"non iot":      {policy.Statement{Effect: "Allow", Action: []string{"s3:GetObject"}, Resource: []string{"*"}}, "not an iot: action"},
		"no resource":  {policy.Statement{Effect: "Allow", Action: []string{"iot:Connect"}}, "no Resource"},
		"unknown var":  {policy.Statement{Effect: "Allow", Action: []string{"iot:Connect"}, Resource: []string{"client/${iot:Certificate.Subject.CommonName}"}}, "not supported"},
		"unterminated": {policy.Statement{Effect: "Allow", Action: []string{"iot:Connect"}, Resource: []string{"client/${iot:ClientId"}}, "unterminated"},
		"operator":     {policy.Statement{Effect: "Allow", Action: []string{"iot:Connect"}, Resource: []string{"*"}, Condition: map[string]map[string]string{"NumericEquals": {"iot:ClientId": "1"}}}, "operator \"NumericEquals\""},
		"cond key":     {policy.Statement{Effect: "Allow", Action: []string{"iot:Connect"}, Resource: []string{"*"}, Condition: map[string]map[string]string{"Bool": {"aws:SecureTransport": "true"}}}, "key \"aws:SecureTransport\""},
		"bool value":   {policy.Statement{Effect: "Allow", Action: []string{"iot:Connect"}, Resource: []string{"*"}, Condition: map[string]map[string]string{"Bool": {"iot:Connection.Thing.IsAttached": "yes"}}}, "want true or false"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Compile("p", policy.Document{Version: "2012-10-17", Statement: []policy.Statement{tc.st}})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := Compile("p", policy.Document{Version: "2012-10-17"})
	assert.ErrorContains(t, err, "no Statement")
}

func TestLiteralEscapes(t *testing.T) {
	p, err := Compile("esc", policy.Document{Statement: []policy.Statement{{Effect: "Allow", Action: []string{ActionPublish}, Resource: []string{"topic/a${*}b"}}}})
	require.NoError(t, err)
	assert.Equal(t, Allowed, Evaluate([]*Policy{p}, ActionPublish, "topic/a*b", Context{}))
	assert.Equal(t, ImplicitDeny, Evaluate([]*Policy{p}, ActionPublish, "topic/axxb", Context{}))
}
