package allowlistsync

import (
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
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/revocation"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle/ssmfake"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
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
	h        *Handler
	iot      *simIoT
	s3       *lambdatest.S3
	ssm      *ssmfake.SSM
	ssmState *ssmstate.Memory
	store    registry.Store
	logs     *testenv.LogBuffer
	ctx      context.Context
}

func newEnv(t *testing.T, store registry.Store) *env {
	t.Helper()
	re, err := allowlist.CompilePattern(allowlist.DefaultSerialPattern)
	require.NoError(t, err)
	e := &env{iot: newSimIoT(t), s3: lambdatest.StartS3(t, bucket), ssm: ssmfake.NewSSM(nil), ssmState: ssmstate.NewMemory(store, nil),
		store: store, logs: &testenv.LogBuffer{}}
	e.h, err = New(Config{
		S3: e.s3.Client, IoT: e.iot.client, Registry: store, SerialPattern: re, SSM: e.ssm, SSMState: e.ssmState,
		ThingGroup: group, DevicePolicy: policy, ThingNamePrefix: prefix,
		Concurrency: 3, RetryDelay: time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(e.logs, nil)),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	e.ctx = ctx
	return e
}

// provisioned puts serial n in the registry and in IoT as fleet
// provisioning leaves it.
func (e *env) provisioned(t *testing.T, n int) {
	t.Helper()
	require.NoError(t, e.store.PutAllowed(e.ctx, serial(n)))
	_, err := e.store.MarkProvisioned(e.ctx, serial(n), cert(n), prefix+serial(n))
	require.NoError(t, err)
	e.iot.provision(t, prefix+serial(n), cert(n))
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
	return e.h.Sync(e.ctx, strings.NewReader(body), Options{})
}

func (e *env) syncWith(t *testing.T, body string, opts Options) (Result, error) {
	t.Helper()
	return e.h.Sync(e.ctx, strings.NewReader(body), opts)
}

func (e *env) device(t *testing.T, n int) registry.Device {
	t.Helper()
	d, err := e.store.Get(e.ctx, serial(n))
	require.NoError(t, err)
	return d
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
		assert.Equal(t, 2, strings.Count(e.logs.String(), "metric="+MetricRevocationFailed), "each failed revocation is alarmable")

		assert.Equal(t, registry.StateRevoked, e.state(t, 1))
		assert.Equal(t, registry.StateRevoking, e.state(t, 2), "state revoked only after every IoT step")
		assert.Equal(t, registry.StateRevoked, e.state(t, 3))
		assert.Equal(t, registry.StateRevoking, e.state(t, 4))
		assert.Equal(t, registry.StateProvisioned, e.state(t, 5))
		st, _ := e.iot.certStatus(cert(2))
		assert.Equal(t, types.CertificateStatusActive, st)
		st, _ = e.iot.certStatus(cert(4))
		assert.Equal(t, types.CertificateStatusRevoked, st)
		assert.True(t, e.iot.thingExists(prefix+serial(4)))

		res, err = e.sync(t, list(5))
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 1, Resumed: 2}, res, "the failed revocations are finished")
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

	res, err := e.sync(t, list(999))
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
	res, err := e.sync(t, list(999))
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
	_, err = e2.sync(t, list(999))
	require.Error(t, err)
	assert.Len(t, e2.iot.callsOf("DeleteThing"), revocation.DeleteAttempts)
	assert.Equal(t, registry.StateRevoking, e2.state(t, 1))
}

// A device that provisioned twice has two certificates on its thing; both
// are revoked, even though the registry only knows the newer one.
func TestRevokesEveryAttachedCertificate(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	e.iot.SetPageSize(1)
	e.iot.provision(t, prefix+serial(1), cert(100)) // the old one
	e.provisioned(t, 1)
	res, err := e.sync(t, list(999))
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

// The record is revoking before the first AWS call of its revocation, so
// the hook cannot provision the device while its certificates are being
// revoked; the conditional write refuses it.
func TestProvisioningDuringRevocationIsRefused(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)
		var once sync.Once
		var stateAtFirstCall registry.State
		e.iot.AfterEach(func(op, key string) {
			once.Do(func() {
				stateAtFirstCall = e.state(t, 1)
				_, err := e.store.MarkProvisioned(e.ctx, serial(1), cert(200), "")
				assert.ErrorIs(t, err, registry.ErrConflict, "provisioning while revoking")
			})
		})
		res, err := e.sync(t, list(999))
		require.NoError(t, err)
		assert.Equal(t, 1, res.Revoked)
		assert.Equal(t, registry.StateRevoking, stateAtFirstCall, "revoking before the first AWS call")
		d := e.device(t, 1)
		assert.Equal(t, registry.StateRevoked, d.State)
		assert.Equal(t, cert(1), d.CertificateID)
		e.assertGone(t, 1)
	})
}

