package core

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/iot-fleet/iot-fleet/internal/mqtttopic"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/broker"
)

// Message is a message a client published, as a watcher sees it.
type Message struct {
	Topic    string
	ClientID string
	Payload  []byte
}

// watcher queues, without bound, the messages of one Watch so a slow
// reader never stalls the broker and never loses a message.
type watcher struct {
	filter string
	// count, when set, only counts (see Count).
	count  *atomic.Int64
	out    chan Message
	mu     sync.Mutex
	cond   *sync.Cond
	queue  []Message
	closed bool
}

type watchers struct {
	mu   sync.RWMutex
	list []*watcher
}

func (w *watcher) push(m Message) {
	if w.count != nil {
		w.count.Add(1)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.queue = append(w.queue, m)
		w.cond.Signal()
	}
}

func (w *watcher) pump() {
	defer close(w.out)
	for {
		w.mu.Lock()
		for len(w.queue) == 0 && !w.closed {
			w.cond.Wait()
		}
		if w.closed {
			w.mu.Unlock()
			return
		}
		m := w.queue[0]
		w.queue = w.queue[1:]
		w.mu.Unlock()
		w.out <- m
	}
}

// Watch delivers, in the order the broker accepted them, the messages
// clients publish on topics matching the MQTT filter, after the
// publisher's authorization and inbound faults (a message the broker
// refused or a fault dropped is not seen). It observes like an operator's
// test client subscribed to everything: API requests (provisioning, Jobs,
// shadow) are seen as well. Messages the core itself publishes are not.
// stop ends the watch and closes the channel; no message is dropped
// while the watch lasts.
func (c *Core) Watch(filter string) (msgs <-chan Message, stop func(), err error) {
	if err := mqtttopic.ValidateFilter(filter); err != nil {
		return nil, nil, fmt.Errorf("core: watch: %w", err)
	}
	w := &watcher{filter: filter, out: make(chan Message)}
	w.cond = sync.NewCond(&w.mu)
	go w.pump()
	c.watches.mu.Lock()
	c.watches.list = append(c.watches.list, w)
	c.watches.mu.Unlock()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			c.watches.mu.Lock()
			c.watches.list = slices.DeleteFunc(c.watches.list, func(x *watcher) bool { return x == w })
			c.watches.mu.Unlock()
			w.mu.Lock()
			w.closed = true
			w.cond.Signal()
			w.mu.Unlock()
			// Unblock a pump waiting on a reader that left.
			for range w.out {
			}
		})
	}
	return w.out, stop, nil
}

// Count counts the messages clients publish on topics matching the MQTT
// filter, as Watch sees them. A message is counted before the broker acts
// on it (before an API request is answered), so count is exact as soon as
// the publisher has its answer. stop ends the count.
func (c *Core) Count(filter string) (count func() int, stop func(), err error) {
	if err := mqtttopic.ValidateFilter(filter); err != nil {
		return nil, nil, fmt.Errorf("core: count: %w", err)
	}
	w := &watcher{filter: filter, count: &atomic.Int64{}}
	c.watches.mu.Lock()
	c.watches.list = append(c.watches.list, w)
	c.watches.mu.Unlock()
	stop = func() {
		c.watches.mu.Lock()
		c.watches.list = slices.DeleteFunc(c.watches.list, func(x *watcher) bool { return x == w })
		c.watches.mu.Unlock()
	}
	return func() int { return int(w.count.Load()) }, stop, nil
}

// rejectInjected answers r with an injected rejection (see
// faults.Set.RejectRequests), if one matches its topic.
func (c *Core) rejectInjected(r broker.Request) bool {
	rej, ok := c.faults.TakeRejection(r.Topic)
	if !ok {
		return false
	}
	payload, err := json.Marshal(protocol.ErrorResponse{StatusCode: rej.StatusCode, ErrorCode: rej.ErrorCode, ErrorMessage: rej.ErrorMessage})
	if err != nil {
		c.log.Error("injected rejection not encodable", "topic", r.Topic, "error", err)
		return false
	}
	c.log.Info("fault: rejected request", "client", r.ClientID, "topic", r.Topic, "errorCode", rej.ErrorCode)
	if err := c.broker.Reply(r.ClientID, protocol.Rejected(r.Topic), payload, true); err != nil {
		c.log.Info("injected rejection not delivered", "client", r.ClientID, "topic", r.Topic, "error", err)
	}
	return true
}

func (ws *watchers) notify(r broker.Request) {
	ws.mu.RLock()
	defer ws.mu.RUnlock()
	for _, w := range ws.list {
		if mqtttopic.Match(w.filter, r.Topic) {
			w.push(Message{Topic: r.Topic, ClientID: r.ClientID, Payload: slices.Clone(r.Payload)})
		}
	}
}

func (ws *watchers) match(topic string) bool {
	ws.mu.RLock()
	defer ws.mu.RUnlock()
	return slices.ContainsFunc(ws.list, func(w *watcher) bool { return mqtttopic.Match(w.filter, topic) })
}

// withWatchers shows every routed message to the watchers before its
// route handles it, and routes the messages only a watcher selects to
// their subscribers as the broker would (at QoS 1, like a topic rule's
// republish).
func (c *Core) withWatchers(routes []broker.Route) []broker.Route {
	out := make([]broker.Route, 0, len(routes)+1)
	for _, r := range routes {
		handle := r.Handle
		r.Handle = func(ctx context.Context, req broker.Request) {
			c.watches.notify(req)
			handle(ctx, req)
		}
		out = append(out, r)
	}
	return append(out, broker.Route{Name: "watch", Match: c.watches.match, Handle: func(_ context.Context, req broker.Request) {
		c.watches.notify(req)
		c.broker.Publish(req.Topic, req.Payload)
	}})
}
