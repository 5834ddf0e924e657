package controlplane

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(name)) })
}

func TestEndpointDispatch(t *testing.T) {
	e := Endpoint{
		IoT: named("iot"), Lambda: named("lambda"), DynamoDB: named("dynamodb"), S3: named("s3"),
		IsDynamoDB: func(r *http.Request) bool { return r.Header.Get("X-Amz-Target") != "" },
		IsLambda:   func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/2015-03-31/") },
		IsS3:       func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/bucket/") },
	}
	sig := func(service string) string {
		return "AWS4-HMAC-SHA256 Credential=AKID/20261205/local-1/" + service + "/aws4_request, SignedHeaders=host, Signature=00"
	}
	for _, c := range []struct {
		method, target, auth, amzTarget, want string
	}{
		{"GET", "/things", sig("iot"), "", "iot"},
		{"POST", "/topics/a%2Fb", sig("iotdevicegateway"), "", "iot"},
		{"POST", "/2015-03-31/functions/f/invocations", sig("lambda"), "", "lambda"},
		{"POST", "/", sig("dynamodb"), "DynamoDB_20120810.GetItem", "dynamodb"},
		{"PUT", "/unknown-bucket/k", sig("s3"), "", "s3"},
		{"GET", "/bucket/k?X-Amz-Credential=AKID%2F20261205%2Flocal-1%2Fs3%2Faws4_request", "", "", "s3"},
		// Unsigned: by shape.
		{"GET", "/bucket/k", "", "", "s3"},
		{"POST", "/", "", "DynamoDB_20120810.Scan", "dynamodb"},
		{"POST", "/2015-03-31/functions/f/invocations", "", "", "lambda"},
		{"GET", "/jobs", "", "", "iot"},
		// A signature names the service, whatever the path.
		{"GET", "/bucket/k", sig("iot"), "", "iot"},
	} {
		r := httptest.NewRequest(c.method, c.target, nil)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		if c.amzTarget != "" {
			r.Header.Set("X-Amz-Target", c.amzTarget)
		}
		w := httptest.NewRecorder()
		e.ServeHTTP(w, r)
		assert.Equal(t, c.want, w.Body.String(), "%s %s %s", c.method, c.target, c.auth)
	}
	// A service without a handler: the IoT handler answers (unknown operation).
	w := httptest.NewRecorder()
	Endpoint{IoT: named("iot")}.ServeHTTP(w, httptest.NewRequest("POST", "/2015-03-31/functions/f/invocations", nil))
	assert.Equal(t, "iot", w.Body.String())
}
