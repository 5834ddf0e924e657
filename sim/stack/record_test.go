package stack

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A long-running local IoT Core keeps only the latest data-plane
// publishes.
func TestDataPlaneRecordIsBounded(t *testing.T) {
	l := &LocalAWS{}
	for i := range maxPublishRecord + 5 {
		l.record(Message{Topic: fmt.Sprintf("dt/x/%d", i), QoS: 1})
	}
	got := l.published()
	require.Len(t, got, maxPublishRecord)
	assert.Equal(t, "dt/x/5", got[0].Topic, "the oldest were dropped")
	assert.Equal(t, fmt.Sprintf("dt/x/%d", maxPublishRecord+4), got[len(got)-1].Topic)
}
