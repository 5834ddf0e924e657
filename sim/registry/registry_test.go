package registry

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/policy"
)

func certID(c byte) string { return strings.Repeat(string(c), 64) }

type recorder struct {
	mu  sync.Mutex
	evs []Event
}

func (r *recorder) add(e Event) { r.mu.Lock(); r.evs = append(r.evs, e); r.mu.Unlock() }
func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.evs...)
}

func TestCertificateLifecycleAndEvents(t *testing.T) {
	r := New(nil)
	rec := &recorder{}
	r.Observe(rec.add)
	id := certID('a')
	require.NoError(t, r.RegisterCertificate(id, "pem", CertPendingActivation, time.Time{}))
	require.ErrorIs(t, r.RegisterCertificate(id, "pem", CertActive, time.Time{}), ErrAlreadyExists)
	require.ErrorIs(t, r.RegisterCertificate("xyz", "pem", CertActive, time.Time{}), ErrInvalid)

	require.NoError(t, r.SetCertificateStatus(id, CertActive))
	require.NoError(t, r.SetCertificateStatus(id, CertActive), "same status is a no-op")
	require.NoError(t, r.SetCertificateStatus(id, CertRevoked))
	err := r.SetCertificateStatus(id, CertActive)
	require.ErrorIs(t, err, ErrConflict, "a revoked certificate stays revoked")
	c, err := r.Certificate(id)
	require.NoError(t, err)
	assert.Equal(t, CertRevoked, c.Status)
	assert.Equal(t, []Event{
		{Kind: CertificateStatusChanged, Certificate: id, Status: CertActive},
		{Kind: CertificateStatusChanged, Certificate: id, Status: CertRevoked},
	}, rec.all())
	_, err = r.Certificate(certID('b'))
	require.ErrorIs(t, err, ErrNotFound)
}

func TestAuthResolvesThingOnlyWhenClientIDIsAttachedThing(t *testing.T) {
	r := New(nil)
	doc, err := policy.Device(policy.Params{Partition: "aws", Region: "local-1", AccountID: "000000000000", TemplateName: "t"})
	require.NoError(t, err)
	require.NoError(t, r.CreatePolicy("device", doc))
	require.ErrorIs(t, r.CreatePolicy("device", doc), ErrAlreadyExists)
	require.ErrorIs(t, r.CreatePolicy("bad", policy.Document{}), ErrInvalid)

	a, b := certID('a'), certID('b')
	require.NoError(t, r.RegisterCertificate(a, "", CertActive, time.Time{}))
	require.NoError(t, r.RegisterCertificate(b, "", CertActive, time.Time{}))
	created, err := r.CreateThing("dev-a", map[string]string{"serial": "a"})
	require.NoError(t, err)
	assert.True(t, created)
	created, err = r.CreateThing("dev-a", nil)
	require.NoError(t, err)
	assert.False(t, created)
	_, err = r.CreateThing("bad name!", nil)
	require.ErrorIs(t, err, ErrInvalid)
	require.NoError(t, r.AttachThingPrincipal("dev-a", a))
	require.NoError(t, r.AttachPolicy("device", a))
	require.ErrorIs(t, r.AttachPolicy("missing", a), ErrNotFound)

	info, err := r.Auth(a, "dev-a")
	require.NoError(t, err)
	assert.Equal(t, "dev-a", info.ThingName)
	assert.Equal(t, map[string]string{"serial": "a"}, info.ThingAttributes)
	require.Len(t, info.Policies, 1)
	assert.Equal(t, "device", info.Policies[0].Name)

	info, err = r.Auth(a, "dev-b")
	require.NoError(t, err)
	assert.Empty(t, info.ThingName, "client id is not an attached thing")
	info, err = r.Auth(b, "dev-a")
	require.NoError(t, err)
	assert.Empty(t, info.ThingName, "dev-a is not attached to certificate b")
	assert.Empty(t, info.Policies)

	require.ErrorIs(t, r.DeleteCertificate(a, false), ErrConflict)
	require.ErrorIs(t, r.DeleteThing("dev-a"), ErrConflict)
	require.NoError(t, r.DetachThingPrincipal("dev-a", a))
	require.NoError(t, r.DetachPolicy("device", a))
	require.NoError(t, r.SetCertificateStatus(a, CertInactive))
	require.NoError(t, r.DeleteCertificate(a, false))
	require.NoError(t, r.DeleteThing("dev-a"))
	_, err = r.Thing("dev-a")
	require.ErrorIs(t, err, ErrNotFound)
}

func TestGroupsAndAttributes(t *testing.T) {
	r := New(nil)
	rec := &recorder{}
	r.Observe(rec.add)
	require.NoError(t, r.CreateThingGroup("iot-fleet-dev"))
	_, err := r.CreateThing("dev-a", map[string]string{"serial": "a", "site": "x"})
	require.NoError(t, err)
	require.ErrorIs(t, r.AddThingToGroup("dev-a", "nope"), ErrNotFound)
	require.ErrorIs(t, r.AddThingToGroup("dev-zz", "iot-fleet-dev"), ErrNotFound)
	require.NoError(t, r.AddThingToGroup("dev-a", "iot-fleet-dev"))
	require.NoError(t, r.AddThingToGroup("dev-a", "iot-fleet-dev"))
	members, err := r.ThingsInGroup("iot-fleet-dev")
	require.NoError(t, err)
	assert.Equal(t, []string{"dev-a"}, members)
	assert.Equal(t, []Event{{Kind: ThingAddedToGroup, Thing: "dev-a", Group: "iot-fleet-dev"}}, rec.all(), "one event per new membership")

	require.NoError(t, r.SetThingAttributes("dev-a", map[string]string{"site": "y"}, true))
	th, err := r.Thing("dev-a")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"serial": "a", "site": "y"}, th.Attributes)
	assert.Equal(t, []string{"iot-fleet-dev"}, th.Groups)
	require.NoError(t, r.SetThingAttributes("dev-a", map[string]string{"k": "v"}, false))
	th, err = r.Thing("dev-a")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"k": "v"}, th.Attributes)

	require.NoError(t, r.RemoveThingFromGroup("dev-a", "iot-fleet-dev"))
	members, err = r.ThingsInGroup("iot-fleet-dev")
	require.NoError(t, err)
	assert.Empty(t, members)
}