// A sync that stopped half-way leaves the record revoking. The next sync
// finishes it, and admits the serial again only afterwards if it is
// listed again, so no active certificate is forgotten.
func TestResumesInterruptedRevocation(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1) // stuck, then listed again
		e.provisioned(t, 2) // stuck, still unlisted
		e.provisioned(t, 3) // stays
		for _, n := range []int{1, 2} {
			_, err := e.store.MarkRevoking(e.ctx, serial(n), cert(n))
			require.NoError(t, err)
		}
		res, err := e.sync(t, list(1, 3))
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 2, Added: 1, Resumed: 2}, res)
		e.assertGone(t, 1)
		e.assertGone(t, 2)
		assert.Equal(t, registry.StateAllowed, e.state(t, 1))
		assert.Equal(t, registry.StateRevoked, e.state(t, 2))
		assert.Equal(t, registry.StateProvisioned, e.state(t, 3))
		assert.Contains(t, e.logs.String(), "interrupted revocation finished")

		// If finishing fails, the serial is not admitted.
		e.provisioned(t, 4)
		_, err = e.store.MarkRevoking(e.ctx, serial(4), cert(4))
		require.NoError(t, err)
		e.iot.failNext("UpdateCertificate", cert(4), throttled())
		res, err = e.sync(t, list(1, 3, 4))
		var se *SyncError
		require.ErrorAs(t, err, &se)
		assert.Equal(t, []string{serial(4)}, se.Serials())
		assert.Equal(t, 0, res.Added)
		assert.Equal(t, registry.StateRevoking, e.state(t, 4))
		res, err = e.sync(t, list(1, 3, 4))
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 3, Added: 1, Resumed: 1}, res)
		assert.Equal(t, registry.StateAllowed, e.state(t, 4))
		e.assertGone(t, 4)
	})
}

// An empty or truncated allowlist, or a mass removal over the limit,
// changes nothing at all, not even the additions.
func TestRefusedPlanChangesNothing(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		for n := 1; n <= 10; n++ {
			e.provisioned(t, n)
		}
		check := func(t *testing.T, body string, opts Options, reason ...string) {
			t.Helper()
			res, err := e.syncWith(t, body, opts)
			var re *RefusedError
			require.ErrorAs(t, err, &re)
			assert.True(t, res.Refused)
			assert.Equal(t, 0, res.Added+res.Revoked+res.Readmitted)
			for _, r := range reason {
				assert.Contains(t, err.Error(), r)
			}
			assert.Empty(t, e.iot.allCalls(), "no AWS call")
			for n := 1; n <= 10; n++ {
				assert.Equal(t, registry.StateProvisioned, e.state(t, n))
			}
			assert.Equal(t, registry.State(""), e.state(t, 99), "the addition was not made either")
		}
		check(t, "", Options{}, "lists no serial")
		check(t, "# everything commented out\n", Options{ConfirmRevocations: 10}, "lists no serial", "whatever confirm-revocations says")
		check(t, list(1, 2, 99), Options{}, "revoke 8 of 10", "limit of 5", "confirm-revocations=8", "allowlistConfirmRevocations: 8")
		check(t, list(1, 2, 99), Options{ConfirmRevocations: 7}, "confirm-revocations=7, which is not the number")
		assert.Contains(t, e.logs.String(), "metric="+MetricRefused)

		// Under the limit: applied.
		res, err := e.sync(t, list(1, 2, 3, 4, 5, 6, 99))
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 7, Added: 1, Revoked: 4}, res)
		// The exact confirmation lifts the limit for that object.
		res, err = e.syncWith(t, list(99), Options{ConfirmRevocations: 6})
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 1, Revoked: 6}, res)
		for n := 1; n <= 10; n++ {
			assert.Equal(t, registry.StateRevoked, e.state(t, n))
		}
	})
}

