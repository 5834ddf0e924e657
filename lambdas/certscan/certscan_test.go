package certscan_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
	"github.com/iot-fleet/iot-fleet/sim/iottest"
)

const group = "iot-fleet-dev"

var now = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type fixture struct {
	t     *testing.T
	ctx   context.Context
	iot   *lambdatest.SimIoT
	reg   registry.Store
	clock *registrytest.Clock
	h     *certscan.Handler
}

// newFixture provisions devices 0..n-1 whose certificates expire i days
// from now, all in the thing group.
func newFixture(t *testing.T, newStore func(*testing.T, func() time.Time) registry.Store, n int) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	c := registrytest.NewClock(now)
	f := &fixture{t: t, ctx: ctx, iot: lambdatest.NewSimIoT(t, "policy", group), clock: c}
	f.reg = newStore(t, c.Now)
	for i := range n {
		s := serial(i)
		require.NoError(t, f.reg.PutAllowed(ctx, s))
		_, err := f.reg.RecordProvisioned(ctx, s, "dev-"+s, registry.Certificate{ID: fmt.Sprintf("cert%d", i), NotAfter: now.Add(time.Duration(i) * 24 * time.Hour)})
		require.NoError(t, err)
		f.iot.AddThing(t, "dev-"+s, group)
	}
	var ids atomic.Int64
	var err error
	f.h, err = certscan.New(certscan.Config{
		IoT: f.iot.Client, Data: f.iot.Data, Registry: f.reg, ThingNamePrefix: "dev-",
		Window: 10 * 24 * time.Hour, Concurrency: 3, Now: c.Now,
		NewID:  func() string { return fmt.Sprintf("rot%d", ids.Add(1)) },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	return f
}

func serial(i int) string { return fmt.Sprintf("%016x", 0xa0000+i) }
func thing(i int) string  { return "dev-" + serial(i) }

// requests returns the rotation requests published, by thing.
func (f *fixture) requests() map[string][]protocol.RotateRequest {
	f.t.Helper()
	out := map[string][]protocol.RotateRequest{}
	for _, m := range f.iot.Messages() {
		th, kind, ok := protocol.ThingFromTopic(m.Topic)
		require.True(f.t, ok, m.Topic)
		require.Equal(f.t, protocol.KindRotateRequest, kind)
		require.EqualValues(f.t, 1, m.QoS)
		var rr protocol.RotateRequest
		require.NoError(f.t, json.Unmarshal(m.Payload, &rr))
		require.GreaterOrEqual(f.t, rr.Timestamp, now.Unix())
		require.NotEmpty(f.t, rr.RotationID)
		out[th] = append(out[th], rr)
	}
	return out
}

func TestScheduledScanAsksExpiringDevices(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore, 25)
		rep, err := f.h.Handle(f.ctx, certscan.Request{})
		require.NoError(t, err)
		// Certificates expiring within 10 days: devices 0..9.
		require.Len(t, rep.Requested, 10)
		reqs := f.requests()
		require.Len(t, reqs, 10)
		for i := range 10 {
			require.Len(t, reqs[thing(i)], 1)
			require.Equal(t, rep.Requested[thing(i)], reqs[thing(i)][0].RotationID)
			d, err := f.reg.Get(f.ctx, serial(i))
			require.NoError(t, err)
			require.Equal(t, reqs[thing(i)][0].RotationID, d.RotationID)
		}
		require.NotContains(t, reqs, thing(10))

		// Idempotent: a re-run the same day asks nobody again.
		rep, err = f.h.Handle(f.ctx, certscan.Request{})
		require.NoError(t, err)
		require.Empty(t, rep.Requested)
		require.Len(t, rep.Pending, 10)
		require.Len(t, f.iot.Messages(), 10)

		// The next day: unfinished rotations are asked again with the same
		// id, and device 10 (now within the window) for the first time.
		first := reqs
		f.clock.Advance(24 * time.Hour)
		rep, err = f.h.Handle(f.ctx, certscan.Request{})
		require.NoError(t, err)
		require.Len(t, rep.Requested, 11)
		reqs = f.requests()
		for i := range 10 {
			require.Len(t, reqs[thing(i)], 2)
			require.Equal(t, first[thing(i)][0].RotationID, reqs[thing(i)][1].RotationID)
		}
		require.Len(t, reqs[thing(10)], 1)
	})
}

