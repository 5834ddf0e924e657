// Package backoff computes exponential retry delays with jitter so that a
// fleet of devices that lost the broker at the same moment does not come back
// in lockstep.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy describes an exponential backoff: the n-th retry (n starting at 0)
// waits a random duration in [d/2, d] where d = min(Max, Initial*2^n).
type Policy struct {
	Initial time.Duration
	Max     time.Duration
}

// Delay returns the jittered delay before retry number attempt (0-based).
func (p Policy) Delay(attempt int) time.Duration {
	d := p.ceiling(attempt)
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// ceiling is the un-jittered delay of attempt.
func (p Policy) ceiling(attempt int) time.Duration {
	initial, maxD := p.Initial, p.Max
	if initial <= 0 {
		initial = time.Second
	}
	if maxD < initial {
		maxD = initial
	}
	d := initial
	for i := 0; i < attempt && d < maxD; i++ {
		d *= 2
	}
	if d > maxD || d <= 0 {
		d = maxD
	}
	return d
}

// Sleep waits for d or until ctx is done, whichever comes first, and returns
// ctx.Err() in the latter case.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
