package revoke

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle/ssmfake"
	"github.com/iot-fleet/iot-fleet/sim/iottest"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
)

const (
	group  = "iot-fleet-dev"
	policy = "iot-fleet-dev-device"
	prefix = "dev-"
)

func serial(n int) string { return fmt.Sprintf("10000000%08x", n) }
func cert(n int) string   { return fmt.Sprintf("%064x", n) }

// env is the revoke Lambda over a registry store, the local IoT Core's
// control plane reached over HTTP with a real iot.Client (sim/iottest),
// and SSM (ssmfake: the sim does not emulate Systems Manager). sync is the
// allowlist sync over the same world.
type env struct {
	h        *Handler
	sync     *allowlistsync.Handler
	iot      *iottest.Server
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
	e := &env{iot: iottest.Start(t, iottest.Options{Policies: []string{policy}, ThingGroups: []string{group}}),
		ssm: ssmfake.NewSSM(nil), ssmState: ssmstate.NewMemory(store, nil), store: store, logs: &testenv.LogBuffer{}}
	client := e.iot.Client()
	log := slog.New(slog.NewJSONHandler(e.logs, nil))
	e.h, err = New(Config{IoT: client, Registry: store, SSM: e.ssm, SSMState: e.ssmState, SerialPattern: re,
		ThingGroup: group, DevicePolicy: policy, ThingNamePrefix: prefix, RetryDelay: time.Millisecond, Logger: log})
	require.NoError(t, err)
	// The tests call Sync, which reads no object: S3 answers nothing.
	e.sync, err = allowlistsync.New(allowlistsync.Config{S3: noS3{}, IoT: client, Registry: store, SerialPattern: re,
		SSM: e.ssm, SSMState: e.ssmState, ThingGroup: group, DevicePolicy: policy, ThingNamePrefix: prefix,
		RetryDelay: time.Millisecond, Logger: log})
	require.NoError(t, err)
	e.ctx = iottest.Context(t, time.Minute)
	return e
}

type noS3 struct{}

func (noS3) GetObject(context.Context, *s3.GetObjectInput, ...func(*s3.Options)) (*s3.GetObjectOutput, error) {
	return nil, errors.New("no S3 in this test")
}

// provisioned puts serial n in the registry and in IoT as fleet
// provisioning leaves it.
func (e *env) provisioned(t *testing.T, n int) {
	t.Helper()
	require.NoError(t, e.store.PutAllowed(e.ctx, serial(n)))
	_, err := e.store.MarkProvisioned(e.ctx, serial(n), cert(n), prefix+serial(n))
	require.NoError(t, err)
	e.iot.Provision(t, prefix+serial(n), group, policy, cert(n))
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
	st, ok := e.iot.CertStatus(cert(n))
	require.True(t, ok)
	assert.Equal(t, types.CertificateStatusRevoked, st)
	assert.False(t, e.iot.PolicyAttached(policy, cert(n)), "policy still attached")
	assert.False(t, e.iot.ThingExists(prefix+serial(n)), "thing still exists")
	assert.NotContains(t, e.iot.ThingsInGroup(group), prefix+serial(n))
}

func (e *env) syncList(t *testing.T, lines ...string) (allowlistsync.Result, error) {
	t.Helper()
	return e.sync.Sync(e.ctx, strings.NewReader(strings.Join(lines, "\n")+"\n"), allowlistsync.Options{})
}

func TestRevokesNow(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)
		e.provisioned(t, 2)
		// SSM is on for device 1: the revocation turns it off.
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

		before := time.Now().Add(-time.Second)
		res, err := e.h.Handle(e.ctx, Request{Serial: serial(1), Reason: " stolen from site 4 ", By: "alice"})
		require.NoError(t, err)
		assert.Equal(t, Response{Serial: serial(1), ThingName: prefix + serial(1), CertificateID: cert(1), State: "revoked", RevokedCertificates: []string{cert(1)}}, res)
		e.assertGone(t, 1)
		d := e.device(t, 1)
		assert.Equal(t, registry.StateRevoked, d.State)
		assert.True(t, d.HeldOut())
		assert.Equal(t, "stolen from site 4", d.RevokeReason)
		assert.Equal(t, "alice", d.RevokedBy)
		assert.False(t, d.RevokedAt.Before(before.Truncate(time.Second)), "revokedAt %v", d.RevokedAt)
		assert.Empty(t, e.ssm.Activations())
		assert.Empty(t, e.ssm.Instances())
		line := e.logs.JSONLines(t)
		last := line[len(line)-1]
		assert.Equal(t, "device revoked", last["msg"])
		assert.Equal(t, MetricRevoked, last["metric"])
		assert.Equal(t, true, last["emergency"])
		assert.Equal(t, "alice", last["by"])

		// Device 2 is untouched.
		st, _ := e.iot.CertStatus(cert(2))
		assert.Equal(t, types.CertificateStatusActive, st)
		assert.Equal(t, registry.StateProvisioned, e.device(t, 2).State)
	})
}