func TestOnDemand(t *testing.T) {
	f := newFixture(t, func(_ *testing.T, now func() time.Time) registry.Store {
		return registry.NewMemory(registry.WithClock(now))
	}, 7)
	// One thing, even far from expiry; asking again re-sends the same id.
	rep, err := f.h.Handle(f.ctx, certscan.Request{ThingName: thing(6)})
	require.NoError(t, err)
	require.Len(t, rep.Requested, 1)
	rep2, err := f.h.Handle(f.ctx, certscan.Request{ThingName: thing(6)})
	require.NoError(t, err)
	require.Equal(t, rep.Requested, rep2.Requested)
	require.Len(t, f.requests()[thing(6)], 2)

	// A group, paged, with a stranger and an unregistered thing skipped.
	f.iot.AddThing(t, "prod-0000000000000001", group)
	f.iot.AddThing(t, "dev-ffffffffffffffff", group)
	f.iot.SetPageSize(2)
	rep, err = f.h.Handle(f.ctx, certscan.Request{ThingGroup: group})
	require.NoError(t, err)
	require.Len(t, rep.Requested, 7)
	require.Len(t, rep.Skipped, 2)
	require.Contains(t, rep.Skipped, "prod-0000000000000001")
	require.Contains(t, rep.Skipped, "dev-ffffffffffffffff")
	require.GreaterOrEqual(t, f.iot.CallCount("ListThingsInThingGroup"), 5)

	_, err = f.h.Handle(f.ctx, certscan.Request{ThingGroup: "nope"})
	require.Error(t, err)
	_, err = f.h.Handle(f.ctx, certscan.Request{ThingGroup: group, ThingName: thing(1)})
	require.Error(t, err)
}

// One device's failure is reported and does not stop the others; a re-run
// (the Lambda's retry or the next day) asks it again with the same id.
func TestPerDeviceFailures(t *testing.T) {
	f := newFixture(t, func(_ *testing.T, now func() time.Time) registry.Store {
		return registry.NewMemory(registry.WithClock(now))
	}, 6)
	f.iot.FailNext("Publish", "", iottest.Throttled())
	rep, err := f.h.Handle(f.ctx, certscan.Request{ThingGroup: group})
	var se *certscan.ScanError
	require.ErrorAs(t, err, &se)
	require.Len(t, se.Failed, 1)
	require.Len(t, rep.Requested, 5)
	require.Len(t, rep.Failed, 1)
	failed := se.Failed[0]
	d, err := f.reg.Get(f.ctx, failed[len("dev-"):])
	require.NoError(t, err)
	require.NotEmpty(t, d.RotationID)

	rep, err = f.h.Handle(f.ctx, certscan.Request{ThingName: failed})
	require.NoError(t, err)
	require.Equal(t, d.RotationID, rep.Requested[failed])
}

// Concurrency is bounded: never more than Concurrency devices at once.
func TestBoundedConcurrency(t *testing.T) {
	reg := &countingRegistry{Memory: registry.NewMemory(), release: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fake := lambdatest.NewSimIoT(t, "policy", group)
	for i := range 12 {
		require.NoError(t, reg.PutAllowed(ctx, serial(i)))
		_, err := reg.RecordProvisioned(ctx, serial(i), thing(i), registry.Certificate{ID: "c", NotAfter: time.Now()})
		require.NoError(t, err)
	}
	h, err := certscan.New(certscan.Config{IoT: fake.Client, Data: fake.Data, Registry: reg, ThingNamePrefix: "dev-", Concurrency: 3,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { _, err := h.Handle(ctx, certscan.Request{}); done <- err }()
	// Let the workers pile up, then release them one at a time.
	for range 12 {
		reg.release <- struct{}{}
	}
	require.NoError(t, <-done)
	require.LessOrEqual(t, reg.max.Load(), int64(3))
	require.Len(t, fake.Messages(), 12)
	var things []string
	for _, m := range fake.Messages() {
		things = append(things, m.Topic)
	}
	sort.Strings(things)
	require.Equal(t, protocol.CommandTopic(thing(0), protocol.KindRotateRequest), things[0])
}

type countingRegistry struct {
	*registry.Memory
	release  chan struct{}
	inflight atomic.Int64
	max      atomic.Int64
}

func (r *countingRegistry) RequestRotation(ctx context.Context, serial, id string, after time.Duration) (registry.Device, error) {
	n := r.inflight.Add(1)
	for {
		m := r.max.Load()
		if n <= m || r.max.CompareAndSwap(m, n) {
			break
		}
	}
	defer r.inflight.Add(-1)
	select {
	case <-r.release:
	case <-ctx.Done():
		return registry.Device{}, ctx.Err()
	}
	return r.Memory.RequestRotation(ctx, serial, id, after)
}

func TestNewValidates(t *testing.T) {
	_, err := certscan.New(certscan.Config{})
	require.ErrorContains(t, err, "IoT, Data, Registry, ThingNamePrefix")
	fake := lambdatest.NewSimIoT(t, "p", group)
	_, err = certscan.New(certscan.Config{IoT: fake.Client, Data: fake.Data, Registry: registry.NewMemory(), ThingNamePrefix: "dev-", KeyAlgorithm: "dsa"})
	require.ErrorContains(t, err, "KeyAlgorithm")
}