func TestConfiguredLimit(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	e.h.cfg.MaxRevocations = 1
	e.provisioned(t, 1)
	e.provisioned(t, 2)
	_, err := e.sync(t, list(3))
	var re *RefusedError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 1, re.Limit)
	assert.Equal(t, 2, re.ToRevoke)
	res, err := e.sync(t, list(2, 3))
	require.NoError(t, err)
	assert.Equal(t, 1, res.Revoked)

	_, err = New(Config{S3: e.s3.Client, IoT: e.iot.client, Registry: e.store, SerialPattern: e.h.cfg.SerialPattern, SSM: e.ssm, SSMState: e.ssmState,
		ThingGroup: group, DevicePolicy: policy, MaxRevocations: -1})
	require.ErrorContains(t, err, "MaxRevocations -1")
}

// readmit=TOKEN re-admits a provisioned serial once per distinct token,
// recording who deployed the object.
func TestReadmission(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)
		e.provisioned(t, 2)
		body := list(2) + serial(1) + " readmit=INC-7\n" + serial(3) + " readmit=INC-8\n"
		e.s3.PutWithMetadata(t, bucket, DefaultObjectKey, body, map[string]string{"Deployed-By": "ci@main", MetadataConfirm: "0"})
		res, err := e.h.Handle(e.ctx, s3Event(bucket, DefaultObjectKey))
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 3, Added: 1, Readmitted: 2}, res)
		d := e.device(t, 1)
		assert.Equal(t, registry.StateReadmitted, d.State)
		assert.Equal(t, "INC-7", d.ReadmitToken)
		assert.Equal(t, "ci@main", d.ReadmittedBy)
		assert.False(t, d.ReadmittedAt.IsZero())
		d = e.device(t, 3)
		assert.Equal(t, registry.StateAllowed, d.State, "a new serial is simply admitted")
		assert.Equal(t, "INC-8", d.ReadmitToken)
		assert.Empty(t, e.iot.allCalls())

		// The device provisions (the hook replaces its certificate); the
		// same file deployed again does not re-admit it.
		_, err = e.store.ReplaceCertificate(e.ctx, serial(1), "", registry.Certificate{ID: cert(101)},
			registry.RetiredCertificate{CertificateID: cert(1), Reason: registry.RetiredReadmitted})
		require.NoError(t, err)
		res, err = e.sync(t, body)
		require.NoError(t, err)
		assert.Equal(t, Result{Listed: 3}, res)
		assert.Equal(t, registry.StateProvisioned, e.state(t, 1))

		// A new token does, recorded as deployed by "allowlist" without
		// metadata.
		res, err = e.sync(t, list(2)+serial(1)+" readmit=INC-9\n"+serial(3)+"\n")
		require.NoError(t, err)
		assert.Equal(t, 1, res.Readmitted)
		d = e.device(t, 1)
		assert.Equal(t, registry.StateReadmitted, d.State)
		assert.Equal(t, DefaultReadmittedBy, d.ReadmittedBy)
	})
}

func TestBadConfirmMetadataChangesNothing(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	e.provisioned(t, 1)
	for _, v := range []string{"all", "-3", "1e3", ""} {
		e.s3.PutWithMetadata(t, bucket, DefaultObjectKey, list(2), map[string]string{MetadataConfirm: v})
		_, err := e.h.Handle(e.ctx, s3Event(bucket, DefaultObjectKey))
		require.ErrorContains(t, err, "confirm-revocations=", v)
		require.ErrorContains(t, err, "not a non-negative decimal number", v)
		assert.Equal(t, registry.StateProvisioned, e.state(t, 1))
		assert.Equal(t, registry.State(""), e.state(t, 2))
	}
}

