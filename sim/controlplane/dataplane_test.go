package controlplane_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/controlplane"
	"github.com/iot-fleet/iot-fleet/sim/shadow"
)

type published struct {
	mu     sync.Mutex
	topics []string
}

func (p *published) list() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.topics...)
}

// dataPlane serves the data plane alone and returns a real
// aws-sdk-go-v2 iotdataplane client for it and what reached Publish.
func dataPlane(t *testing.T) (*iotdataplane.Client, *published) {
	t.Helper()
	h := controlplane.New(nil, nil, func() string { return "127.0.0.1:8883" }, nil)
	pub := &published{}
	h.ServeDataPlane(controlplane.DataPlane{
		Publish: func(topic string, _ []byte, _ byte) {
			pub.mu.Lock()
			defer pub.mu.Unlock()
			pub.topics = append(pub.topics, topic)
		},
		Shadows: shadow.New(shadow.Options{}),
		Now:     func() int64 { return 1 },
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	client := iotdataplane.New(iotdataplane.Options{
		BaseEndpoint: aws.String(srv.URL), Region: "local-1",
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDLOCAL", "secret", ""),
		RetryMaxAttempts: 1,
	})
	return client, pub
}

// Publish applies AWS IoT's topic limits: at most 7 forward slashes and
// 256 bytes; a Basic Ingest topic is refused with a message naming it.
func TestPublishTopicLimits(t *testing.T) {
	client, pub := dataPlane(t)
	ctx := context.Background()
	publish := func(topic string) error {
		_, err := client.Publish(ctx, &iotdataplane.PublishInput{Topic: aws.String(topic), Payload: []byte(`{}`)})
		return err
	}
	seven := "a/b/c/d/e/f/g/h"
	require.NoError(t, publish(seven), "7 slashes")
	require.NoError(t, publish(strings.Repeat("x", 256)), "256 bytes")

	err := publish(seven + "/i")
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	assert.Contains(t, err.Error(), "8 forward slashes, at most 7")

	err = publish(strings.Repeat("x", 257))
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	assert.Contains(t, err.Error(), "257 bytes, at most 256")

	// Basic Ingest: the prefix's 3 slashes do not count, and the topic
	// is refused, naming Basic Ingest and the rule.
	err = publish("$aws/rules/device_status/" + seven)
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	assert.Contains(t, err.Error(), "does not serve Basic Ingest")
	assert.Contains(t, err.Error(), `"device_status"`)
	err = publish("$AWS/Rules/device_status/" + seven + "/i")
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	assert.Contains(t, err.Error(), "8 forward slashes, at most 7")

	assert.Equal(t, []string{seven, strings.Repeat("x", 256)}, pub.list(), "only the valid publishes were delivered")
}
