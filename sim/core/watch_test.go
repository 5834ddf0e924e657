package core

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/faults"
)

func watchNext(t *testing.T, ch <-chan Message) Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		require.True(t, ok, "watch closed")
		return m
	case <-time.After(15 * time.Second):
		t.Fatal("no watched message within 15s")
	}
	return Message{}
}

// A watch sees, in order and without loss, what clients publish on its
// filter (also API requests), and the messages still reach subscribers;
// a refused publish is not seen.
func TestWatchSeesPublishesInOrderAndDeliveryGoesOn(t *testing.T) {
	c := startCore(t, Options{})
	thing, creds, err := c.RegisterDevice(allowedSerial)
	require.NoError(t, err)
	otherThing, _, err := c.RegisterDevice("10000000a1b2c3d5")
	require.NoError(t, err)
	_, _, err = c.Watch("a/+/#/b")
	require.ErrorContains(t, err, "#")

	data, stop, err := c.Watch("dt/fleet/#")
	require.NoError(t, err)
	defer stop()
	jobsSeen, stopJobs, err := c.Watch("$aws/things/+/jobs/#")
	require.NoError(t, err)
	defer stopJobs()

	dev := mustConnect(t, c, creds, thing)
	dev.mustSubscribe(protocol.JobsGetPendingTopic(thing) + "/accepted")

	const n = 300 // more than a small buffer: the watch queues
	for i := range n {
		dev.mustPublish(protocol.DataTopic(thing, "status"), fmt.Sprintf("m%03d", i))
	}
	for i := range n {
		m := watchNext(t, data)
		assert.Equal(t, fmt.Sprintf("m%03d", i), string(m.Payload))
		assert.Equal(t, thing, m.ClientID)
		assert.Equal(t, protocol.DataTopic(thing, "status"), m.Topic)
	}

	dev.mustPublish(protocol.JobsGetPendingTopic(thing), `{"clientToken":"x"}`)
	m := watchNext(t, jobsSeen)
	assert.Equal(t, protocol.JobsGetPendingTopic(thing), m.Topic, "an API request is seen")
	dev.await(protocol.JobsGetPendingTopic(thing) + "/accepted") // and still answered

	// Publishing on another thing's topic is refused: the connection is
	// closed and the watch sees nothing of it.
	_ = dev.publish(protocol.DataTopic(otherThing, "status"), "forbidden")
	require.Error(t, dev.waitLost())
	dev2 := mustConnect(t, c, creds, thing)
	dev2.mustPublish(protocol.DataTopic(thing, "status"), "after")
	assert.Equal(t, "after", string(watchNext(t, data).Payload))

	stop()
	_, open := <-data
	assert.False(t, open, "stop closes the channel")
}

// Count is exact once a request is answered; an injected rejection
// answers a provisioning request on /rejected without acting on it.
func TestCountAndInjectedProvisioningRejection(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	csrs, stop, err := c.Count(protocol.CreateCertFromCSRTopic)
	require.NoError(t, err)
	defer stop()
	require.NoError(t, c.Faults().RejectRequests(faults.Rejection{
		Topic: protocol.CreateCertFromCSRTopic, StatusCode: 500, ErrorCode: protocol.ErrCodeInternalError, ErrorMessage: "injected", Count: 1,
	}))
	cl := mustConnect(t, c, claim, protocol.ClaimClientID(allowedSerial))
	cl.mustSubscribe(protocol.CreateCertFromCSRTopic + "/+")
	csr, _ := newCSR(t)
	req := map[string]string{"certificateSigningRequest": csr}

	cl.mustPublish(protocol.CreateCertFromCSRTopic, req)
	m := cl.next()
	assert.Equal(t, protocol.Rejected(protocol.CreateCertFromCSRTopic), m.Topic)
	rej := decode[protocol.ErrorResponse](t, m)
	assert.Equal(t, protocol.ErrorResponse{StatusCode: 500, ErrorCode: protocol.ErrCodeInternalError, ErrorMessage: "injected"}, rej)
	assert.Equal(t, 1, csrs())
	assert.Len(t, c.Registry().Certificates(), 1, "the rejected request issued no certificate")

	cl.mustPublish(protocol.CreateCertFromCSRTopic, req)
	assert.Equal(t, protocol.Accepted(protocol.CreateCertFromCSRTopic), cl.next().Topic)
	assert.Equal(t, 2, csrs())
	stop()
	cl.mustPublish(protocol.CreateCertFromCSRTopic, req)
	cl.next()
	assert.Equal(t, 2, csrs(), "stop ends the count")
}