// Revoking a device turns SSM off for it: the activation is deleted, the
// managed instance deregistered and the SSM state reset.
func TestRevocationTurnsSSMOff(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)
		e.provisioned(t, 2)
		out, err := e.ssm.CreateActivation(e.ctx, &ssm.CreateActivationInput{IamRole: aws.String("role"), ExpirationDate: aws.Time(time.Now().Add(time.Hour))})
		require.NoError(t, err)
		instance, err := e.ssm.Register(aws.ToString(out.ActivationId), aws.ToString(out.ActivationCode))
		require.NoError(t, err)
		_, err = e.ssmState.Reserve(e.ctx, serial(1), "req1")
		require.NoError(t, err)
		_, err = e.ssmState.SetActivation(e.ctx, serial(1), "req1", aws.ToString(out.ActivationId), time.Now().Add(time.Hour))
		require.NoError(t, err)
		_, err = e.ssmState.MarkActive(e.ctx, serial(1), aws.ToString(out.ActivationId), instance)
		require.NoError(t, err)

		// SSM failing keeps the device revoking; the next run finishes.
		e.ssm.FailNext("DeregisterManagedInstance", instance, ssmfake.Throttled())
		_, err = e.sync(t, list(2))
		require.Error(t, err)
		assert.Equal(t, registry.StateRevoking, e.state(t, 1))
		res, err := e.sync(t, list(2))
		require.NoError(t, err)
		assert.Equal(t, 1, res.Resumed)
		assert.Equal(t, registry.StateRevoked, e.state(t, 1))

		assert.Empty(t, e.ssm.Activations())
		assert.Empty(t, e.ssm.Instances())
		rec, err := e.ssmState.Get(e.ctx, serial(1))
		require.NoError(t, err)
		assert.Equal(t, ssmstate.StateInactive, rec.State)
		assert.Contains(t, e.logs.String(), "ssm turned off for revoked device")
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
	res, err := e.syncWith(t, list(keep...), Options{ConfirmRevocations: 40})
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
	_, err := e.h.Sync(ctx, strings.NewReader(list(2, 3)), Options{})
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
	e.s3.Put(t, bucket, DefaultObjectKey, list(2, 3))

	res, err := e.h.Handle(e.ctx, s3Event(bucket, DefaultObjectKey, "other.txt", DefaultObjectKey))
	require.NoError(t, err)
	assert.Equal(t, Result{Listed: 2, Added: 2, Revoked: 1}, res)
	assert.Equal(t, []string{bucket + "/" + DefaultObjectKey}, e.s3.Reads(), "read once, latest version")
	assert.Contains(t, e.logs.String(), "ignoring S3 record")

	// The bad line is named with the object.
	e.s3.Put(t, bucket, DefaultObjectKey, list(2)+"bogus\n")
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
	e.s3.Put(t, bucket, DefaultObjectKey, list(1))
	_, err = e.h.Handle(e.ctx, s3Event(bucket, DefaultObjectKey))
	require.ErrorContains(t, err, "larger than 10 bytes")
	assert.Empty(t, e.iot.allCalls())
}

func TestNewValidates(t *testing.T) {
	_, err := New(Config{})
	require.ErrorContains(t, err, "missing S3, IoT, Registry, SerialPattern, ThingGroup, DevicePolicy, SSM, SSMState")
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
	h, err := New(Config{S3: lambdatest.StartS3(b, bucket).Client, IoT: newSimIoT(b).client, Registry: store, SerialPattern: re,
		SSM: ssmfake.NewSSM(nil), SSMState: ssmstate.NewMemory(store, nil),
		ThingGroup: group, DevicePolicy: policy, ThingNamePrefix: prefix,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		res, err := h.Sync(ctx, strings.NewReader(body), Options{})
		if err != nil || res.Added != 0 || res.Revoked != 0 {
			b.Fatalf("%+v %v", res, err)
		}
	}
}

// A rotation's issued certificate that was never attached to the thing
// (the rotation Lambda stopped between issuing and attaching) is ACTIVE
// with the device policy: revocation finds it in the record and revokes it
// too.
func TestRevokesARotationsUnattachedCertificate(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	e.provisioned(t, 1)
	_, err := e.store.RequestRotation(e.ctx, serial(1), "rot-1", time.Hour)
	require.NoError(t, err)
	_, err = e.store.IssueRotation(e.ctx, serial(1), "rot-1", registry.Certificate{ID: cert(200), NotAfter: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	require.NoError(t, e.iot.reg.RegisterCertificate(cert(200), "", simregistry.CertActive, time.Now().Add(time.Hour)))
	require.NoError(t, e.iot.reg.AttachPolicy(policy, cert(200)))

	res, err := e.sync(t, list(999))
	require.NoError(t, err)
	assert.Equal(t, 1, res.Revoked)
	e.assertGone(t, 1)
	st, _ := e.iot.certStatus(cert(200))
	assert.Equal(t, types.CertificateStatusRevoked, st, "the rotation's certificate")
	assert.False(t, e.iot.policyAttached(policy, certARN(cert(200))))
}
