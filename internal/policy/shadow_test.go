package policy_test

import (
	"testing"

	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/iotpolicy"
)

var shadowParams = policy.Params{Partition: "aws", Region: "eu-west-1", AccountID: "123456789012", TemplateName: "iot-fleet-dev"}

// The device policy, evaluated as AWS IoT evaluates it (the local IoT
// Core's evaluator), grants a thing its own fleet-agent shadow only; the
// claim policy grants no shadow at all.
func TestShadowGrants(t *testing.T) {
	dev, err := policy.Device(shadowParams)
	if err != nil {
		t.Fatal(err)
	}
	claim, err := policy.Claim(shadowParams)
	if err != nil {
		t.Fatal(err)
	}
	devP, err := iotpolicy.Compile("device", dev)
	if err != nil {
		t.Fatal(err)
	}
	claimP, err := iotpolicy.Compile("claim", claim)
	if err != nil {
		t.Fatal(err)
	}
	const me, other = "dev-1000000000000001", "dev-1000000000000002"
	ctx := iotpolicy.Context{ClientID: me, ThingName: me}
	arn := shadowParams.ARN
	own := protocol.NamedShadowPrefix(me, protocol.AgentShadowName)
	theirs := protocol.NamedShadowPrefix(other, protocol.AgentShadowName)
	cases := []struct {
		action, kind, name string
		want               bool
	}{
		{iotpolicy.ActionPublish, "topic", own + "/update", true},
		{iotpolicy.ActionPublish, "topic", own + "/get", true},
		{iotpolicy.ActionPublish, "topic", own + "/delete", true},
		{iotpolicy.ActionSubscribe, "topicfilter", own + "/update/delta", true},
		{iotpolicy.ActionSubscribe, "topicfilter", own + "/get/accepted", true},
		{iotpolicy.ActionReceive, "topic", own + "/update/accepted", true},
		{iotpolicy.ActionReceive, "topic", own + "/update/documents", true},
		// Not the service's answers: a device cannot forge them.
		{iotpolicy.ActionPublish, "topic", own + "/update/accepted", false},
		{iotpolicy.ActionPublish, "topic", own + "/update/delta", false},
		// Another thing's shadow.
		{iotpolicy.ActionPublish, "topic", theirs + "/update", false},
		{iotpolicy.ActionPublish, "topic", theirs + "/get", false},
		{iotpolicy.ActionSubscribe, "topicfilter", theirs + "/update/delta", false},
		{iotpolicy.ActionReceive, "topic", theirs + "/update/accepted", false},
		// Another shadow of its own, and the classic shadow.
		{iotpolicy.ActionPublish, "topic", protocol.NamedShadowPrefix(me, "other") + "/update", false},
		{iotpolicy.ActionPublish, "topic", "$aws/things/" + me + "/shadow/update", false},
		{iotpolicy.ActionSubscribe, "topicfilter", "$aws/things/" + me + "/shadow/#", false},
	}
	for _, tc := range cases {
		got := iotpolicy.Evaluate([]*iotpolicy.Policy{devP}, tc.action, arn(tc.kind, tc.name), ctx) == iotpolicy.Allowed
		if got != tc.want {
			t.Errorf("device %s %s: allowed=%v, want %v", tc.action, tc.name, got, tc.want)
		}
		claimCtx := iotpolicy.Context{ClientID: protocol.ClaimClientID("1000000000000001")}
		if iotpolicy.Evaluate([]*iotpolicy.Policy{claimP}, tc.action, arn(tc.kind, tc.name), claimCtx) == iotpolicy.Allowed {
			t.Errorf("claim policy allows %s %s", tc.action, tc.name)
		}
	}
}