// The next allowlist deploy does not re-admit an emergency revocation,
// even with the serial still listed (with or without the token of an
// earlier re-admission); a readmit line with a new token does.
func TestSyncDoesNotReadmitWithoutNewToken(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)
		e.provisioned(t, 2)
		_, err := e.syncList(t, serial(1)+" readmit=T1", serial(2))
		require.NoError(t, err)
		require.Equal(t, "T1", e.device(t, 1).ReadmitToken)

		_, err = e.h.Handle(e.ctx, Request{ThingName: prefix + serial(1), Reason: "cloned", By: "alice"})
		require.NoError(t, err)

		for _, list := range [][]string{{serial(1), serial(2)}, {serial(1) + " readmit=T1", serial(2)}} {
			res, err := e.syncList(t, list...)
			require.NoError(t, err)
			assert.Equal(t, []string{serial(1)}, res.Held, "%v", list)
			assert.Zero(t, res.Added)
			assert.Zero(t, res.Readmitted)
			d := e.device(t, 1)
			assert.Equal(t, registry.StateRevoked, d.State, "%v", list)
			assert.True(t, d.HeldOut())
		}
		assert.Contains(t, e.logs.String(), "an emergency revocation holds it out")

		res, err := e.syncList(t, serial(1)+" readmit=T2", serial(2))
		require.NoError(t, err)
		assert.Empty(t, res.Held)
		assert.Equal(t, 1, res.Readmitted)
		d := e.device(t, 1)
		assert.Equal(t, registry.StateAllowed, d.State, "re-admitted: it may provision again")
		assert.False(t, d.HeldOut())
		assert.Equal(t, "T2", d.ReadmitToken)
		assert.Equal(t, "cloned", d.RevokeReason, "the revocation stays on record")
	})
}

// A device the allowlist revoked earlier: the request is recorded (and
// now holds the serial out); the finish runs again and finds nothing to
// revoke.
func TestAlreadyRevoked(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)
		e.provisioned(t, 2)
		_, err := e.syncList(t, serial(2))
		require.NoError(t, err)
		e.assertGone(t, 1)
		updates := len(e.iot.IoT.CallsOf("UpdateCertificate"))

		res, err := e.h.Handle(e.ctx, Request{Serial: serial(1), Reason: "confirm", By: "bob"})
		require.NoError(t, err)
		assert.True(t, res.AlreadyRevoked)
		assert.Equal(t, "revoked", res.State)
		assert.Empty(t, res.RevokedCertificates)
		assert.Len(t, e.iot.IoT.CallsOf("UpdateCertificate"), updates, "nothing left to revoke")
		assert.NotContains(t, e.logs.String(), MetricCertificateReactivated)
		e.assertGone(t, 1)
		assert.True(t, e.device(t, 1).HeldOut())

		res2, err := e.syncList(t, serial(1), serial(2))
		require.NoError(t, err)
		assert.Equal(t, []string{serial(1)}, res2.Held)
		assert.Equal(t, registry.StateRevoked, e.device(t, 1).State)
	})
}

// The Lambda does not trust a revoked record: certificates of the device
// that are not REVOKED in AWS IoT (the current one, attached, and one of
// the certificate history) are revoked again and named in the answer.
func TestAlreadyRevokedRetiresActiveCertificates(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		old := cert(101)
		require.NoError(t, e.store.PutAllowed(e.ctx, serial(1)))
		_, err := e.store.MarkProvisioned(e.ctx, serial(1), old, prefix+serial(1))
		require.NoError(t, err)
		_, err = e.store.ReplaceCertificate(e.ctx, serial(1), "", registry.Certificate{ID: cert(1)},
			registry.RetiredCertificate{CertificateID: old, Reason: registry.RetiredSameKey})
		require.NoError(t, err)
		e.iot.Provision(t, prefix+serial(1), group, policy, cert(1))
		require.NoError(t, e.iot.Registry.RegisterCertificate(old, "", simregistry.CertActive, time.Now().Add(time.Hour)))
		require.NoError(t, e.iot.Registry.AttachPolicy(policy, old))
		// The registry says revoked; AWS IoT was never told.
		_, err = e.store.MarkRevoking(e.ctx, serial(1), cert(1))
		require.NoError(t, err)
		require.NoError(t, e.store.MarkRevoked(e.ctx, serial(1), cert(1)))

		res, err := e.h.Handle(e.ctx, Request{Serial: serial(1), Reason: "confirm", By: "bob"})
		require.NoError(t, err)
		assert.True(t, res.AlreadyRevoked)
		assert.Equal(t, "revoked", res.State)
		assert.ElementsMatch(t, []string{cert(1), old}, res.RevokedCertificates)
		e.assertGone(t, 1)
		st, _ := e.iot.CertStatus(old)
		assert.Equal(t, types.CertificateStatusRevoked, st)
		assert.False(t, e.iot.PolicyAttached(policy, old))
		assert.Contains(t, e.logs.String(), MetricCertificateReactivated)
		d := e.device(t, 1)
		assert.Equal(t, registry.StateRevoked, d.State)
		assert.True(t, d.HeldOut())
	})
}

