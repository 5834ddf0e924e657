package devicetest

import (
	"slices"
	"sync"
	"time"
)

// Liveness records what a loop reports to its supervisor (the Liveness
// interface of mqttconn, outbox and agent) and asks for a beat every 20ms.
// The zero value is ready to use.
type Liveness struct {
	mu    sync.Mutex
	beats int
	busy  []time.Duration
}

// Beat counts a beat.
func (l *Liveness) Beat() { l.mu.Lock(); l.beats++; l.mu.Unlock() }

// Busy records an announced bounded wait.
func (l *Liveness) Busy(d time.Duration) { l.mu.Lock(); l.busy = append(l.busy, d); l.mu.Unlock() }

// Interval is how often the loop must beat while it waits.
func (l *Liveness) Interval() time.Duration { return 20 * time.Millisecond }

// Beats returns how many beats were reported so far.
func (l *Liveness) Beats() int { l.mu.Lock(); defer l.mu.Unlock(); return l.beats }

// Announced returns the durations announced with Busy so far, in order.
func (l *Liveness) Announced() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.busy)
}
