package allowlistsync

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
)

const arnPrefix = "arn:aws:iot:eu-central-1:123456789012:"

func certARN(id string) string { return arnPrefix + "cert/" + id }

type fakeCert struct {
	status types.CertificateStatus
}

type fakeThing struct {
	principals map[string]bool // certificate ARNs
	groups     map[string]bool
}

// fakeIoT is an in-memory AWS IoT control plane for the calls the sync
// makes, with AWS's behaviour where the sync depends on it (see IoTAPI),
// a record of every call, and injectable failures.
type fakeIoT struct {
	mu       sync.Mutex
	certs    map[string]*fakeCert
	things   map[string]*fakeThing
	groups   map[string]bool
	policies map[string]map[string]bool // policy → attached targets
	calls    []string                   // "Op key"
	inject   map[string][]error         // "Op key" → errors returned by the next calls
	// pageSize bounds ListThingPrincipals pages (0: unbounded).
	pageSize int
	// after runs (without the lock) after a successful call.
	after func(op, key string)
}

func newFakeIoT(group, policy string) *fakeIoT {
	return &fakeIoT{
		certs:    map[string]*fakeCert{},
		things:   map[string]*fakeThing{},
		groups:   map[string]bool{group: true},
		policies: map[string]map[string]bool{policy: {}},
		inject:   map[string][]error{},
	}
}

// provision does what fleet provisioning does for a device: an active
// certificate with the policy attached, a thing in the group with the
// certificate as principal.
func (f *fakeIoT) provision(thing, certID, group, policy string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.certs[certID] = &fakeCert{status: types.CertificateStatusActive}
	t := f.things[thing]
	if t == nil {
		t = &fakeThing{principals: map[string]bool{}, groups: map[string]bool{}}
		f.things[thing] = t
	}
	t.principals[certARN(certID)] = true
	t.groups[group] = true
	f.policies[policy][certARN(certID)] = true
}

// failNext makes the next len(errs) calls of op on key fail.
func (f *fakeIoT) failNext(op, key string, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inject[op+" "+key] = append(f.inject[op+" "+key], errs...)
}

func (f *fakeIoT) callsOf(op string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if strings.HasPrefix(c, op+" ") {
			out = append(out, strings.TrimPrefix(c, op+" "))
		}
	}
	return out
}

func (f *fakeIoT) allCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeIoT) certStatus(id string) (types.CertificateStatus, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.certs[id]
	if !ok {
		return "", false
	}
	return c.status, true
}

func (f *fakeIoT) thingExists(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.things[name]
	return ok
}

func (f *fakeIoT) policyAttached(policy, target string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.policies[policy][target]
}

// begin records a call and returns an injected error, if any. The caller
// holds f.mu until it returns.
func (f *fakeIoT) begin(ctx context.Context, op, key string) error {
	f.mu.Lock()
	f.calls = append(f.calls, op+" "+key)
	if err := ctx.Err(); err != nil {
		return err
	}
	k := op + " " + key
	if errs := f.inject[k]; len(errs) > 0 {
		f.inject[k] = errs[1:]
		return errs[0]
	}
	return nil
}

func (f *fakeIoT) end(op, key string, err error) {
	after := f.after
	f.mu.Unlock()
	if err == nil && after != nil {
		after(op, key)
	}
}

func notFound(what string) error {
	return &types.ResourceNotFoundException{Message: aws.String(what + " not found")}
}

func throttled() error { return &types.ThrottlingException{Message: aws.String("Rate exceeded")} }

func (f *fakeIoT) ListThingPrincipals(ctx context.Context, in *iot.ListThingPrincipalsInput, _ ...func(*iot.Options)) (out *iot.ListThingPrincipalsOutput, err error) {
	name := aws.ToString(in.ThingName)
	if err = f.begin(ctx, "ListThingPrincipals", name); err == nil {
		out, err = f.listThingPrincipals(name, aws.ToString(in.NextToken))
	}
	f.end("ListThingPrincipals", name, err)
	return out, err
}

func (f *fakeIoT) listThingPrincipals(name, token string) (*iot.ListThingPrincipalsOutput, error) {
	t, ok := f.things[name]
	if !ok {
		return nil, notFound("thing " + name)
	}
	all := make([]string, 0, len(t.principals))
	for p := range t.principals {
		all = append(all, p)
	}
	slices.Sort(all)
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(all) {
			return nil, &types.InvalidRequestException{Message: aws.String("bad next token")}
		}
		start = n
	}
	end := len(all)
	if f.pageSize > 0 {
		end = min(start+f.pageSize, len(all))
	}
	out := &iot.ListThingPrincipalsOutput{Principals: all[start:end]}
	if end < len(all) {
		out.NextToken = aws.String(strconv.Itoa(end))
	}
	return out, nil
}

func (f *fakeIoT) DescribeCertificate(ctx context.Context, in *iot.DescribeCertificateInput, _ ...func(*iot.Options)) (out *iot.DescribeCertificateOutput, err error) {
	id := aws.ToString(in.CertificateId)
	if err = f.begin(ctx, "DescribeCertificate", id); err == nil {
		if c, ok := f.certs[id]; ok {
			out = &iot.DescribeCertificateOutput{CertificateDescription: &types.CertificateDescription{
				CertificateId: aws.String(id), CertificateArn: aws.String(certARN(id)), Status: c.status,
			}}
		} else {
			err = notFound("certificate " + id)
		}
	}
	f.end("DescribeCertificate", id, err)
	return out, err
}