// An AWS IoT failure leaves the record revoking (the hook denies it) and
// fails the invocation; invoking again finishes the revocation.
func TestFailureLeavesRevokingAndRetryFinishes(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		e := newEnv(t, newStore(t, nil))
		e.provisioned(t, 1)
		e.iot.IoT.FailNext("UpdateCertificate", cert(1), iottest.Throttled())

		_, err := e.h.Handle(e.ctx, Request{Serial: serial(1), Reason: "lost", By: "alice"})
		require.ErrorContains(t, err, "ThrottlingException")
		require.ErrorContains(t, err, "stays revoking")
		d := e.device(t, 1)
		assert.Equal(t, registry.StateRevoking, d.State)
		assert.True(t, d.HeldOut())
		st, _ := e.iot.CertStatus(cert(1))
		assert.Equal(t, types.CertificateStatusActive, st)
		assert.Contains(t, e.logs.String(), MetricRevocationFailed)

		res, err := e.h.Handle(e.ctx, Request{Serial: serial(1), Reason: "lost", By: "alice"})
		require.NoError(t, err)
		assert.False(t, res.AlreadyRevoked)
		assert.Equal(t, "revoked", res.State)
		e.assertGone(t, 1)
	})
}

// Bad requests are refused with what is wrong, before anything changes.
func TestRefusesBadRequests(t *testing.T) {
	e := newEnv(t, registry.NewMemory())
	e.provisioned(t, 1)
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Serial: serial(1), By: "alice"}, "empty reason"},
		{Request{Serial: serial(1), Reason: "   ", By: "alice"}, "empty reason"},
		{Request{Serial: serial(1), Reason: "x"}, "empty by"},
		{Request{Serial: serial(1), Reason: strings.Repeat("x", registry.MaxRevokeReason+1), By: "a"}, "reason longer than"},
		{Request{Reason: "x", By: "a"}, "serial (or thingName) is required"},
		{Request{Serial: serial(1), ThingName: prefix + serial(1), Reason: "x", By: "a"}, "not both"},
		{Request{Serial: "ZZ", Reason: "x", By: "a"}, `serial "ZZ" does not match`},
		{Request{ThingName: "prod-" + serial(1), Reason: "x", By: "a"}, "is not dev- followed by a serial"},
		{Request{Serial: serial(9), Reason: "x", By: "a"}, "has no registry record"},
	} {
		_, err := e.h.Handle(e.ctx, tc.req)
		require.ErrorContains(t, err, tc.want, "%+v", tc.req)
	}
	assert.Empty(t, e.iot.IoT.Calls())
	assert.Equal(t, registry.StateProvisioned, e.device(t, 1).State)
	assert.False(t, e.device(t, 1).HeldOut())
}

// A thing name that names another device's serial in the registry is
// refused.
func TestThingNameMustMatchRecord(t *testing.T) {
	store := registry.NewMemory()
	e := newEnv(t, store)
	require.NoError(t, store.PutAllowed(e.ctx, serial(1)))
	_, err := store.MarkProvisioned(e.ctx, serial(1), cert(1), "dev-other")
	require.NoError(t, err)
	_, err = e.h.Handle(e.ctx, Request{ThingName: prefix + serial(1), Reason: "x", By: "a"})
	require.ErrorContains(t, err, "records serial "+serial(1)+" with thing dev-other")
	assert.Equal(t, registry.StateProvisioned, e.device(t, 1).State)
}

func TestNewValidates(t *testing.T) {
	_, err := New(Config{})
	require.ErrorContains(t, err, "revoke: missing IoT, Registry, SSM, SSMState, SerialPattern, ThingGroup, DevicePolicy, ThingNamePrefix")
}
