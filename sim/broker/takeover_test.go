package broker_test

import (
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"
)

// A clean-session client that reconnects with its client id while its
// previous connection is still being torn down (a device retrying its
// provisioning at once, a test client dialled twice in a row) is the one
// the broker answers and delivers to: the old connection's clean-up never
// removes the new one. (The embedded broker's own clean-up could delete
// the new connection from its client index when the two overlapped, and
// answers to it were lost; the local IoT Core answered nothing for 15s.)
func TestReconnectWithSameClientIDKeepsTheNewConnection(t *testing.T) {
	f := newFixture(t)
	pub := f.connect(t, "publisher")
	for i := range 200 {
		old := f.connect(t, "same-id")
		tok := old.Subscribe("t/x", 1, func(paho.Client, paho.Message) {})
		require.True(t, tok.WaitTimeout(10*time.Second))
		old.Disconnect(0)

		got := make(chan string, 4)
		opts := paho.NewClientOptions().AddBroker("tls://" + f.b.Addr()).SetClientID("same-id").SetAutoReconnect(false).
			SetCleanSession(true).SetTLSConfig(f.tlsConfig(t)).SetKeepAlive(time.Minute)
		cl := paho.NewClient(opts)
		tok = cl.Connect()
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error())
		tok = cl.Subscribe("t/x", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error())

		// A server answer (Reply) and a client's publish both arrive.
		require.NoError(t, f.b.Reply("same-id", "t/x", []byte(fmt.Sprint("reply-", i)), true), "round %d", i)
		tok = pub.Publish("t/x", 1, false, fmt.Sprint("publish-", i))
		require.True(t, tok.WaitTimeout(10*time.Second))
		want := map[string]bool{fmt.Sprint("reply-", i): true, fmt.Sprint("publish-", i): true}
		for len(want) > 0 {
			select {
			case m := <-got:
				delete(want, m)
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: not delivered: %v", i, want)
			}
		}
		cl.Disconnect(0)
	}
}
