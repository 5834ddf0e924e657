// Package observers keeps the callbacks of the local IoT Core's
// test-facing observation points (the Jobs service's answers, the broker's
// CONNECT decisions): added and removed at any time, called in order.
package observers

import (
	"maps"
	"slices"
	"sync"
)

// Set is a set of callbacks of T. The zero value is ready to use.
type Set[T any] struct {
	mu  sync.Mutex // held while callbacks run: they see values in order
	fns map[int]func(T)
	seq int
}

// Add registers fn; remove unregisters it.
func (s *Set[T]) Add(fn func(T)) (remove func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	id := s.seq
	if s.fns == nil {
		s.fns = map[int]func(T){}
	}
	s.fns[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.fns, id)
	}
}

// Active reports whether any callback is registered, so a caller can skip
// preparing a value nobody observes.
func (s *Set[T]) Active() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fns) > 0
}

// Notify calls every callback with v, in the order they were added, one
// Notify at a time. A callback must not call back into s.
func (s *Set[T]) Notify(v T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range slices.Sorted(maps.Keys(s.fns)) {
		s.fns[id](v)
	}
}
