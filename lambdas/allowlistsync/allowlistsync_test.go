package allowlistsync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
)

const (
	group  = "iot-fleet-dev"
	policy = "iot-fleet-dev-device"
	prefix = "dev-"
	bucket = "iot-fleet-dev-config"
)

func serial(n int) string { return fmt.Sprintf("10000000%08x", n) }
func cert(n int) string   { return fmt.Sprintf("%064x", n) }

type env struct {
	h     *Handler
	iot   *fakeIoT
	s3    *fakeS3
	store registry.Store
	logs  *bytes.Buffer
	ctx   context.Context
}

func newEnv(t *testing.T, store registry.Store) *env {
	t.Helper()
	re, err := allowlist.CompilePattern(allowlist.DefaultSerialPattern)
	require.NoError(t, err)
	e := &env{iot: newFakeIoT(group, policy), s3: &fakeS3{}, store: store, logs: &bytes.Buffer{}}
	e.h, err = New(Config{
		S3: e.s3, IoT: e.iot, Registry: store, SerialPattern: re,
		ThingGroup: group, DevicePolicy: policy, ThingNamePrefix: prefix,
		Concurrency: 3, RetryDelay: time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: e.logs}, nil)),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	e.ctx = ctx
	return e
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// provisioned puts serial n in the registry and in IoT as fleet
// provisioning leaves it.
func (e *env) provisioned(t *testing.T, n int) {
	t.Helper()
	require.NoError(t, e.store.PutAllowed(e.ctx, serial(n)))
	_, err := e.store.MarkProvisioned(e.ctx, serial(n), cert(n), prefix+serial(n))
	require.NoError(t, err)
	e.iot.provision(prefix+serial(n), cert(n), group, policy)
}

func (e *env) state(t *testing.T, n int) registry.State {
	t.Helper()
	d, err := e.store.Get(e.ctx, serial(n))
	if errors.Is(err, registry.ErrNotFound) {
		return ""
	}
	require.NoError(t, err)
	return d.State
}

func list(ns ...int) string {
	var b strings.Builder
	b.WriteString("# test allowlist\n\n")
	for _, n := range ns {
		fmt.Fprintf(&b, "%s\n", serial(n))
	}
	return b.String()
}

func (e *env) sync(t *testing.T, body string) (Result, error) {
	t.Helper()
	return e.h.Sync(e.ctx, strings.NewReader(body))
}

// assertGone checks that device n has no access left in IoT.
func (e *env) assertGone(t *testing.T, n int) {
	t.Helper()
	st, ok := e.iot.certStatus(cert(n))
	require.True(t, ok)
	assert.Equal(t, types.CertificateStatusRevoked, st, "certificate of %d", n)
	assert.False(t, e.iot.policyAttached(policy, certARN(cert(n))), "policy still attached to %d", n)
	assert.False(t, e.iot.thingExists(prefix+serial(n)), "thing %d still exists", n)
}

func TestSyncAddsAndRevokes(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)                                      // removed from the list: revoke
		e.provisioned(t, 2)                                      // stays
		require.NoError(t, e.store.PutAllowed(e.ctx, serial(3))) // allowed, stays
		require.NoError(t, e.store.PutAllowed(e.ctx, serial(4))) // allowed, removed
		require.NoError(t, e.store.PutAllowed(e.ctx, serial(5))) // revoked earlier, listed again
		require.NoError(t, e.store.MarkRevoked(e.ctx, serial(5), ""))

		res, err := e.sync(t, list(2, 3, 5, 6))
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 4, Added: 2, Revoked: 2}, res)

		assert.Equal(t, registry.StateRevoked, e.state(t, 1))
		assert.Equal(t, registry.StateProvisioned, e.state(t, 2))
		assert.Equal(t, registry.StateAllowed, e.state(t, 3))
		assert.Equal(t, registry.StateRevoked, e.state(t, 4))
		assert.Equal(t, registry.StateAllowed, e.state(t, 5))
		assert.Equal(t, registry.StateAllowed, e.state(t, 6))
		e.assertGone(t, 1)

		// Device 2 is untouched in IoT; only the two revoked devices saw calls.
		st, _ := e.iot.certStatus(cert(2))
		assert.Equal(t, types.CertificateStatusActive, st)
		assert.True(t, e.iot.thingExists(prefix+serial(2)))
		for _, c := range e.iot.allCalls() {
			assert.True(t, strings.Contains(c, serial(1)) || strings.Contains(c, cert(1)) || strings.Contains(c, serial(4)), "unexpected call %s", c)
		}
		assert.Equal(t, []string{prefix + serial(1)}, e.iot.callsOf("DetachThingPrincipal"))
		assert.Equal(t, []string{cert(1)}, e.iot.callsOf("UpdateCertificate"))
		assert.ElementsMatch(t, []string{prefix + serial(1), prefix + serial(4)}, e.iot.callsOf("DeleteThing"))

		// Running again changes nothing and calls nothing.
		before := len(e.iot.allCalls())
		res, err = e.sync(t, list(2, 3, 5, 6))
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 4}, res)
		assert.Len(t, e.iot.allCalls(), before)
	})
}

