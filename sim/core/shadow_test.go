package core

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// A device uses its own fleet-agent shadow over MQTT through the stack's
// device policy; another thing's shadow is denied (the connection closed,
// as AWS IoT does) and the forged update changes nothing.
func TestShadowOverMQTTWithDevicePolicy(t *testing.T) {
	c := startCore(t, Options{})
	thingA, credsA, err := c.RegisterDevice("aaaaaaaaaaaaaaaa")
	require.NoError(t, err)
	thingB, credsB, err := c.RegisterDevice("bbbbbbbbbbbbbbbb")
	require.NoError(t, err)
	name := protocol.AgentShadowName

	b := mustConnect(t, c, credsB, thingB)
	b.mustSubscribe(protocol.ShadowUpdateTopic(thingB, name)+"/accepted", protocol.ShadowDeltaTopic(thingB, name),
		protocol.ShadowGetTopic(thingB, name)+"/rejected", protocol.ShadowGetTopic(thingB, name)+"/accepted")
	b.mustPublish(protocol.ShadowGetTopic(thingB, name), `{"clientToken":"g0"}`)
	rej := decode[protocol.ShadowError](t, b.await(protocol.ShadowGetTopic(thingB, name)+"/rejected"))
	assert.Equal(t, protocol.ShadowError{Code: 404, Message: "No shadow exists with name: 'fleet-agent'", Timestamp: rej.Timestamp, ClientToken: "g0"}, rej)

	b.mustPublish(protocol.ShadowUpdateTopic(thingB, name), `{"state":{"reported":{"logLevel":"info"}},"clientToken":"u1"}`)
	acc := decode[protocol.ShadowResponse](t, b.await(protocol.ShadowUpdateTopic(thingB, name)+"/accepted"))
	assert.Equal(t, int64(1), acc.Version)
	assert.Equal(t, "u1", acc.ClientToken)

	// The operator sets desired state; the device gets the delta.
	_, err = c.Shadows().Update(thingB, name, []byte(`{"state":{"desired":{"logLevel":"debug"}}}`))
	require.NoError(t, err)
	delta := decode[protocol.ShadowDelta](t, b.await(protocol.ShadowDeltaTopic(thingB, name)))
	assert.Equal(t, map[string]any{"logLevel": "debug"}, delta.State)
	assert.Equal(t, int64(2), delta.Version)

	// A cannot subscribe to B's shadow...
	a := mustConnect(t, c, credsA, thingA)
	require.Error(t, a.subscribe(protocol.ShadowDeltaTopic(thingB, name)))
	a.waitLost()
	// ...nor update it...
	a = mustConnect(t, c, credsA, thingA)
	_ = a.publish(protocol.ShadowUpdateTopic(thingB, name), `{"state":{"desired":{"logLevel":"error"}}}`)
	a.waitLost()
	// ...nor use another shadow of its own or its classic shadow.
	a = mustConnect(t, c, credsA, thingA)
	_ = a.publish(protocol.ShadowUpdateTopic(thingA, "other"), `{"state":{"reported":{"x":1}}}`)
	a.waitLost()
	a = mustConnect(t, c, credsA, thingA)
	_ = a.publish("$aws/things/"+thingA+"/shadow/update", `{"state":{"reported":{"x":1}}}`)
	a.waitLost()
	_, ok := c.Shadows().Get(thingA, "other")
	assert.False(t, ok)
	_, ok = c.Shadows().Get(thingA, "")
	assert.False(t, ok)

	doc, ok := c.Shadows().Get(thingB, name)
	require.True(t, ok)
	assert.Equal(t, int64(2), doc.Version, "A's forged update had no effect")
	assert.Equal(t, map[string]any{"logLevel": "debug"}, doc.State.Desired)

	// A's own shadow works, and B does not see A's answers.
	a = mustConnect(t, c, credsA, thingA)
	a.mustSubscribe(protocol.ShadowUpdateTopic(thingA, name) + "/accepted")
	a.mustPublish(protocol.ShadowUpdateTopic(thingA, name), `{"state":{"reported":{"ok":true}}}`)
	a.await(protocol.ShadowUpdateTopic(thingA, name) + "/accepted")
}
