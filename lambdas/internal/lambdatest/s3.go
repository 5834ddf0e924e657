package lambdatest

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
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/iot-fleet/iot-fleet/sim/s3api"
)

// S3 is Amazon S3 for the Lambdas' tests: the local IoT Core's S3
// (sim/s3api) served over HTTP on 127.0.0.1. A handler reaches it with a
// real aws-sdk-go-v2 *s3.Client (Client), a packaged bootstrap with
// AWS_ENDPOINT_URL_S3=URL (path-style, as the SDK addresses an endpoint
// override), exactly as they reach S3 in AWS.
type S3 struct {
	// Store holds the buckets behind the endpoint.
	Store *s3api.Store
	// Client is a real S3 client for the endpoint (path-style).
	Client *s3.Client
	// URL is the endpoint (http://127.0.0.1:PORT).
	URL string

	mu   sync.Mutex
	gets []string
}

// StartS3 serves buckets until the test ends.
func StartS3(t testing.TB, buckets ...string) *S3 {
	t.Helper()
	s := &S3{}
	store, err := s3api.New(s3api.Options{Buckets: buckets, BaseURL: func() string { return s.URL }})
	if err != nil {
		t.Fatalf("lambdatest: s3: %v", err)
	}
	s.Store = store
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			s.mu.Lock()
			s.gets = append(s.gets, strings.TrimPrefix(r.URL.Path, "/"))
			s.mu.Unlock()
		}
		store.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	s.Client = s3.New(s3.Options{BaseEndpoint: aws.String(s.URL), Region: "eu-west-1", UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "test-secret", "")})
	return s
}

// Put uploads an object through the endpoint, as the deploy pipeline
// uploads allowlist.txt.
func (s *S3) Put(t testing.TB, bucket, key, body string) {
	t.Helper()
	s.PutWithMetadata(t, bucket, key, body, nil)
}

// PutWithMetadata is Put with user metadata (x-amz-meta-*).
func (s *S3) PutWithMetadata(t testing.TB, bucket, key, body string, meta map[string]string) {
	t.Helper()
	_, err := s.Client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key),
		Body: strings.NewReader(body), Metadata: meta})
	if err != nil {
		t.Fatalf("lambdatest: put s3://%s/%s: %v", bucket, key, err)
	}
}

// Reads returns the objects read (GET) so far, as "bucket/key", in order.
func (s *S3) Reads() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.gets)
}
