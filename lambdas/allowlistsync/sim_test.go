package allowlistsync

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/sim/iottest"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
	"github.com/iot-fleet/iot-fleet/sim/s3api"
)

func certARN(id string) string { return iottest.CertARN(id) }

// simIoT is the local IoT Core's control plane served over HTTP
// (sim/iottest: sim/controlplane over sim/awsiot), the project's one AWS
// IoT stand-in; the handler reaches it with a real aws-sdk-go-v2
// *iot.Client (client). The test sets devices up in its registry and
// injects failures and reads the calls behind the endpoint
// (awsiot.Client.FailNext, AfterEach, SetPageSize, Calls).
type simIoT struct {
	*iottest.Server
	reg    *simregistry.Registry
	client *iot.Client
}

func newSimIoT(t testing.TB) *simIoT {
	t.Helper()
	s := iottest.Start(t, iottest.Options{Policies: []string{policy}, ThingGroups: []string{group}})
	return &simIoT{Server: s, reg: s.Registry, client: s.Client()}
}

// provision does what fleet provisioning does for a device: an active
// certificate with the device policy attached, a thing in the group with
// the certificate as principal.
func (s *simIoT) provision(t testing.TB, thing, certID string) {
	t.Helper()
	s.Provision(t, thing, group, policy, certID)
}

func (s *simIoT) failNext(op, key string, errs ...error) { s.IoT.FailNext(op, key, errs...) }
func (s *simIoT) callsOf(op string) []string             { return s.IoT.CallsOf(op) }
func (s *simIoT) allCalls() []string                     { return s.IoT.Calls() }
func (s *simIoT) SetPageSize(n int)                      { s.IoT.SetPageSize(n) }
func (s *simIoT) AfterEach(fn func(op, key string))      { s.IoT.AfterEach(fn) }

func (s *simIoT) certStatus(id string) (types.CertificateStatus, bool) { return s.CertStatus(id) }
func (s *simIoT) thingExists(name string) bool                         { return s.ThingExists(name) }

func (s *simIoT) policyAttached(policyName, target string) bool {
	id, ok := certificateIDFromARN(target)
	return ok && s.PolicyAttached(policyName, id)
}

func notFound(what string) error { return iottest.NotFound(what) }

func throttled() error { return iottest.Throttled() }

// simS3 is the local IoT Core's S3 (sim/s3api) served over HTTP on
// 127.0.0.1, reached with a real aws-sdk-go-v2 *s3.Client (client) as in
// AWS. gets records the objects the handler read ("bucket/key").
type simS3 struct {
	store  *s3api.Store
	client *s3.Client

	mu   sync.Mutex
	gets []string
}

func newSimS3(t testing.TB) *simS3 {
	t.Helper()
	f := &simS3{}
	var url string
	store, err := s3api.New(s3api.Options{Buckets: []string{bucket}, BaseURL: func() string { return url }})
	require.NoError(t, err)
	f.store = store
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			f.mu.Lock()
			f.gets = append(f.gets, strings.TrimPrefix(r.URL.Path, "/"))
			f.mu.Unlock()
		}
		store.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	url = srv.URL
	f.client = s3.New(s3.Options{BaseEndpoint: aws.String(url), Region: "eu-west-1", UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "test-secret", "")})
	return f
}

// putWithMetadata stores an object with user metadata, as the deploy
// pipeline uploads allowlist.txt.
func (f *simS3) putWithMetadata(t testing.TB, key, body string, meta map[string]string) {
	t.Helper()
	_, err := f.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key),
		Body: strings.NewReader(body), Metadata: meta})
	require.NoError(t, err)
}

func (f *simS3) put(t testing.TB, key, body string) { f.putWithMetadata(t, key, body, nil) }

// reads returns the objects read so far.
func (f *simS3) reads() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.gets)
}
