package backoff

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDelayGrowsWithinJitterBoundsAndCaps(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second}
	ceilings := []time.Duration{100, 200, 400, 800, 1600, 2000, 2000, 2000}
	for attempt, c := range ceilings {
		ceiling := c * time.Millisecond
		for i := 0; i < 200; i++ {
			d := p.Delay(attempt)
			assert.GreaterOrEqual(t, d, ceiling/2, "attempt %d", attempt)
			assert.LessOrEqual(t, d, ceiling, "attempt %d", attempt)
		}
	}
	// Very large attempt numbers must not overflow into negative delays.
	assert.Equal(t, 2*time.Second, p.ceiling(1000))
}

func TestDelayIsJittered(t *testing.T) {
	p := Policy{Initial: time.Second, Max: time.Minute}
	seen := map[time.Duration]bool{}
	for i := 0; i < 50; i++ {
		seen[p.Delay(3)] = true
	}
	assert.Greater(t, len(seen), 1, "delays of the same attempt must differ")
}

func TestDefaultsAndSleepCancel(t *testing.T) {
	assert.Equal(t, time.Second, Policy{}.ceiling(0))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, Sleep(ctx, time.Hour), context.Canceled)
	require.NoError(t, Sleep(context.Background(), time.Millisecond))
}
