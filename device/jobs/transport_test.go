package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/mqtttopic"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	simjobs "github.com/iot-fleet/iot-fleet/sim/jobs"
)

// transport is the engine's Publisher in the tests, the device's side of
// its connection to the Jobs service: an in-order durable outbox that
// holds what is published while offline, and a broker that delivers the
// service's messages to the engine when they match one of its
// subscriptions. forge adds transport-level faults.
type transport struct {
	mu            sync.Mutex
	svc           *simjobs.Service // set by newService
	online        bool
	dropResponses bool
	outbox        []message
	sent          []message // every message the engine published, in order
	engine        *Engine
	forgeries     []func(topic string, payload []byte) []byte
}

type message struct {
	topic   string
	payload []byte
}

func newTransport() *transport { return &transport{online: true} }

func (tr *transport) Publish(ctx context.Context, topic string, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m := message{topic, bytes.Clone(payload)}
	tr.mu.Lock()
	tr.sent = append(tr.sent, m)
	if !tr.online || len(tr.outbox) > 0 {
		tr.outbox = append(tr.outbox, m)
		tr.mu.Unlock()
		return nil
	}
	tr.mu.Unlock()
	tr.toService(m)
	return nil
}

// toService hands one request to the service, which answers it at once.
func (tr *transport) toService(m message) {
	tr.svc.Handle(context.Background(), m.topic, m.payload, func(topic string, payload []byte) {
		if !tr.deliver(topic, payload) {
			panic(fmt.Sprintf("the service's answer on %s matches no subscription of the engine", topic))
		}
	})
}

// fromService delivers a notification the service publishes; as a broker
// does, only to a subscriber (the engine does not subscribe to notify).
func (tr *transport) fromService(topic string, payload []byte) { tr.deliver(topic, payload) }

// deliver hands a message to the engine, after the forgeries, and reports
// whether it matched a subscription. Nothing reaches a stopped or
// offline engine, nor any engine while responses are dropped.
func (tr *transport) deliver(topic string, payload []byte) bool {
	tr.mu.Lock()
	e, online, drop, forgeries := tr.engine, tr.online, tr.dropResponses, tr.forgeries
	tr.mu.Unlock()
	if e == nil || !online || drop {
		return true
	}
	for _, forge := range forgeries {
		payload = forge(topic, payload)
	}
	if !slices.ContainsFunc(e.Subscriptions(), func(filter string) bool { return mqtttopic.Match(filter, topic) }) {
		return false
	}
	e.HandleMessage(topic, payload)
	return true
}

// forge adds a transport-level fault: fn rewrites every message from the
// service to the engine. It plays a broken or hostile service, which the
// project's Jobs service never is.
func (tr *transport) forge(fn func(topic string, payload []byte) []byte) {
	tr.mu.Lock()
	tr.forgeries = append(tr.forgeries, fn)
	tr.mu.Unlock()
}

func (tr *transport) setOnline(on bool) {
	tr.mu.Lock()
	tr.online = on
	tr.mu.Unlock()
	if on {
		tr.flush()
	}
}

// flush delivers the outbox in order.
func (tr *transport) flush() {
	for {
		tr.mu.Lock()
		if !tr.online || len(tr.outbox) == 0 {
			tr.mu.Unlock()
			return
		}
		m := tr.outbox[0]
		tr.outbox = tr.outbox[1:]
		tr.mu.Unlock()
		tr.toService(m)
	}
}

func (tr *transport) setEngine(e *Engine) {
	tr.mu.Lock()
	tr.engine = e
	tr.mu.Unlock()
}

func (tr *transport) setDropResponses(d bool) {
	tr.mu.Lock()
	tr.dropResponses = d
	tr.mu.Unlock()
}

func (tr *transport) pendingCount() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.outbox)
}

// sentTo returns the payloads the engine published on topic, in order.
func (tr *transport) sentTo(topic string) [][]byte {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out [][]byte
	for _, m := range tr.sent {
		if m.topic == topic {
			out = append(out, m.payload)
		}
	}
	return out
}

// sentUpdates decodes the update requests the engine published for job
// id, in order (resends included), as the device sent them.
func (tr *transport) sentUpdates(t *testing.T, id string) []protocol.UpdateJobRequest {
	t.Helper()
	var out []protocol.UpdateJobRequest
	for _, payload := range tr.sentTo(protocol.JobsUpdateTopic(thing, id)) {
		var req protocol.UpdateJobRequest
		require.NoError(t, json.Unmarshal(payload, &req))
		out = append(out, req)
	}
	return out
}

// addForgedJob is a transport-level fault: it creates job id with a
// stand-in document the service accepts, and makes the transport hand the
// device doc wherever the service's messages carry the stand-in. It
// plays a broken or hostile Jobs service, for documents the real one
// refuses to store (not UTF-8, not a JSON object, over the size limit).
func (h *harness) addForgedJob(t *testing.T, id, doc string) {
	t.Helper()
	standIn := []byte(`{"forgedByTheTransport":"` + id + `"}`)
	h.tr.forge(func(_ string, payload []byte) []byte {
		return bytes.ReplaceAll(payload, standIn, []byte(doc))
	})
	h.svc.addJob(t, id, string(standIn))
}

// forgeVersionMismatchWithoutState is a transport-level fault: the
// executionState of VersionMismatch rejections is cut out on the way to
// the device (the project's Jobs service, as AWS documents, always sends
// it), so the device must describe the execution to reconcile.
func (h *harness) forgeVersionMismatchWithoutState(t *testing.T) {
	h.tr.forge(func(topic string, payload []byte) []byte {
		if !mqtttopic.Match(protocol.Rejected(protocol.JobsUpdateTopic(thing, "+")), topic) {
			return payload
		}
		var rej protocol.JobsErrorResponse
		if err := json.Unmarshal(payload, &rej); err != nil {
			t.Errorf("the service's rejection on %s: %v", topic, err)
			return payload
		}
		if rej.Code != protocol.ErrCodeVersionMismatch {
			return payload
		}
		rej.ExecutionState = nil
		forged, err := json.Marshal(rej)
		if err != nil {
			t.Errorf("forge the rejection on %s: %v", topic, err)
			return payload
		}
		return forged
	})
}