func TestBadLineChangesNothing(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)
		body := serial(2) + "\n# fine\n" + "NOT-A-SERIAL\n" + serial(3) + "\n"
		res, err := e.sync(t, body)
		require.Error(t, err)
		var le *allowlist.LineError
		require.ErrorAs(t, err, &le)
		assert.Equal(t, 3, le.Line)
		assert.Contains(t, err.Error(), "line 3")
		assert.Equal(t, Result{}, res)

		assert.Empty(t, e.iot.allCalls())
		assert.Equal(t, registry.StateProvisioned, e.state(t, 1))
		assert.Equal(t, registry.State(""), e.state(t, 2))
		assert.Equal(t, registry.State(""), e.state(t, 3))
	})
}

// One device's failure does not stop the others; a re-run finishes it.
func TestFailureOfOneDeviceAndRerun(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		for n := 1; n <= 5; n++ {
			e.provisioned(t, n)
		}
		// Device 2: throttled while revoking its certificate. Device 4:
		// the thing cannot be deleted (a server error) after its
		// certificate was revoked and detached.
		e.iot.failNext("UpdateCertificate", cert(2), throttled())
		e.iot.failNext("DeleteThing", prefix+serial(4), &types.InternalFailureException{Message: aws.String("internal")})

		res, err := e.sync(t, list(5))
		require.Error(t, err)
		var se *SyncError
		require.ErrorAs(t, err, &se)
		assert.Equal(t, []string{serial(2), serial(4)}, se.Serials())
		assert.Equal(t, []string{serial(2), serial(4)}, res.Failed)
		assert.Contains(t, err.Error(), serial(2))
		assert.Contains(t, err.Error(), "Throttling")
		assert.Contains(t, err.Error(), serial(4))
		assert.Equal(t, 2, res.Revoked)

		assert.Equal(t, registry.StateRevoked, e.state(t, 1))
		assert.Equal(t, registry.StateProvisioned, e.state(t, 2), "state revoked only after every IoT step")
		assert.Equal(t, registry.StateRevoked, e.state(t, 3))
		assert.Equal(t, registry.StateProvisioned, e.state(t, 4))
		assert.Equal(t, registry.StateProvisioned, e.state(t, 5))
		st, _ := e.iot.certStatus(cert(2))
		assert.Equal(t, types.CertificateStatusActive, st)
		st, _ = e.iot.certStatus(cert(4))
		assert.Equal(t, types.CertificateStatusRevoked, st)
		assert.True(t, e.iot.thingExists(prefix+serial(4)))

		res, err = e.sync(t, list(5))
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 1, Revoked: 2}, res)
		for _, n := range []int{1, 2, 3, 4} {
			assert.Equal(t, registry.StateRevoked, e.state(t, n))
			e.assertGone(t, n)
		}
		// The re-run did not try to revoke device 4's revoked certificate
		// again (AWS refuses to change a revoked certificate).
		assert.Equal(t, 1, count(e.iot.callsOf("UpdateCertificate"), cert(4)))
	})
}

func count(ss []string, s string) int {
	n := 0
	for _, x := range ss {
		if x == s {
			n++
		}
	}
	return n
}

func TestNotFoundCountsAsDone(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	// Registry says provisioned, but IoT has nothing (deleted by hand).
	require.NoError(t, e.store.PutAllowed(e.ctx, serial(1)))
	_, err := e.store.MarkProvisioned(e.ctx, serial(1), cert(1), "")
	require.NoError(t, err)
	// Device 2 exists; DetachPolicy reports not-found (a concurrent
	// cleanup got there first).
	e.provisioned(t, 2)
	e.iot.failNext("DetachPolicy", certARN(cert(2)), notFound("policy"))

	res, err := e.sync(t, list())
	require.NoError(t, err)
	assert.Equal(t, 2, res.Revoked)
	assert.Equal(t, registry.StateRevoked, e.state(t, 1))
	assert.Equal(t, registry.StateRevoked, e.state(t, 2))
	assert.False(t, e.iot.thingExists(prefix+serial(2)))
}

