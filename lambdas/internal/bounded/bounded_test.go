package bounded

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGroupBoundsConcurrency(t *testing.T) {
	const limit, n = 3, 40
	g := NewGroup(limit)
	var running, peak, done atomic.Int32
	started := make(chan struct{}, n)
	release := make(chan struct{})
	go func() {
		// Let the first wave fill every slot before any function returns.
		for range limit {
			<-started
		}
		close(release)
	}()
	for range n {
		require.NoError(t, g.Go(context.Background(), func() {
			r := running.Add(1)
			for {
				p := peak.Load()
				if r <= p || peak.CompareAndSwap(p, r) {
					break
				}
			}
			started <- struct{}{}
			<-release
			running.Add(-1)
			done.Add(1)
		}))
	}
	g.Wait()
	assert.Equal(t, int32(n), done.Load(), "every function ran before Wait returned")
	assert.Equal(t, int32(limit), peak.Load(), "never more than limit at once, and limit reached")
}

func TestGroupGoStopsWhenContextEnds(t *testing.T) {
	g := NewGroup(1)
	block := make(chan struct{})
	require.NoError(t, g.Go(context.Background(), func() { <-block }))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var ran atomic.Bool
	err := g.Go(ctx, func() { ran.Store(true) })
	require.ErrorIs(t, err, context.Canceled)
	close(block)
	g.Wait()
	assert.False(t, ran.Load(), "fn does not run once ctx has ended")
}
