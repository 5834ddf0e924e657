package iottest_test

import (
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"
	dptypes "github.com/aws/aws-sdk-go-v2/service/iotdataplane/types"
	"github.com/aws/smithy-go"

	"github.com/iot-fleet/iot-fleet/sim/iottest"
)

// The data plane records what a real iotdataplane client publishes, and
// a fault injected for one topic reaches the client as AWS's exception
// for that topic only, publishing nothing.
func TestDataPlanePublishAndFaults(t *testing.T) {
	srv := iottest.Start(t, iottest.Options{})
	client := srv.DataClient()
	ctx := iottest.Context(t, time.Minute)
	publish := func(topic string, qos int32) error {
		_, err := client.Publish(ctx, &iotdataplane.PublishInput{Topic: aws.String(topic), Qos: qos, Payload: []byte(`{"n":1}`)})
		return err
	}

	if err := publish("cmd/fleet/dev-1/ssm", 1); err != nil {
		t.Fatalf("publish: %v", err)
	}
	srv.FailNextPublish("cmd/fleet/dev-2/ssm", iottest.Throttled())
	err := publish("cmd/fleet/dev-2/ssm", 1)
	var throttled *dptypes.ThrottlingException
	if !errors.As(err, &throttled) {
		t.Fatalf("publish with a throttling fault: %v, want the data plane's ThrottlingException", err)
	}
	if err := publish("cmd/fleet/dev-3/ssm", 0); err != nil {
		t.Fatalf("a fault for another topic failed this one: %v", err)
	}
	if err := publish("cmd/fleet/dev-2/ssm", 1); err != nil {
		t.Fatalf("the fault was used up, publish again: %v", err)
	}

	srv.FailNextPublish("", errors.New("disk on fire"))
	err = publish("cmd/fleet/dev-4/ssm", 1)
	var api smithy.APIError
	if !errors.As(err, &api) || api.ErrorCode() != "InternalFailureException" {
		t.Fatalf("publish with a plain fault: %v, want InternalFailureException", err)
	}

	// AWS's topic rules still apply.
	var invalid *dptypes.InvalidRequestException
	if err := publish("cmd/fleet/+/ssm", 1); !errors.As(err, &invalid) {
		t.Fatalf("wildcard topic: %v, want InvalidRequestException", err)
	}

	want := []iottest.Message{
		{Topic: "cmd/fleet/dev-1/ssm", QoS: 1},
		{Topic: "cmd/fleet/dev-3/ssm", QoS: 0},
		{Topic: "cmd/fleet/dev-2/ssm", QoS: 1},
	}
	got := srv.Messages()
	if len(got) != len(want) {
		t.Fatalf("messages %+v, want %+v", got, want)
	}
	for i, m := range got {
		if m.Topic != want[i].Topic || m.QoS != want[i].QoS || string(m.Payload) != `{"n":1}` {
			t.Errorf("message %d: %s qos %d %q, want %s qos %d", i, m.Topic, m.QoS, m.Payload, want[i].Topic, want[i].QoS)
		}
	}
}