func (f *fakeIoT) UpdateCertificate(ctx context.Context, in *iot.UpdateCertificateInput, _ ...func(*iot.Options)) (out *iot.UpdateCertificateOutput, err error) {
	id := aws.ToString(in.CertificateId)
	if err = f.begin(ctx, "UpdateCertificate", id); err == nil {
		c, ok := f.certs[id]
		switch {
		case !ok:
			err = notFound("certificate " + id)
		case c.status == types.CertificateStatusRevoked:
			err = &types.CertificateStateException{Message: aws.String("certificate is revoked")}
		default:
			c.status = in.NewStatus
			out = &iot.UpdateCertificateOutput{}
		}
	}
	f.end("UpdateCertificate", id, err)
	return out, err
}

func (f *fakeIoT) DetachPolicy(ctx context.Context, in *iot.DetachPolicyInput, _ ...func(*iot.Options)) (out *iot.DetachPolicyOutput, err error) {
	target := aws.ToString(in.Target)
	if err = f.begin(ctx, "DetachPolicy", target); err == nil {
		targets, ok := f.policies[aws.ToString(in.PolicyName)]
		if !ok {
			err = notFound("policy " + aws.ToString(in.PolicyName))
		} else {
			delete(targets, target)
			out = &iot.DetachPolicyOutput{}
		}
	}
	f.end("DetachPolicy", target, err)
	return out, err
}

func (f *fakeIoT) DetachThingPrincipal(ctx context.Context, in *iot.DetachThingPrincipalInput, _ ...func(*iot.Options)) (out *iot.DetachThingPrincipalOutput, err error) {
	name := aws.ToString(in.ThingName)
	if err = f.begin(ctx, "DetachThingPrincipal", name); err == nil {
		t, ok := f.things[name]
		if !ok {
			err = notFound("thing " + name)
		} else {
			delete(t.principals, aws.ToString(in.Principal))
			out = &iot.DetachThingPrincipalOutput{}
		}
	}
	f.end("DetachThingPrincipal", name, err)
	return out, err
}

func (f *fakeIoT) RemoveThingFromThingGroup(ctx context.Context, in *iot.RemoveThingFromThingGroupInput, _ ...func(*iot.Options)) (out *iot.RemoveThingFromThingGroupOutput, err error) {
	name := aws.ToString(in.ThingName)
	if err = f.begin(ctx, "RemoveThingFromThingGroup", name); err == nil {
		t, ok := f.things[name]
		group := aws.ToString(in.ThingGroupName)
		switch {
		case !f.groups[group]:
			err = notFound("thing group " + group)
		case !ok:
			err = notFound("thing " + name)
		default:
			delete(t.groups, group)
			out = &iot.RemoveThingFromThingGroupOutput{}
		}
	}
	f.end("RemoveThingFromThingGroup", name, err)
	return out, err
}

func (f *fakeIoT) DeleteThing(ctx context.Context, in *iot.DeleteThingInput, _ ...func(*iot.Options)) (out *iot.DeleteThingOutput, err error) {
	name := aws.ToString(in.ThingName)
	if err = f.begin(ctx, "DeleteThing", name); err == nil {
		t, ok := f.things[name]
		switch {
		case !ok: // AWS: deleting a thing that does not exist succeeds
			out = &iot.DeleteThingOutput{}
		case len(t.principals) > 0:
			err = &types.InvalidRequestException{Message: aws.String(fmt.Sprintf("Cannot delete. Thing %s is still attached to one or more principals", name))}
		default:
			delete(f.things, name)
			out = &iot.DeleteThingOutput{}
		}
	}
	f.end("DeleteThing", name, err)
	return out, err
}

// fakeS3 serves objects from memory.
type fakeS3 struct {
	mu       sync.Mutex
	objects  map[string]string            // "bucket/key" → body
	metadata map[string]map[string]string // "bucket/key" → user metadata
	gets     []string
}

// putWithMetadata stores an object with user metadata.
func (f *fakeS3) putWithMetadata(bucket, key, body string, meta map[string]string) {
	f.put(bucket, key, body)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.metadata == nil {
		f.metadata = map[string]map[string]string{}
	}
	f.metadata[bucket+"/"+key] = meta
}

func (f *fakeS3) put(bucket, key, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.objects == nil {
		f.objects = map[string]string{}
	}
	f.objects[bucket+"/"+key] = body
}

func (f *fakeS3) GetObject(ctx context.Context, in *s3.GetObjectInput, _ ...func(*s3.Options)) (*s3.GetObjectOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := aws.ToString(in.Bucket) + "/" + aws.ToString(in.Key)
	f.gets = append(f.gets, k)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	body, ok := f.objects[k]
	if !ok {
		return nil, &s3types.NoSuchKey{Message: aws.String("The specified key does not exist.")}
	}
	return &s3.GetObjectOutput{Body: io.NopCloser(strings.NewReader(body)), ContentLength: aws.Int64(int64(len(body))), Metadata: f.metadata[k]}, nil
}
