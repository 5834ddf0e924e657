package awsiot

import (
	"context"
	"slices"
	"strings"
	"sync"
)

// calls records the control-plane calls a Client serves and holds the
// failures a test injects, so handler tests can run against this control
// plane (the one AWS stand-in) and still check what was called and how a
// handler copes with AWS errors.
type calls struct {
	mu     sync.Mutex
	log    []string           // "Op key"
	inject map[string][]error // "Op key" → errors of the next calls
	after  func(op, key string)
}

// FailNext makes the next len(errs) calls of op (e.g. "UpdateCertificate")
// on key fail with errs, in order, before they reach the registry. The key
// of a call is the certificate id (DescribeCertificate,
// UpdateCertificate, DeleteCertificate), the target ARN (AttachPolicy,
// DetachPolicy), or the thing name (thing and principal calls).
func (c *Client) FailNext(op, key string, errs ...error) {
	c.calls.mu.Lock()
	defer c.calls.mu.Unlock()
	if c.calls.inject == nil {
		c.calls.inject = map[string][]error{}
	}
	c.calls.inject[op+" "+key] = append(c.calls.inject[op+" "+key], errs...)
}

// AfterEach makes fn run after every successful call (nil: none), outside
// the Client's locks, e.g. to change the world between two calls.
func (c *Client) AfterEach(fn func(op, key string)) {
	c.calls.mu.Lock()
	defer c.calls.mu.Unlock()
	c.calls.after = fn
}

// Calls returns every call served so far, as "Op key".
func (c *Client) Calls() []string {
	c.calls.mu.Lock()
	defer c.calls.mu.Unlock()
	return slices.Clone(c.calls.log)
}

// CallsOf returns the keys of the calls of op, in order.
func (c *Client) CallsOf(op string) []string {
	var out []string
	for _, call := range c.Calls() {
		if k, ok := strings.CutPrefix(call, op+" "); ok {
			out = append(out, k)
		}
	}
	return out
}

// SetPageSize bounds the pages of the list calls (0: AWS's largest page,
// 250), as AWS pages its lists; a call's MaxResults/PageSize bounds them
// further.
func (c *Client) SetPageSize(n int) {
	c.calls.mu.Lock()
	defer c.calls.mu.Unlock()
	c.pageSize = n
}

// maxCallLog bounds the call log.
const maxCallLog = 10000

// serve records a call of op on key and runs fn unless the context ended
// or a failure was injected; on success it runs the AfterEach function.
func serve[T any](ctx context.Context, c *Client, op, key string, fn func() (T, error)) (T, error) {
	c.calls.mu.Lock()
	if len(c.calls.log) >= maxCallLog { // a long-running fleet-sim keeps the newest
		c.calls.log = slices.Delete(c.calls.log, 0, maxCallLog/2)
	}
	c.calls.log = append(c.calls.log, op+" "+key)
	var injected error
	if errs := c.calls.inject[op+" "+key]; len(errs) > 0 {
		injected = errs[0]
		c.calls.inject[op+" "+key] = errs[1:]
	}
	after := c.calls.after
	c.calls.mu.Unlock()
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	if injected != nil {
		return zero, injected
	}
	out, err := fn()
	if err != nil {
		return zero, err
	}
	if after != nil {
		after(op, key)
	}
	return out, nil
}
