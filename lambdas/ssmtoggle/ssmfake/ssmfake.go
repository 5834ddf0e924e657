// Package ssmfake holds an in-memory fake of the one AWS API the
// SSM-on-demand Lambdas call that the local IoT Core does not serve:
// Systems Manager (activations and managed instances; the simulator does
// not emulate it). It has AWS's behaviour where the Lambdas depend on it,
// a record of every call and injectable failures. Tests and the local
// stack use it; AWS IoT's control and data planes are the simulator's,
// reached over HTTP with the real clients (sim/iottest, sim/stack).
package ssmfake

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// Activation is a hybrid activation the fake SSM holds.
type Activation struct {
	ID, Code, IamRole, DefaultInstanceName string
	Limit, Registrations                   int32
	Expiry, Created                        time.Time
	Tags                                   map[string]string
}

// Instance is a managed instance (mi-...).
type Instance struct {
	ID, ActivationID, Name, IamRole string
	Tags                            map[string]string
	Registered                      time.Time
}

// Calls records calls as "Op key" strings.
type Calls struct {
	mu    sync.Mutex
	calls []string
}

func (c *Calls) add(op, key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, op+" "+key)
}

// All returns every call so far.
func (c *Calls) All() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

// Count returns how many calls of op were made.
func (c *Calls) Count(op string) int {
	n := 0
	for _, s := range c.All() {
		if strings.HasPrefix(s, op+" ") {
			n++
		}
	}
	return n
}

// faults holds injected errors by "Op key" (key "*" matches any key).
type faults struct {
	mu     sync.Mutex
	inject map[string][]error
}

func (f *faults) FailNext(op, key string, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inject == nil {
		f.inject = map[string][]error{}
	}
	f.inject[op+" "+key] = append(f.inject[op+" "+key], errs...)
}

func (f *faults) take(op, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range []string{op + " " + key, op + " *"} {
		if errs := f.inject[k]; len(errs) > 0 {
			f.inject[k] = errs[1:]
			return errs[0]
		}
	}
	return nil
}

// SSM is a fake Systems Manager: activations, managed instances, tags.
type SSM struct {
	Calls
	faults
	Now func() time.Time
	// PageSize bounds DescribeActivations / DescribeInstanceInformation
	// pages (0: 50, SSM's default maximum).
	PageSize int

	mu          sync.Mutex
	activations map[string]*Activation
	instances   map[string]*Instance
	seq         int
}

// NewSSM returns an empty fake; now may be nil (time.Now).
func NewSSM(now func() time.Time) *SSM {
	if now == nil {
		now = time.Now
	}
	return &SSM{Now: now, activations: map[string]*Activation{}, instances: map[string]*Instance{}}
}

// FailNext makes the next len(errs) calls of op (e.g. "CreateActivation")
// on key (activation id, instance id, role; "*" for any) fail.
func (s *SSM) FailNext(op, key string, errs ...error) { s.faults.FailNext(op, key, errs...) }