func TestDeleteThingRetriesWhileDetachPropagates(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	e.provisioned(t, 1)
	stillAttached := &types.InvalidRequestException{Message: aws.String("still attached to one or more principals")}
	e.iot.failNext("DeleteThing", prefix+serial(1), stillAttached, stillAttached)
	res, err := e.sync(t, list())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Revoked)
	assert.Len(t, e.iot.callsOf("DeleteThing"), 3)
	e.assertGone(t, 1)

	// Retries are bounded.
	e2 := newEnv(t, registry.NewMemory())
	e2.provisioned(t, 1)
	for range 10 {
		e2.iot.failNext("DeleteThing", prefix+serial(1), stillAttached)
	}
	_, err = e2.sync(t, list())
	require.Error(t, err)
	assert.Len(t, e2.iot.callsOf("DeleteThing"), deleteAttempts)
	assert.Equal(t, registry.StateProvisioned, e2.state(t, 1))
}

// A device that provisioned twice has two certificates on its thing; both
// are revoked, even though the registry only knows the newer one.
func TestRevokesEveryAttachedCertificate(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	e.iot.pageSize = 1
	e.iot.provision(prefix+serial(1), cert(100), group, policy) // the old one
	e.provisioned(t, 1)
	res, err := e.sync(t, list())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Revoked)
	for _, c := range []string{cert(1), cert(100)} {
		st, _ := e.iot.certStatus(c)
		assert.Equal(t, types.CertificateStatusRevoked, st, c)
		assert.False(t, e.iot.policyAttached(policy, certARN(c)))
	}
	assert.False(t, e.iot.thingExists(prefix+serial(1)))
	assert.Len(t, e.iot.callsOf("ListThingPrincipals"), 2, "paged through principals")
}

// If the device provisions again while it is being revoked, the registry's
// conditional write refuses to mark it revoked (its new certificate would
// stay active); the next run revokes the new certificate too.
func TestReprovisionDuringRevocation(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)
		var once sync.Once
		e.iot.after = func(op, key string) {
			if op == "DeleteThing" {
				once.Do(func() {
					_, err := e.store.MarkProvisioned(e.ctx, serial(1), cert(200), "")
					assert.NoError(t, err)
					e.iot.provision(prefix+serial(1), cert(200), group, policy)
				})
			}
		}
		_, err := e.sync(t, list())
		require.Error(t, err)
		require.ErrorIs(t, err, registry.ErrConflict)
		assert.Equal(t, registry.StateProvisioned, e.state(t, 1))

		_, err = e.sync(t, list())
		require.NoError(t, err)
		assert.Equal(t, registry.StateRevoked, e.state(t, 1))
		st, _ := e.iot.certStatus(cert(200))
		assert.Equal(t, types.CertificateStatusRevoked, st)
		assert.False(t, e.iot.thingExists(prefix+serial(1)))
	})
}

func TestManyChangesConcurrently(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	var keep []int
	for n := 0; n < 60; n++ {
		e.provisioned(t, n)
		if n%3 == 0 {
			keep = append(keep, n)
		}
	}
	for n := 1000; n < 1100; n++ {
		keep = append(keep, n)
	}
	res, err := e.sync(t, list(keep...))
	require.NoError(t, err)
	assert.Equal(t, Result{Listed: 120, Added: 100, Revoked: 40}, res)
	for n := 0; n < 60; n++ {
		if n%3 == 0 {
			assert.Equal(t, registry.StateProvisioned, e.state(t, n))
		} else {
			assert.Equal(t, registry.StateRevoked, e.state(t, n))
			e.assertGone(t, n)
		}
	}
	assert.Equal(t, 160, e.store.(*registry.Memory).Len())
}

func TestCanceledContextFailsEveryChange(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	e.provisioned(t, 1)
	require.NoError(t, e.store.PutAllowed(e.ctx, serial(2)))
	// Cancel once the registry has been read.
	ctx, cancel := context.WithCancel(e.ctx)
	e.h.cfg.Registry = cancelAfterScan{Registry: e.store, cancel: cancel}
	_, err := e.h.Sync(ctx, strings.NewReader(list(2, 3)))
	var se *SyncError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, []string{serial(1), serial(3)}, se.Serials())
	assert.ErrorIs(t, se.Failed[serial(1)], context.Canceled)
	assert.Equal(t, registry.StateProvisioned, e.state(t, 1))
}

type cancelAfterScan struct {
	Registry
	cancel context.CancelFunc
}

func (c cancelAfterScan) Scan(ctx context.Context, cursor string, limit int) (registry.Page, error) {
	p, err := c.Registry.Scan(ctx, cursor, limit)
	if p.Next == "" {
		c.cancel()
	}
	return p, err
}

