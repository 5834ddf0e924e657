package agent

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func failedWithin(t *testing.T, s *Supervisor) error {
	t.Helper()
	select {
	case <-s.Failed():
		return s.Err()
	case <-time.After(10 * time.Second):
		t.Fatal("the supervisor did not fail")
		return nil
	}
}

func TestSupervisorLoopEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(ctx context.Context) error
		want string
	}{
		{"returns nil", func(context.Context) error { return nil }, "agent: loop l stopped"},
		{"returns an error", func(context.Context) error { return errors.New("disk gone") }, "agent: loop l stopped: disk gone"},
		{"panics", func(context.Context) error { panic("boom") }, "agent: loop l panicked: boom"},
		{"goroutine exits", func(context.Context) error { runtime.Goexit(); return nil }, "agent: loop l: its goroutine exited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSupervisor(time.Hour, nil)
			s.Go(context.Background(), s.Register("l"), tc.fn)
			assert.EqualError(t, failedWithin(t, s), tc.want)
			require.True(t, s.Wait(10*time.Second))
			assert.Empty(t, s.States(), "an ended loop is not listed")
		})
	}

	// A loop that returns because the agent stops is no failure.
	s := NewSupervisor(time.Hour, nil)
	ctx, cancel := context.WithCancel(context.Background())
	s.Go(ctx, s.Register("l"), func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	cancel()
	require.True(t, s.Wait(10*time.Second))
	assert.NoError(t, s.Err())
}

func TestSupervisorOverdueBusy(t *testing.T) {
	const timeout = 50 * time.Millisecond
	s := NewSupervisor(timeout, nil)
	l := s.Register("l")
	assert.Equal(t, timeout/3, l.Interval())
	assert.Empty(t, s.Overdue(), "a new loop has its timeout to beat")
	require.Eventually(t, func() bool { return len(s.Overdue()) == 1 }, 10*time.Second, time.Millisecond)
	assert.Contains(t, s.Overdue()[0], "l (late ")

	l.Beat()
	assert.Empty(t, s.Overdue())

	// Busy: a bounded blocking operation is not a hang until its bound
	// (plus the timeout) has passed.
	l.Busy(time.Hour)
	start := time.Now()
	require.Eventually(t, func() bool { return time.Since(start) > 4*timeout }, 10*time.Second, time.Millisecond)
	assert.Empty(t, s.Overdue(), "within Busy's bound")
	l.Busy(0)
	require.Eventually(t, func() bool { return len(s.Overdue()) == 1 }, 10*time.Second, time.Millisecond)

	// The first failure wins.
	s.Fail(errors.New("first"))
	s.Fail(errors.New("second"))
	assert.EqualError(t, s.Err(), "first")
}

func TestSupervisorRunPhase(t *testing.T) {
	s := NewSupervisor(time.Hour, nil)
	var seen []LoopState
	err := s.RunPhase(context.Background(), "provisioning", func(ctx context.Context, l *Loop) error {
		seen = s.States()
		l.Busy(time.Minute)
		return errors.New("serial unreadable")
	})
	require.EqualError(t, err, "serial unreadable", "the phase's own result")
	assert.Equal(t, []LoopState{{Name: "provisioning"}}, seen, "supervised while it runs")
	assert.Empty(t, s.States(), "out of supervision once it returned")

	// A failure of the agent (a hang) ends the wait for a phase that
	// does not return.
	release := make(chan struct{})
	defer close(release)
	go func() {
		for len(s.States()) == 0 {
			time.Sleep(time.Millisecond)
		}
		s.Fail(fmt.Errorf("%w: provisioning", errHung))
	}()
	err = s.RunPhase(context.Background(), "provisioning", func(ctx context.Context, l *Loop) error {
		<-release
		return nil
	})
	require.ErrorIs(t, err, errHung)
}
