package mqttconn

import (
	"context"
	"sync"
)

type inbound struct {
	topic   string
	payload []byte
}

// queue is an unbounded FIFO between paho's receive goroutine (which must
// never block) and the dispatch goroutine that runs handlers.
type queue struct {
	mu     sync.Mutex
	items  []inbound
	signal chan struct{}
}

func newQueue() *queue { return &queue{signal: make(chan struct{}, 1)} }

func (q *queue) push(m inbound) {
	q.mu.Lock()
	q.items = append(q.items, m)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *queue) pop(ctx context.Context) (inbound, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			m := q.items[0]
			q.items[0] = inbound{}
			q.items = q.items[1:]
			q.mu.Unlock()
			return m, true
		}
		q.mu.Unlock()
		select {
		case <-q.signal:
		case <-ctx.Done():
			return inbound{}, false
		}
	}
}
