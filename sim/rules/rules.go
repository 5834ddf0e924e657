// Package rules is the rules engine of the simulated IoT Core: topic rules
// that see the messages clients publish, evaluate the rule's SQL
// projection (see Statement) and run the rule's action with the result,
// as AWS IoT invokes a Lambda action asynchronously. An action that fails
// is retried (AWS's asynchronous Lambda invocation retries twice); one that
// still fails is logged, as the rule's error action would record it.
package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Action receives a rule's projection (a JSON object).
type Action func(ctx context.Context, event []byte) error

// Rule is one topic rule.
type Rule struct {
	// Name identifies the rule (unique).
	Name string
	// SQL is the rule statement (see Statement).
	SQL    string
	Action Action
}

// Options configure an Engine.
type Options struct {
	// Attempts bounds the runs of a failing action; default 3 (the first
	// invocation plus Lambda's two asynchronous retries).
	Attempts int
	// RetryDelay is the pause before the first retry, doubled after each;
	// default 100ms (AWS waits about a minute; tests need seconds).
	RetryDelay time.Duration
	Now        func() time.Time
	Logger     *slog.Logger
}

type rule struct {
	name   string
	stmt   *Statement
	action Action
}

// Engine holds the rules and runs their actions. Safe for concurrent use.
type Engine struct {
	opts   Options
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.RWMutex
	rules  []*rule
	closed bool
	wg     sync.WaitGroup
}

// New returns an engine without rules.
func New(opts Options) *Engine {
	if opts.Attempts <= 0 {
		opts.Attempts = 3
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = 100 * time.Millisecond
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Engine{opts: opts, log: opts.Logger.With("component", "rules"), ctx: ctx, cancel: cancel}
}

// Add parses and installs a rule.
func (e *Engine) Add(r Rule) error {
	if r.Name == "" || r.Action == nil {
		return errors.New("rules: a rule needs a Name and an Action")
	}
	st, err := Parse(r.SQL)
	if err != nil {
		return fmt.Errorf("rules: rule %s: %w", r.Name, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, x := range e.rules {
		if x.name == r.Name {
			return fmt.Errorf("rules: rule %s already exists", r.Name)
		}
	}
	e.rules = append(e.rules, &rule{name: r.Name, stmt: st, action: r.Action})
	return nil
}

// Remove deletes a rule; it reports whether it existed.
func (e *Engine) Remove(name string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, x := range e.rules {
		if x.name == name {
			e.rules = append(e.rules[:i], e.rules[i+1:]...)
			return true
		}
	}
	return false
}

// Match reports whether any rule selects topic.
func (e *Engine) Match(topic string) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	for _, r := range e.rules {
		if r.stmt.Matches(topic) {
			return true
		}
	}
	return false
}

// Dispatch runs, in the background, the action of every rule whose filter
// matches msg.Topic. It returns at once (the publisher is acknowledged
// before the rules run, as in AWS IoT).
func (e *Engine) Dispatch(msg Message) {
	if msg.Received.IsZero() {
		msg.Received = e.opts.Now()
	}
	msg.Payload = append([]byte(nil), msg.Payload...)
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return
	}
	for _, r := range e.rules {
		if !r.stmt.Matches(msg.Topic) {
			continue
		}
		event, err := r.stmt.Project(msg)
		if err != nil {
			e.log.Warn("rule projection failed", "rule", r.name, "topic", msg.Topic, "error", err)
			continue
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.run(r, msg.Topic, event)
		}()
	}
}

func (e *Engine) run(r *rule, topic string, event []byte) {
	delay := e.opts.RetryDelay
	for attempt := 1; ; attempt++ {
		err := r.action(e.ctx, event)
		if err == nil {
			return
		}
		if attempt >= e.opts.Attempts || e.ctx.Err() != nil {
			e.log.Error("rule action failed", "rule", r.name, "topic", topic, "attempts", attempt, "error", err)
			return
		}
		e.log.Info("rule action failed, retrying", "rule", r.name, "topic", topic, "attempt", attempt, "error", err)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-e.ctx.Done():
			t.Stop()
			e.log.Error("rule action abandoned: engine closed", "rule", r.name, "topic", topic)
			return
		}
		delay *= 2
	}
}

// Wait blocks until every action dispatched so far has finished.
func (e *Engine) Wait() { e.wg.Wait() }

// Close stops accepting messages, cancels the running actions' context
// and waits for them.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.cancel()
	e.wg.Wait()
}
