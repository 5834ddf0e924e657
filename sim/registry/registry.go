// Package registry is the simulated AWS IoT registry: things, thing
// groups, certificates (with AWS's statuses), IoT policies and the
// attachments between them. It is in memory and safe for concurrent use.
// Observers are told about changes that matter to live connections and
// jobs (certificate status changes, group membership).
package registry

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/sim/iotpolicy"
)

// CertStatus is an AWS IoT certificate status.
type CertStatus string

const (
	CertActive            CertStatus = "ACTIVE"
	CertInactive          CertStatus = "INACTIVE"
	CertRevoked           CertStatus = "REVOKED"
	CertPendingActivation CertStatus = "PENDING_ACTIVATION"
)

func (s CertStatus) valid() bool {
	switch s {
	case CertActive, CertInactive, CertRevoked, CertPendingActivation:
		return true
	}
	return false
}

// Errors.
var (
	ErrNotFound      = errors.New("resource not found")
	ErrAlreadyExists = errors.New("resource already exists")
	ErrInvalid       = errors.New("invalid request")
	ErrConflict      = errors.New("conflicting state")
)

var (
	thingNameRE = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)
	certIDRE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Certificate is a registered certificate.
type Certificate struct {
	ID        string
	PEM       string
	Status    CertStatus
	CreatedAt time.Time
	UpdatedAt time.Time
	NotAfter  time.Time
	Policies  []string
	Things    []string
}

// Thing is a registered thing.
type Thing struct {
	Name       string
	Attributes map[string]string
	Groups     []string
	Principals []string
	Version    int64
	CreatedAt  time.Time
}

// EventKind says what changed.
type EventKind int

const (
	// CertificateStatusChanged: Certificate's status became Status.
	CertificateStatusChanged EventKind = iota + 1
	// CertificateDeleted: Certificate was deleted.
	CertificateDeleted
	// ThingAddedToGroup: Thing joined Group.
	ThingAddedToGroup
)

// Event is a change notification.
type Event struct {
	Kind        EventKind
	Certificate string
	Status      CertStatus
	Thing       string
	Group       string
}

// AuthInfo is what the broker needs to authorize one operation.
type AuthInfo struct {
	Status          CertStatus
	Policies        []*iotpolicy.Policy
	ThingName       string // "" unless clientID is a thing attached to the certificate
	ThingAttributes map[string]string
}

type certRec struct {
	Certificate
	policies map[string]bool
	things   map[string]bool
}

type thingRec struct {
	name       string
	attrs      map[string]string
	groups     map[string]bool
	principals map[string]bool
	version    int64
	createdAt  time.Time
}

type policyRec struct {
	compiled *iotpolicy.Policy
}

// Registry is the in-memory IoT registry.
type Registry struct {
	now func() time.Time

	mu        sync.RWMutex
	certs     map[string]*certRec
	things    map[string]*thingRec
	groups    map[string]map[string]bool // group -> things
	policies  map[string]*policyRec
	observers []func(Event)
}

// New returns an empty registry. now may be nil (time.Now).
func New(now func() time.Time) *Registry {
	if now == nil {
		now = time.Now
	}
	return &Registry{
		now:      now,
		certs:    map[string]*certRec{},
		things:   map[string]*thingRec{},
		groups:   map[string]map[string]bool{},
		policies: map[string]*policyRec{},
	}
}

// Observe registers fn to be called, outside the registry lock, after
// each change event.
func (r *Registry) Observe(fn func(Event)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.observers = append(r.observers, fn)
}

func (r *Registry) emit(evs ...Event) {
	r.mu.RLock()
	obs := append([]func(Event){}, r.observers...)
	r.mu.RUnlock()
	for _, ev := range evs {
		for _, fn := range obs {
			fn(ev)
		}
	}
}

// ---- policies ----

