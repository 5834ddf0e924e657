package agent

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/broker"
	"github.com/iot-fleet/iot-fleet/sim/core"
	simfaults "github.com/iot-fleet/iot-fleet/sim/faults"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// cloud is the local IoT Core (sim/core: MQTT over mutual TLS with the
// stack's policies, fleet provisioning with the stack's real
// pre-provisioning hook, serial on the allowlist) the agent talks to.
type cloud struct {
	*core.Core
	t   *testing.T
	dir string // root CA and claim files
	// counts of the provisioning requests the cloud received
	csrs, registers func() int
	log             *connectLog
}

type cloudOptions struct {
	// Allow, when set, decides before the real pre-provisioning hook:
	// false denies the serial, true asks the real hook.
	Allow func(serial string) bool
}

func startCloud(t *testing.T, o cloudOptions) *cloud {
	t.Helper()
	log := &connectLog{}
	c, err := core.Start(context.Background(), core.Options{AllowedSerials: []string{serial}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	t.Cleanup(c.ObserveConnects(log.add))
	if o.Allow != nil {
		devicetest.DenyUnless(c, o.Allow)
	}
	cl := &cloud{Core: c, t: t, dir: t.TempDir(), log: log}
	devicetest.WriteClaimFiles(t, c, cl.dir)
	var stop func()
	cl.csrs, stop, err = c.Count(protocol.CreateCertFromCSRTopic)
	require.NoError(t, err)
	t.Cleanup(stop)
	cl.registers, stop, err = c.Count(protocol.RegisterThingTopic(c.Names().TemplateName))
	require.NoError(t, err)
	t.Cleanup(stop)
	return cl
}

// watch observes, in order, what clients publish on filter.
func (c *cloud) watch(filter string) <-chan core.Message {
	c.t.Helper()
	ch, stop, err := c.Watch(filter)
	require.NoError(c.t, err)
	c.t.Cleanup(stop)
	return ch
}

// refuse sets the certificate to status (the broker closes its
// connections) and, as an operator does, re-admits the serial so that the
// stack's pre-provisioning hook lets it provision once more.
func (c *cloud) refuse(id store.Identity, status registry.CertStatus) {
	c.t.Helper()
	require.NoError(c.t, c.SetCertificateStatus(id.CertificateID, status))
	_, changed, err := c.DeviceRegistry().Readmit(context.Background(), serial, "INC-1", "test")
	require.NoError(c.t, err)
	require.True(c.t, changed)
}

// principalOf returns the certificate the client connected as clientID
// uses ("" when none is connected).
func (c *cloud) principalOf(clientID string) string {
	for _, cl := range c.Clients() {
		if cl.ClientID == clientID {
			return cl.CertificateID
		}
	}
	return ""
}

// dropNextAnswer makes the cloud act on the next request on topic but
// lose its answer; the channel closes once it was dropped.
func (c *cloud) dropNextAnswer(topic string) <-chan struct{} {
	c.t.Helper()
	id, err := c.Faults().Add(simfaults.Rule{Topic: protocol.Accepted(topic), Direction: simfaults.Outbound, Drop: true, Count: 1})
	require.NoError(c.t, err)
	return c.Faults().Gone(id)
}

// connectLog keeps, in order, the CONNECTs the local IoT Core's broker
// accepted or refused (core.ObserveConnects).
type connectLog struct {
	mu       sync.Mutex
	connects []broker.ConnectAttempt
}

func (l *connectLog) add(a broker.ConnectAttempt) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.connects = append(l.connects, a)
}

func (l *connectLog) list() []broker.ConnectAttempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.connects)
}
