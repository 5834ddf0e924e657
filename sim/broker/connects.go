package broker

import (
	"maps"
	"slices"
	"sync"
)

// ConnectAttempt is one CONNECT the broker decided on.
type ConnectAttempt struct {
	ClientID string
	// CertificateID is the client certificate's id ("" when the client
	// presented none).
	CertificateID string
	ThingName     string
	Accepted      bool
	// Reason says why a refused CONNECT was refused.
	Reason string
}

// connectObservers is the set of ObserveConnects callbacks.
type connectObservers struct {
	mu  sync.Mutex // held while callbacks run: they see attempts in order
	fns map[int]func(ConnectAttempt)
	seq int
}

// ObserveConnects calls fn with every CONNECT the broker accepts or
// refuses, in the order it decides them, before the client learns the
// answer. fn must not call back into the broker. stop ends the
// observation.
func (b *Broker) ObserveConnects(fn func(ConnectAttempt)) (stop func()) {
	o := &b.connects
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seq++
	id := o.seq
	if o.fns == nil {
		o.fns = map[int]func(ConnectAttempt){}
	}
	o.fns[id] = fn
	return func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		delete(o.fns, id)
	}
}

func (o *connectObservers) notify(a ConnectAttempt) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, id := range slices.Sorted(maps.Keys(o.fns)) {
		o.fns[id](a)
	}
}
