// Package bounded runs work on a bounded number of goroutines, the way the
// Lambdas fan out per-device AWS calls.
package bounded

import (
	"context"
	"sync"
)

// Group runs functions on at most limit goroutines at once. Use NewGroup.
type Group struct {
	sem chan struct{}
	wg  sync.WaitGroup
}

// NewGroup returns a group running at most limit (at least 1) functions
// at once.
func NewGroup(limit int) *Group {
	return &Group{sem: make(chan struct{}, limit)}
}

// Go waits until fewer than limit functions run, then runs fn on a new
// goroutine. If ctx ends first, Go returns ctx's error and does not run fn.
func (g *Group) Go(ctx context.Context, fn func()) error {
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer func() { <-g.sem }()
		fn()
	}()
	return nil
}

// Wait waits for every function started with Go to return.
func (g *Group) Wait() { g.wg.Wait() }
