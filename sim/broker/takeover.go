package broker

import (
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// A clean-session client that connects again with its client id while
// its previous connection is still being torn down overlaps with it in
// the embedded broker (mochi): the old connection checks whether it was
// taken over, the new one takes over its id and enters the broker's
// client index, then the old one finishes its clean-up by deleting its id
// from that index, which by then names the new connection. The new
// connection stays connected but is missing from the index: nothing
// routed by client id reaches it. AWS IoT never does that; the local IoT
// Core keeps its own index of accepted connections (byID), which answers
// (Reply) and server publishes use, and puts a connection the embedded
// broker dropped from its index back, with its subscriptions, as soon as
// the old connection is done (connectionEnded).

// client returns the live connection of clientID.
func (b *Broker) client(clientID string) (*mqtt.Client, bool) {
	v, ok := b.byID.Load(clientID)
	if !ok {
		return nil, false
	}
	cl := v.(*mqtt.Client)
	if cl.Closed() {
		return nil, false
	}
	return cl, true
}

// connectionEnded runs once the embedded broker is done with conn. If
// conn's clean-up removed a newer connection with the same client id from
// the embedded broker's index, the newer one is put back, with its
// subscriptions.
func (b *Broker) connectionEnded(conn net.Conn) {
	v, ok := b.expiring.LoadAndDelete(conn)
	if !ok {
		return
	}
	old := v.(*mqtt.Client)
	cur, ok := b.client(old.ID)
	if !ok || cur == old {
		return
	}
	srv := b.server()
	if srv == nil {
		return
	}
	if got, ok := srv.Clients.Get(cur.ID); ok && got == cur {
		return
	}
	srv.Clients.Add(cur)
	for _, sub := range cur.State.Subscriptions.GetAll() {
		srv.Topics.Subscribe(cur.ID, sub)
	}
	b.log.Info("connection restored in the broker's index after a reconnect with the same client id", "client", cur.ID)
}
