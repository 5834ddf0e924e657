package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Supervision (docs: device/README.md, "Supervision").
//
// Every long-running loop of the agent (the connection, the outbox, the
// jobs engine, the features' goroutines) runs under the Supervisor through
// Go and holds a *Loop. The loop calls Beat on every turn and at least
// every Interval while it waits, so a beat proves the loop is turning, not
// merely that its goroutine exists. Before it blocks in a bounded operation
// (a connect, a publish waiting for its PUBACK, a backoff sleep) it calls
// Busy with that bound, and the supervisor expects no beat until it has
// passed. Long work (a job step, an OTA install of an hour) does not run
// on a supervised loop: it runs beside it, bounded by its own timeout
// (jobs.stepTimeout, ota.installTimeout), while the loop keeps answering.
//
// The agent pings the systemd watchdog only while no loop is overdue; a
// loop that returns, panics or whose goroutine exits while the agent is not
// stopping fails the agent, which then exits non-zero (Restart=on-failure);
// a loop overdue for a whole hang limit fails it as well, so a hang is
// acted on even where no systemd watchdog runs.

// Liveness is how a loop reports that it is alive. *Loop implements it;
// device/mqttconn and device/outbox declare the same method set.
type Liveness interface {
	// Beat reports that the loop is turning.
	Beat()
	// Busy announces that the loop blocks for up to d in a bounded
	// operation; the next beat is expected within d plus the loop's
	// timeout.
	Busy(d time.Duration)
	// Interval is how often a waiting loop must beat.
	Interval() time.Duration
}

// Loop is one supervised loop.
type Loop struct {
	s       *Supervisor
	name    string
	timeout time.Duration

	mu     sync.Mutex
	due    time.Time // the next beat is expected before due
	exited bool
}

// Name is the loop's name.
func (l *Loop) Name() string { return l.name }

// Beat implements Liveness.
func (l *Loop) Beat() {
	if h := l.s.hook; h != nil {
		h(l.name)
	}
	l.mu.Lock()
	l.due = time.Now().Add(l.timeout)
	l.mu.Unlock()
}

// Busy implements Liveness.
func (l *Loop) Busy(d time.Duration) {
	l.mu.Lock()
	l.due = time.Now().Add(max(d, 0) + l.timeout)
	l.mu.Unlock()
}

// Interval implements Liveness: a third of the loop's timeout, so one
// late beat is not yet a hang.
func (l *Loop) Interval() time.Duration { return l.timeout / 3 }

// LoopState is a loop's health at one moment.
type LoopState struct {
	Name string `json:"name"`
	// Overdue is how long the expected beat is late (0: alive).
	Overdue time.Duration `json:"overdue,omitempty"`
}

// Supervisor runs and watches the agent's loops.
type Supervisor struct {
	hook    func(loop string)
	timeout time.Duration

	mu     sync.Mutex
	loops  []*Loop
	wg     sync.WaitGroup
	failed chan struct{}
	err    error
}

// NewSupervisor returns a supervisor whose loops must beat within timeout
// (Busy extends it). hook, if not nil, is called by every Beat on the
// beating goroutine (tests kill or stall a loop there).
func NewSupervisor(timeout time.Duration, hook func(loop string)) *Supervisor {
	return &Supervisor{timeout: timeout, hook: hook, failed: make(chan struct{})}
}

// Failed is closed when a loop failed the agent; Err says why.
func (s *Supervisor) Failed() <-chan struct{} { return s.failed }

// Err is the first failure (nil while none).
func (s *Supervisor) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Fail fails the agent with err (the first failure wins).
func (s *Supervisor) Fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	close(s.failed)
}

// Register adds a loop; run it with Go. (A loop is registered first when
// the component that beats it is built before it runs: the connection,
// the outbox.)
func (s *Supervisor) Register(name string) *Loop {
	l := &Loop{s: s, name: name, timeout: s.timeout, due: time.Now().Add(s.timeout)}
	s.mu.Lock()
	s.loops = append(s.loops, l)
	s.mu.Unlock()
	return l
}

// Go runs fn as loop l on a new goroutine. If fn returns, panics or its
// goroutine exits (runtime.Goexit) before ctx is done, the agent fails.
func (s *Supervisor) Go(ctx context.Context, l *Loop, fn func(ctx context.Context) error) {
	name := l.name
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		returned := false
		var err error
		defer func() {
			l.mu.Lock()
			l.exited = true
			l.mu.Unlock()
			r := recover()
			switch {
			case r != nil:
				s.Fail(fmt.Errorf("agent: loop %s panicked: %v", name, r))
			case ctx.Err() != nil:
			case !returned:
				s.Fail(fmt.Errorf("agent: loop %s: its goroutine exited", name))
			case err != nil:
				s.Fail(fmt.Errorf("agent: loop %s stopped: %w", name, err))
			default:
				s.Fail(fmt.Errorf("agent: loop %s stopped", name))
			}
		}()
		err = fn(ctx)
		returned = true
	}()
}

// RunPhase runs fn, a phase of the start that has no loop of its own
// (first-boot provisioning, resuming a recovery), as the supervised loop
// name: fn announces each of its bounded waits on the loop (Busy), and the
// loop leaves supervision when fn returns. If the agent fails meanwhile (a
// hang of this or another loop), RunPhase returns that failure without
// waiting for fn: the process exits anyway.
func (s *Supervisor) RunPhase(ctx context.Context, name string, fn func(ctx context.Context, l *Loop) error) error {
	l := s.Register(name)
	defer func() {
		l.mu.Lock()
		l.exited = true
		l.mu.Unlock()
	}()
	done := make(chan error, 1)
	go func() { done <- fn(ctx, l) }()
	select {
	case err := <-done:
		return err
	case <-s.failed:
		return s.Err()
	}
}

// Wait waits up to d for the loops started with Go to return (their
// context is done); it reports whether they all did. A hung loop is left
// behind: the process exits anyway.
func (s *Supervisor) Wait(d time.Duration) bool {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// States reports every running loop's health.
func (s *Supervisor) States() []LoopState {
	s.mu.Lock()
	loops := slices.Clone(s.loops)
	s.mu.Unlock()
	now := time.Now()
	out := make([]LoopState, 0, len(loops))
	for _, l := range loops {
		l.mu.Lock()
		st := LoopState{Name: l.name}
		if now.After(l.due) {
			st.Overdue = now.Sub(l.due)
		}
		exited := l.exited
		l.mu.Unlock()
		if !exited {
			out = append(out, st)
		}
	}
	return out
}

// Overdue lists the loops whose beat is late, e.g. "outbox (late 3s)".
func (s *Supervisor) Overdue() []string {
	var out []string
	for _, st := range s.States() {
		if st.Overdue > 0 {
			out = append(out, fmt.Sprintf("%s (late %s)", st.Name, st.Overdue.Round(time.Millisecond)))
		}
	}
	return out
}

// overdueNames lists the late loops by name only (STATUS= changes when
// the set changes, not with every tick of lateness).
func (s *Supervisor) overdueNames() []string {
	var out []string
	for _, st := range s.States() {
		if st.Overdue > 0 {
			out = append(out, st.Name)
		}
	}
	return out
}

// errHung is the failure of a loop overdue for the whole hang limit.
var errHung = errors.New("agent: loops stopped beating")