// Throttled is the error SSM answers when a caller exceeds its rate.
func Throttled() error {
	return &types.TooManyUpdates{Message: aws.String("Rate exceeded")}
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// CreateActivation implements the SSM API.
func (s *SSM) CreateActivation(ctx context.Context, in *ssm.CreateActivationInput, _ ...func(*ssm.Options)) (*ssm.CreateActivationOutput, error) {
	role := aws.ToString(in.IamRole)
	s.add("CreateActivation", role)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.take("CreateActivation", role); err != nil {
		return nil, err
	}
	if role == "" {
		return nil, errors.New("ValidationException: IamRole is required")
	}
	now := s.Now()
	limit := aws.ToInt32(in.RegistrationLimit)
	if in.RegistrationLimit == nil {
		limit = 1
	}
	if limit < 1 || limit > 1000 {
		return nil, fmt.Errorf("ValidationException: RegistrationLimit %d", limit)
	}
	expiry := now.Add(24 * time.Hour)
	if in.ExpirationDate != nil {
		expiry = *in.ExpirationDate
	}
	if !expiry.After(now) || expiry.Sub(now) > 30*24*time.Hour {
		return nil, &types.InvalidParameters{Message: aws.String("ExpirationDate must be in the future and within 30 days")}
	}
	tags := map[string]string{}
	for _, t := range in.Tags {
		tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	a := &Activation{
		ID:   fmt.Sprintf("%08x-%s-4%s-8%s-%s", s.seq, randHex(4), randHex(3), randHex(3), randHex(12)),
		Code: randHex(20), IamRole: role, DefaultInstanceName: aws.ToString(in.DefaultInstanceName),
		Limit: limit, Expiry: expiry, Created: now, Tags: tags,
	}
	s.activations[a.ID] = a
	return &ssm.CreateActivationOutput{ActivationId: aws.String(a.ID), ActivationCode: aws.String(a.Code)}, nil
}

// Register is what `amazon-ssm-agent -register` does on the service side:
// it checks the code, expiry and registration limit and creates a managed
// instance carrying the activation's tags.
func (s *SSM) Register(activationID, code string) (string, error) {
	s.add("Register", activationID)
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.activations[activationID]
	switch {
	case a == nil:
		return "", fmt.Errorf("InvalidActivation: activation %s not found", activationID)
	case a.Code != code:
		return "", fmt.Errorf("InvalidActivation: wrong code for %s", activationID)
	case !a.Expiry.After(s.Now()):
		return "", fmt.Errorf("ActivationExpired: %s", activationID)
	case a.Registrations >= a.Limit:
		return "", fmt.Errorf("InvalidActivation: registration limit of %s reached", activationID)
	}
	a.Registrations++
	tags := map[string]string{}
	for k, v := range a.Tags {
		tags[k] = v
	}
	id := "mi-" + randHex(17)
	s.instances[id] = &Instance{ID: id, ActivationID: a.ID, Name: a.DefaultInstanceName, IamRole: a.IamRole, Tags: tags, Registered: s.Now()}
	return id, nil
}

// Activations returns a copy of every activation, sorted by id.
func (s *SSM) Activations() []Activation {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Activation, 0, len(s.activations))
	for _, a := range s.activations {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Instances returns a copy of every managed instance, sorted by id.
func (s *SSM) Instances() []Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Instance, 0, len(s.instances))
	for _, i := range s.instances {
		out = append(out, *i)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// AddInstance adds a managed instance directly (e.g. one registered by
// hand, outside this project).
func (s *SSM) AddInstance(in Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := in
	s.instances[in.ID] = &cp
}

// DeleteActivation implements the SSM API: deleting a missing activation
// fails with InvalidActivation; registered instances stay.
func (s *SSM) DeleteActivation(ctx context.Context, in *ssm.DeleteActivationInput, _ ...func(*ssm.Options)) (*ssm.DeleteActivationOutput, error) {
	id := aws.ToString(in.ActivationId)
	s.add("DeleteActivation", id)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.take("DeleteActivation", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.activations[id] == nil {
		return nil, &types.InvalidActivation{Message: aws.String("Activation ID is not valid: " + id)}
	}
	delete(s.activations, id)
	return &ssm.DeleteActivationOutput{}, nil
}

// DeregisterManagedInstance implements the SSM API.
func (s *SSM) DeregisterManagedInstance(ctx context.Context, in *ssm.DeregisterManagedInstanceInput, _ ...func(*ssm.Options)) (*ssm.DeregisterManagedInstanceOutput, error) {
	id := aws.ToString(in.InstanceId)
	s.add("DeregisterManagedInstance", id)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.take("DeregisterManagedInstance", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.instances[id] == nil {
		return nil, &types.InvalidInstanceId{Message: aws.String("Instance ID is not valid: " + id)}
	}
	delete(s.instances, id)
	return &ssm.DeregisterManagedInstanceOutput{}, nil
}

func (s *SSM) pageSize() int {
	if s.PageSize > 0 {
		return s.PageSize
	}
	return 50
}

// page returns items [start, start+size) and the next token (an index:
// thing groups do not change during a listing here).
func page(n int, token *string, size int) (start, end int, next *string, err error) {
	if t := aws.ToString(token); t != "" {
		start, err = strconv.Atoi(t)
		if err != nil || start < 0 || start > n {
			return 0, 0, nil, fmt.Errorf("bad token %s", t)
		}
	}
	end = min(start+size, n)
	if end < n {
		next = aws.String(strconv.Itoa(end))
	}
	return start, end, next, nil
}

// keyedPage returns the items whose key sorts after the token (the last
// key of the previous page), so deleting items between pages skips
// nothing, as with SSM's opaque tokens.
func keyedPage[T any](items []T, key func(T) string, token *string, size int) ([]T, *string) {
	start := 0
	if t := aws.ToString(token); t != "" {
		start = sort.Search(len(items), func(i int) bool { return key(items[i]) > t })
	}
	end := min(start+size, len(items))
	var next *string
	if end < len(items) {
		next = aws.String(key(items[end-1]))
	}
	return items[start:end], next
}

// DescribeInstanceInformation implements the SSM API for the filters
// InstanceIds and ActivationIds.
func (s *SSM) DescribeInstanceInformation(ctx context.Context, in *ssm.DescribeInstanceInformationInput, _ ...func(*ssm.Options)) (*ssm.DescribeInstanceInformationOutput, error) {
	key := ""
	for _, f := range in.Filters {
		key += aws.ToString(f.Key) + "=" + strings.Join(f.Values, ",")
	}
	s.add("DescribeInstanceInformation", key)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.take("DescribeInstanceInformation", key); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var list []types.InstanceInformation
	for _, i := range s.instancesSorted() {
		ok := true
		for _, f := range in.Filters {
			var v string
			switch aws.ToString(f.Key) {
			case "InstanceIds":
				v = i.ID
			case "ActivationIds":
				v = i.ActivationID
			default:
				return nil, &types.InvalidFilterKey{Message: aws.String("unsupported filter key in fake: " + aws.ToString(f.Key))}
			}
			if !slices.Contains(f.Values, v) {
				ok = false
			}
		}
		if ok {
			list = append(list, types.InstanceInformation{
				InstanceId: aws.String(i.ID), ActivationId: aws.String(i.ActivationID), Name: aws.String(i.Name),
				IamRole: aws.String(i.IamRole), PingStatus: types.PingStatusOnline, ResourceType: types.ResourceTypeManagedInstance,
				RegistrationDate: aws.Time(i.Registered),
			})
		}
	}
	pageItems, next := keyedPage(list, func(i types.InstanceInformation) string { return aws.ToString(i.InstanceId) }, in.NextToken, s.pageSize())
	return &ssm.DescribeInstanceInformationOutput{InstanceInformationList: pageItems, NextToken: next}, nil
}

func (s *SSM) instancesSorted() []*Instance {
	out := make([]*Instance, 0, len(s.instances))
	for _, i := range s.instances {
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// DescribeActivations implements the SSM API for the filters IamRole and
// ActivationIds; Expired is computed from the clock.
func (s *SSM) DescribeActivations(ctx context.Context, in *ssm.DescribeActivationsInput, _ ...func(*ssm.Options)) (*ssm.DescribeActivationsOutput, error) {
	key := ""
	for _, f := range in.Filters {
		key += string(f.FilterKey) + "=" + strings.Join(f.FilterValues, ",")
	}
	s.add("DescribeActivations", key)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.take("DescribeActivations", key); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Now()
	var list []types.Activation
	ids := make([]string, 0, len(s.activations))
	for id := range s.activations {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		a := s.activations[id]
		ok := true
		for _, f := range in.Filters {
			var v string
			switch f.FilterKey {
			case types.DescribeActivationsFilterKeysIamRole:
				v = a.IamRole
			case types.DescribeActivationsFilterKeysActivationIds:
				v = a.ID
			case types.DescribeActivationsFilterKeysDefaultInstanceName:
				v = a.DefaultInstanceName
			}
			if !slices.Contains(f.FilterValues, v) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		var tags []types.Tag
		for _, k := range slices.Sorted(maps.Keys(a.Tags)) {
			tags = append(tags, types.Tag{Key: aws.String(k), Value: aws.String(a.Tags[k])})
		}
		list = append(list, types.Activation{
			ActivationId: aws.String(a.ID), IamRole: aws.String(a.IamRole), DefaultInstanceName: aws.String(a.DefaultInstanceName),
			RegistrationLimit: aws.Int32(a.Limit), RegistrationsCount: aws.Int32(a.Registrations),
			ExpirationDate: aws.Time(a.Expiry), CreatedDate: aws.Time(a.Created), Expired: !a.Expiry.After(now), Tags: tags,
		})
	}
	pageItems, next := keyedPage(list, func(a types.Activation) string { return aws.ToString(a.ActivationId) }, in.NextToken, s.pageSize())
	return &ssm.DescribeActivationsOutput{ActivationList: pageItems, NextToken: next}, nil
}

// ListTagsForResource implements the SSM API for managed instances.
func (s *SSM) ListTagsForResource(ctx context.Context, in *ssm.ListTagsForResourceInput, _ ...func(*ssm.Options)) (*ssm.ListTagsForResourceOutput, error) {
	id := aws.ToString(in.ResourceId)
	s.add("ListTagsForResource", string(in.ResourceType)+"/"+id)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.take("ListTagsForResource", id); err != nil {
		return nil, err
	}
	if in.ResourceType != types.ResourceTypeForTaggingManagedInstance {
		return nil, &types.InvalidResourceType{Message: aws.String("fake supports ManagedInstance only")}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.instances[id]
	if i == nil {
		return nil, &types.InvalidResourceId{Message: aws.String("The resource ID is not valid: " + id)}
	}
	var tags []types.Tag
	for _, k := range slices.Sorted(maps.Keys(i.Tags)) {
		tags = append(tags, types.Tag{Key: aws.String(k), Value: aws.String(i.Tags[k])})
	}
	return &ssm.ListTagsForResourceOutput{TagList: tags}, nil
}
