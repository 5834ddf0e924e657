package controlplane

import (
	"net/http"
	"strings"
)

// Endpoint is the local IoT Core's one AWS endpoint: every AWS API the
// project's tools use locally, on one URL, so AWS_ENDPOINT_URL works for
// every aws-sdk-go-v2 client and the AWS CLI. A request goes to the
// service its SigV4 credential scope names (…/REGION/SERVICE/aws4_request,
// in the Authorization header or a presigned URL's X-Amz-Credential);
// an unsigned one by its shape: X-Amz-Target DynamoDB_20120810.* to
// DynamoDB, /2015-03-31/… to Lambda, /BUCKET/… of a served bucket to S3,
// anything else to AWS IoT (control and data plane).
type Endpoint struct {
	// IoT serves the AWS IoT control plane and data plane (a *Handler
	// with ServeDataPlane).
	IoT http.Handler
	// Lambda, DynamoDB and S3 serve their APIs; nil ones are not served.
	Lambda   http.Handler
	DynamoDB http.Handler
	S3       http.Handler
	// IsDynamoDB, IsLambda and IsS3 recognize unsigned requests of a
	// service (nil: by signature only).
	IsDynamoDB, IsLambda, IsS3 func(*http.Request) bool
}

// signingService returns the service of a request's SigV4 credential
// scope ("" when unsigned).
func signingService(r *http.Request) string {
	cred := r.URL.Query().Get("X-Amz-Credential")
	if auth := r.Header.Get("Authorization"); cred == "" && strings.HasPrefix(auth, "AWS4-HMAC-SHA256 ") {
		_, after, ok := strings.Cut(auth, "Credential=")
		if !ok {
			return ""
		}
		cred, _, _ = strings.Cut(after, ",")
	}
	parts := strings.Split(strings.TrimSpace(cred), "/")
	if len(parts) != 5 || parts[4] != "aws4_request" {
		return ""
	}
	return parts[3]
}

// ServeHTTP implements http.Handler.
func (e Endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	is := func(f func(*http.Request) bool) bool { return f != nil && f(r) }
	var h http.Handler
	switch svc := signingService(r); {
	case svc == "dynamodb" || (svc == "" && is(e.IsDynamoDB)):
		h = e.DynamoDB
	case svc == "lambda" || (svc == "" && is(e.IsLambda)):
		h = e.Lambda
	case svc == "s3" || (svc == "" && is(e.IsS3)):
		h = e.S3
	default: // iot (control plane), iotdevicegateway (data plane), unsigned
		h = e.IoT
	}
	if h == nil {
		h = e.IoT // answers UnknownOperationException
	}
	h.ServeHTTP(w, r)
}