// CreatePolicy stores and compiles an IoT policy document.
func (r *Registry) CreatePolicy(name string, doc policy.Document) error {
	if name == "" {
		return fmt.Errorf("create policy: %w: empty name", ErrInvalid)
	}
	p, err := iotpolicy.Compile(name, doc)
	if err != nil {
		return fmt.Errorf("create policy %s: %w: %v", name, ErrInvalid, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.policies[name]; ok {
		return fmt.Errorf("create policy %s: %w", name, ErrAlreadyExists)
	}
	r.policies[name] = &policyRec{compiled: p}
	return nil
}

// Policy returns a compiled policy.
func (r *Registry) Policy(name string) (*iotpolicy.Policy, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, ok := r.policies[name]
	if !ok {
		return nil, fmt.Errorf("policy %s: %w", name, ErrNotFound)
	}
	return p.compiled, nil
}

// AttachPolicy attaches policy name to a certificate.
func (r *Registry) AttachPolicy(name, certID string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.policies[name]; !ok {
		return fmt.Errorf("attach policy %s: %w", name, ErrNotFound)
	}
	c, ok := r.certs[certID]
	if !ok {
		return fmt.Errorf("attach policy %s to certificate %s: %w", name, certID, ErrNotFound)
	}
	c.policies[name] = true
	return nil
}

// DetachPolicy detaches policy name from a certificate.
func (r *Registry) DetachPolicy(name, certID string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.certs[certID]
	if !ok {
		return fmt.Errorf("detach policy %s from certificate %s: %w", name, certID, ErrNotFound)
	}
	delete(c.policies, name)
	return nil
}

// ---- certificates ----

// RegisterCertificate records a certificate the CA issued.
func (r *Registry) RegisterCertificate(id, pem string, status CertStatus, notAfter time.Time) error {
	if !certIDRE.MatchString(id) {
		return fmt.Errorf("register certificate: %w: id %q is not a hex SHA-256", ErrInvalid, id)
	}
	if !status.valid() {
		return fmt.Errorf("register certificate %s: %w: status %q", id, ErrInvalid, status)
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.certs[id]; ok {
		return fmt.Errorf("register certificate %s: %w", id, ErrAlreadyExists)
	}
	r.certs[id] = &certRec{
		Certificate: Certificate{ID: id, PEM: pem, Status: status, CreatedAt: now, UpdatedAt: now, NotAfter: notAfter},
		policies:    map[string]bool{},
		things:      map[string]bool{},
	}
	return nil
}

func (c *certRec) snapshot() Certificate {
	out := c.Certificate
	out.Policies = slices.Sorted(maps.Keys(c.policies))
	out.Things = slices.Sorted(maps.Keys(c.things))
	return out
}

// Certificate returns a certificate by id.
func (r *Registry) Certificate(id string) (Certificate, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c, ok := r.certs[id]
	if !ok {
		return Certificate{}, fmt.Errorf("certificate %s: %w", id, ErrNotFound)
	}
	return c.snapshot(), nil
}

// Certificates lists all certificates, sorted by creation time.
func (r *Registry) Certificates() []Certificate {
	r.mu.RLock()
	out := make([]Certificate, 0, len(r.certs))
	for _, c := range r.certs {
		out = append(out, c.snapshot())
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// SetCertificateStatus changes a certificate's status. A REVOKED
// certificate cannot be changed again, as in AWS IoT.
func (r *Registry) SetCertificateStatus(id string, status CertStatus) error {
	if !status.valid() || status == CertPendingActivation {
		return fmt.Errorf("set certificate %s status: %w: %q", id, ErrInvalid, status)
	}
	r.mu.Lock()
	c, ok := r.certs[id]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("set certificate %s status: %w", id, ErrNotFound)
	}
	if c.Status == CertRevoked && status != CertRevoked {
		r.mu.Unlock()
		return fmt.Errorf("set certificate %s status %s: %w: certificate is revoked", id, status, ErrConflict)
	}
	changed := c.Status != status
	c.Status = status
	c.UpdatedAt = r.now()
	r.mu.Unlock()
	if changed {
		r.emit(Event{Kind: CertificateStatusChanged, Certificate: id, Status: status})
	}
	return nil
}

// DeleteCertificate removes a certificate. Unless force is set it must
// not be ACTIVE and must have no attachments (AWS's rule).
func (r *Registry) DeleteCertificate(id string, force bool) error {
	r.mu.Lock()
	c, ok := r.certs[id]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("delete certificate %s: %w", id, ErrNotFound)
	}
	if !force && (c.Status == CertActive || len(c.policies) > 0 || len(c.things) > 0) {
		r.mu.Unlock()
		return fmt.Errorf("delete certificate %s: %w: status %s, %d policies, %d things attached", id, ErrConflict, c.Status, len(c.policies), len(c.things))
	}
	for t := range c.things {
		if th, ok := r.things[t]; ok {
			delete(th.principals, id)
		}
	}
	delete(r.certs, id)
	r.mu.Unlock()
	r.emit(Event{Kind: CertificateDeleted, Certificate: id})
	return nil
}

// Auth returns, in one consistent read, what authorizing an operation of
// a connection with certificate certID and client id clientID needs.
func (r *Registry) Auth(certID, clientID string) (AuthInfo, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c, ok := r.certs[certID]
	if !ok {
		return AuthInfo{}, fmt.Errorf("certificate %s: %w", certID, ErrNotFound)
	}
	info := AuthInfo{Status: c.Status}
	for name := range c.policies {
		if p, ok := r.policies[name]; ok {
			info.Policies = append(info.Policies, p.compiled)
		}
	}
	if c.things[clientID] {
		if th, ok := r.things[clientID]; ok {
			info.ThingName = th.name
			info.ThingAttributes = cloneMap(th.attrs)
		}
	}
	return info, nil
}

// ---- things ----

// ValidThingName reports whether name is a valid AWS IoT thing name.
func ValidThingName(name string) bool { return thingNameRE.MatchString(name) }

// CreateThing creates a thing; created is false if it already existed
// (the existing thing is left unchanged).
func (r *Registry) CreateThing(name string, attrs map[string]string) (created bool, err error) {
	if !ValidThingName(name) {
		return false, fmt.Errorf("create thing: %w: name %q must match [a-zA-Z0-9:_-]{1,128}", ErrInvalid, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.things[name]; ok {
		return false, nil
	}
	r.things[name] = &thingRec{
		name: name, attrs: cloneMap(attrs), groups: map[string]bool{}, principals: map[string]bool{},
		version: 1, createdAt: r.now(),
	}
	return true, nil
}

// SetThingAttributes replaces (merge=false) or merges the attributes.
func (r *Registry) SetThingAttributes(name string, attrs map[string]string, merge bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	th, ok := r.things[name]
	if !ok {
		return fmt.Errorf("update thing %s: %w", name, ErrNotFound)
	}
	if !merge {
		th.attrs = map[string]string{}
	}
	for k, v := range attrs {
		th.attrs[k] = v
	}
	th.version++
	return nil
}

// Thing returns a thing.
func (r *Registry) Thing(name string) (Thing, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	th, ok := r.things[name]
	if !ok {
		return Thing{}, fmt.Errorf("thing %s: %w", name, ErrNotFound)
	}
	return th.snapshot(), nil
}

func (th *thingRec) snapshot() Thing {
	return Thing{
		Name: th.name, Attributes: cloneMap(th.attrs), Groups: slices.Sorted(maps.Keys(th.groups)),
		Principals: slices.Sorted(maps.Keys(th.principals)), Version: th.version, CreatedAt: th.createdAt,
	}
}

// Things lists all things sorted by name.
func (r *Registry) Things() []Thing {
	r.mu.RLock()
	out := make([]Thing, 0, len(r.things))
	for _, th := range r.things {
		out = append(out, th.snapshot())
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// DeleteThing deletes a thing; it must have no principals attached.
func (r *Registry) DeleteThing(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	th, ok := r.things[name]
	if !ok {
		return fmt.Errorf("delete thing %s: %w", name, ErrNotFound)
	}
	if len(th.principals) > 0 {
		return fmt.Errorf("delete thing %s: %w: %d principals attached", name, ErrConflict, len(th.principals))
	}
	for g := range th.groups {
		delete(r.groups[g], name)
	}
	delete(r.things, name)
	return nil
}

// AttachThingPrincipal attaches a certificate to a thing.
func (r *Registry) AttachThingPrincipal(thing, certID string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	th, ok := r.things[thing]
	if !ok {
		return fmt.Errorf("attach principal to thing %s: %w", thing, ErrNotFound)
	}
	c, ok := r.certs[certID]
	if !ok {
		return fmt.Errorf("attach certificate %s to thing %s: %w", certID, thing, ErrNotFound)
	}
	th.principals[certID] = true
	c.things[thing] = true
	return nil
}

// DetachThingPrincipal detaches a certificate from a thing.
func (r *Registry) DetachThingPrincipal(thing, certID string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	th, ok := r.things[thing]
	if !ok {
		return fmt.Errorf("detach principal from thing %s: %w", thing, ErrNotFound)
	}
	delete(th.principals, certID)
	if c, ok := r.certs[certID]; ok {
		delete(c.things, thing)
	}
	return nil
}

// ---- groups ----

// CreateThingGroup creates a static thing group (idempotent).
func (r *Registry) CreateThingGroup(name string) error {
	if !ValidThingName(name) {
		return fmt.Errorf("create thing group: %w: name %q must match [a-zA-Z0-9:_-]{1,128}", ErrInvalid, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.groups[name]; !ok {
		r.groups[name] = map[string]bool{}
	}
	return nil
}

// AddThingToGroup adds thing to group.
func (r *Registry) AddThingToGroup(thing, group string) error {
	r.mu.Lock()
	members, ok := r.groups[group]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("add thing %s to group %s: group %w", thing, group, ErrNotFound)
	}
	th, ok := r.things[thing]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("add thing %s to group %s: thing %w", thing, group, ErrNotFound)
	}
	added := !members[thing]
	members[thing] = true
	th.groups[group] = true
	r.mu.Unlock()
	if added {
		r.emit(Event{Kind: ThingAddedToGroup, Thing: thing, Group: group})
	}
	return nil
}

// RemoveThingFromGroup removes thing from group.
func (r *Registry) RemoveThingFromGroup(thing, group string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	members, ok := r.groups[group]
	if !ok {
		return fmt.Errorf("remove thing %s from group %s: group %w", thing, group, ErrNotFound)
	}
	delete(members, thing)
	if th, ok := r.things[thing]; ok {
		delete(th.groups, group)
	}
	return nil
}

// GroupExists reports whether a thing group exists.
func (r *Registry) GroupExists(group string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.groups[group]
	return ok
}

// ThingGroups lists the thing groups' names, sorted.
func (r *Registry) ThingGroups() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.groups))
	for g := range r.groups {
		out = append(out, g)
	}
	sort.Strings(out)
	return out
}

// ThingsInGroup lists the members of group, sorted.
func (r *Registry) ThingsInGroup(group string) ([]string, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	members, ok := r.groups[group]
	if !ok {
		return nil, fmt.Errorf("thing group %s: %w", group, ErrNotFound)
	}
	return slices.Sorted(maps.Keys(members)), nil
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