func s3Event(bucket string, keys ...string) events.S3Event {
	var ev events.S3Event
	for _, k := range keys {
		var r events.S3EventRecord
		r.EventName = "ObjectCreated:Put"
		r.S3.Bucket.Name = bucket
		r.S3.Object.Key = k
		r.S3.Object.URLDecodedKey = k
		ev.Records = append(ev.Records, r)
	}
	return ev
}

func TestHandleS3Event(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	e.provisioned(t, 1)
	e.s3.put(bucket, DefaultObjectKey, list(2, 3))

	res, err := e.h.Handle(e.ctx, s3Event(bucket, DefaultObjectKey, "other.txt", DefaultObjectKey))
	require.NoError(t, err)
	assert.Equal(t, Result{Listed: 2, Added: 2, Revoked: 1}, res)
	assert.Equal(t, []string{bucket + "/" + DefaultObjectKey}, e.s3.gets, "read once, latest version")
	assert.Contains(t, e.logs.String(), "ignoring S3 record")

	// The bad line is named with the object.
	e.s3.put(bucket, DefaultObjectKey, list(2)+"bogus\n")
	_, err = e.h.Handle(e.ctx, s3Event(bucket, DefaultObjectKey))
	require.ErrorContains(t, err, "s3://"+bucket+"/allowlist.txt: allowlist line 4")
}

func TestHandleRejectsUnusableEvents(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	_, err := e.h.Handle(e.ctx, events.S3Event{})
	require.ErrorContains(t, err, `no record for object "allowlist.txt"`)

	_, err = e.h.Handle(e.ctx, s3Event(bucket, "other.txt"))
	require.ErrorContains(t, err, "no record")

	_, err = e.h.Handle(e.ctx, s3Event(bucket, DefaultObjectKey))
	require.ErrorContains(t, err, "get s3://"+bucket+"/allowlist.txt")
	require.ErrorContains(t, err, "NoSuchKey")

	two := s3Event(bucket, DefaultObjectKey)
	two.Records = append(two.Records, s3Event("elsewhere", DefaultObjectKey).Records...)
	_, err = e.h.Handle(e.ctx, two)
	require.ErrorContains(t, err, "two buckets")

	e.h.cfg.MaxObjectBytes = 10
	e.s3.put(bucket, DefaultObjectKey, list(1))
	_, err = e.h.Handle(e.ctx, s3Event(bucket, DefaultObjectKey))
	require.ErrorContains(t, err, "larger than 10 bytes")
	assert.Empty(t, e.iot.allCalls())
}

func TestNewValidates(t *testing.T) {
	_, err := New(Config{})
	require.ErrorContains(t, err, "missing S3, IoT, Registry, SerialPattern, ThingGroup, DevicePolicy")
}

func TestCertificateIDFromARN(t *testing.T) {
	id, ok := certificateIDFromARN(certARN(cert(1)))
	assert.True(t, ok)
	assert.Equal(t, cert(1), id)
	for _, bad := range []string{"", "cert/x", "arn:aws:iot:r:a:thing/x", "arn:aws:iot:r:a:cert/", "arn:aws:cognito:r:a:identity/x"} {
		_, ok := certificateIDFromARN(bad)
		assert.False(t, ok, bad)
	}
}

func TestSyncErrorMessageIsBounded(t *testing.T) {
	se := &SyncError{Failed: map[string]error{}}
	for n := range 50 {
		se.Failed[serial(n)] = errors.New("boom")
	}
	msg := se.Error()
	assert.Contains(t, msg, "50 device(s) failed")
	assert.Contains(t, msg, "and 30 more")
}

// BenchmarkSync100k syncs a 100,000-serial allowlist against an in-memory
// registry holding the same serials: the steady-state cost of a sync that
// changes nothing (parse, full registry scan, diff).
func BenchmarkSync100k(b *testing.B) {
	const n = 100_000
	store := registry.NewMemory()
	ctx := context.Background()
	var sb strings.Builder
	for i := range n {
		s := serial(i)
		sb.WriteString(s + "\n")
		if err := store.PutAllowed(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
	body := sb.String()
	re, err := allowlist.CompilePattern(allowlist.DefaultSerialPattern)
	require.NoError(b, err)
	h, err := New(Config{S3: &fakeS3{}, IoT: newFakeIoT(group, policy), Registry: store, SerialPattern: re,
		ThingGroup: group, DevicePolicy: policy, ThingNamePrefix: prefix,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		res, err := h.Sync(ctx, strings.NewReader(body))
		if err != nil || res.Added != 0 || res.Revoked != 0 {
			b.Fatalf("%+v %v", res, err)
		}
	}
}
