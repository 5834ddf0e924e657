package allowlistsync

import (
	"context"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/stretchr/testify/require"

	iotpolicy "github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
)

const arnPrefix = "arn:aws:iot:eu-central-1:123456789012:"

func certARN(id string) string { return arnPrefix + "cert/" + id }

// simIoT is the local IoT Core's control plane (sim/awsiot over the
// simulator's registry), the project's one AWS IoT stand-in, with helpers
// to set up and inspect devices. It records calls and injects failures
// (awsiot.Client.FailNext, AfterEach, SetPageSize).
type simIoT struct {
	*awsiot.Client
	reg *simregistry.Registry
}

func newSimIoT(t testing.TB) *simIoT {
	t.Helper()
	reg := simregistry.New(nil)
	require.NoError(t, reg.CreatePolicy(policy, iotpolicy.Document{Version: "2012-10-17", Statement: []iotpolicy.Statement{
		{Effect: "Allow", Action: []string{"iot:Connect"}, Resource: []string{"*"}},
	}}))
	require.NoError(t, reg.CreateThingGroup(group))
	return &simIoT{Client: awsiot.New(reg, "aws", "eu-central-1", "123456789012"), reg: reg}
}

// provision does what fleet provisioning does for a device: an active
// certificate with the device policy attached, a thing in the group with
// the certificate as principal.
func (s *simIoT) provision(t testing.TB, thing, certID string) {
	t.Helper()
	require.NoError(t, s.reg.RegisterCertificate(certID, "", simregistry.CertActive, time.Now().Add(time.Hour)))
	require.NoError(t, s.reg.AttachPolicy(policy, certID))
	_, err := s.reg.CreateThing(thing, nil)
	require.NoError(t, err)
	require.NoError(t, s.reg.AttachThingPrincipal(thing, certID))
	require.NoError(t, s.reg.AddThingToGroup(thing, group))
}

func (s *simIoT) failNext(op, key string, errs ...error) { s.FailNext(op, key, errs...) }
func (s *simIoT) callsOf(op string) []string             { return s.CallsOf(op) }
func (s *simIoT) allCalls() []string                     { return s.Calls() }

func (s *simIoT) certStatus(id string) (types.CertificateStatus, bool) {
	c, err := s.reg.Certificate(id)
	if err != nil {
		return "", false
	}
	return types.CertificateStatus(c.Status), true
}

func (s *simIoT) thingExists(name string) bool {
	_, err := s.reg.Thing(name)
	return err == nil
}

func (s *simIoT) policyAttached(policyName, target string) bool {
	id, ok := certificateIDFromARN(target)
	if !ok {
		return false
	}
	c, err := s.reg.Certificate(id)
	return err == nil && slices.Contains(c.Policies, policyName)
}

func notFound(what string) error {
	return &types.ResourceNotFoundException{Message: aws.String(what + " not found")}
}

func throttled() error { return &types.ThrottlingException{Message: aws.String("Rate exceeded")} }

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
