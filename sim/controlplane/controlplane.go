// Package controlplane serves the AWS IoT control-plane API over HTTP, as
// the AWS SDKs and the AWS CLI speak it (REST-JSON: AWS's paths, methods,
// status codes and error shapes), from the local IoT Core's in-process
// control plane (sim/awsiot), so an operator's `aws iot …` habits and an
// aws-sdk-go-v2 *iot.Client with an endpoint override work against the
// local IoT Core. Requests may carry SigV4 headers; they are accepted and
// not checked (the endpoint listens on loopback for the local operator).
//
// Each operation decodes its request, calls the matching awsiot.Client
// method (the one implementation of that operation) and encodes the result;
// see docs/local-iot-core.md for the operations served. ServeDataPlane adds
// the AWS IoT data plane (Publish, device shadows) on the same handler,
// and Endpoint puts it together with Lambda, DynamoDB and S3 handlers on
// one URL, dispatching by the request's SigV4 service.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/smithy-go"

	"github.com/iot-fleet/iot-fleet/sim/awsiot"
)

// maxBody bounds a request body.
const maxBody = 1 << 20

// Handler serves the AWS IoT control-plane API.
type Handler struct {
	iot  *awsiot.Client
	jobs *awsiot.Jobs
	mqtt func() string // the MQTT/TLS endpoint host:port
	log  *slog.Logger
	mux  *http.ServeMux
}

// New returns a Handler over iotc and jobsc; mqttEndpoint returns the
// local IoT Core's MQTT/TLS endpoint (host:port), which DescribeEndpoint
// answers with. log may be nil.
func New(iotc *awsiot.Client, jobsc *awsiot.Jobs, mqttEndpoint func() string, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{iot: iotc, jobs: jobsc, mqtt: mqttEndpoint, log: log, mux: http.NewServeMux()}
	h.routes()
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// op adapts one operation: decode builds the SDK input from the request
// (or fails with an InvalidRequestException), call runs it.
func op[In, Out any](h *Handler, name string, decode func(*http.Request, *In) error, call func(context.Context, *In, ...func(*iot.Options)) (*Out, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		in := new(In)
		if err := decode(r, in); err != nil {
			h.writeError(w, name, &types.InvalidRequestException{Message: aws.String(name + ": " + err.Error())})
			return
		}
		out, err := call(r.Context(), in)
		if err != nil {
			h.writeError(w, name, err)
			return
		}
		h.writeJSON(w, http.StatusOK, wire(reflect.ValueOf(out)))
	}
}

func (h *Handler) routes() {
	m := h.mux
	// Things.
	m.HandleFunc("GET /things", op(h, "ListThings", func(r *http.Request, in *iot.ListThingsInput) error {
		in.AttributeName, in.AttributeValue, in.NextToken = optQuery(r, "attributeName"), optQuery(r, "attributeValue"), optQuery(r, "nextToken")
		in.ThingTypeName = optQuery(r, "thingTypeName")
		var err error
		if in.MaxResults, err = intQuery(r, "maxResults"); err != nil {
			return err
		}
		in.UsePrefixAttributeValue, err = boolQuery(r, "usePrefixAttributeValue")
		return err
	}, h.iot.ListThings))
	m.HandleFunc("GET /things/{thingName}", op(h, "DescribeThing", func(r *http.Request, in *iot.DescribeThingInput) error {
		in.ThingName = aws.String(r.PathValue("thingName"))
		return nil
	}, h.iot.DescribeThing))
	m.HandleFunc("DELETE /things/{thingName}", op(h, "DeleteThing", func(r *http.Request, in *iot.DeleteThingInput) error {
		in.ThingName = aws.String(r.PathValue("thingName"))
		if v := r.URL.Query().Get("expectedVersion"); v != "" {
			return fmt.Errorf("expectedVersion is not supported by the local IoT Core")
		}
		return nil
	}, h.iot.DeleteThing))
	m.HandleFunc("GET /things/{thingName}/principals", op(h, "ListThingPrincipals", func(r *http.Request, in *iot.ListThingPrincipalsInput) error {
		in.ThingName, in.NextToken = aws.String(r.PathValue("thingName")), optQuery(r, "nextToken")
		var err error
		in.MaxResults, err = intQuery(r, "maxResults")
		return err
	}, h.iot.ListThingPrincipals))
	m.HandleFunc("PUT /things/{thingName}/principals", op(h, "AttachThingPrincipal", func(r *http.Request, in *iot.AttachThingPrincipalInput) error {
		in.ThingName, in.Principal = aws.String(r.PathValue("thingName")), aws.String(r.Header.Get("X-Amzn-Principal"))
		return requireHeader(r, "X-Amzn-Principal")
	}, h.iot.AttachThingPrincipal))
	m.HandleFunc("DELETE /things/{thingName}/principals", op(h, "DetachThingPrincipal", func(r *http.Request, in *iot.DetachThingPrincipalInput) error {
		in.ThingName, in.Principal = aws.String(r.PathValue("thingName")), aws.String(r.Header.Get("X-Amzn-Principal"))
		return requireHeader(r, "X-Amzn-Principal")
	}, h.iot.DetachThingPrincipal))

	// Thing groups.
	m.HandleFunc("GET /thing-groups", op(h, "ListThingGroups", func(r *http.Request, in *iot.ListThingGroupsInput) error {
		in.NamePrefixFilter, in.NextToken, in.ParentGroup = optQuery(r, "namePrefixFilter"), optQuery(r, "nextToken"), optQuery(r, "parentGroup")
		var err error
		in.MaxResults, err = intQuery(r, "maxResults")
		return err
	}, h.iot.ListThingGroups))
	m.HandleFunc("GET /thing-groups/{thingGroupName}", op(h, "DescribeThingGroup", func(r *http.Request, in *iot.DescribeThingGroupInput) error {
		in.ThingGroupName = aws.String(r.PathValue("thingGroupName"))
		return nil
	}, h.iot.DescribeThingGroup))
	m.HandleFunc("GET /thing-groups/{thingGroupName}/things", op(h, "ListThingsInThingGroup", func(r *http.Request, in *iot.ListThingsInThingGroupInput) error {
		in.ThingGroupName, in.NextToken = aws.String(r.PathValue("thingGroupName")), optQuery(r, "nextToken")
		var err error
		in.MaxResults, err = intQuery(r, "maxResults")
		return err
	}, h.iot.ListThingsInThingGroup))
	m.HandleFunc("PUT /thing-groups/addThingToThingGroup", op(h, "AddThingToThingGroup", func(r *http.Request, in *iot.AddThingToThingGroupInput) error {
		var body struct{ ThingName, ThingArn, ThingGroupName, ThingGroupArn *string }
		if err := readBody(r, &body); err != nil {
			return err
		}
		in.ThingName, in.ThingArn, in.ThingGroupName, in.ThingGroupArn = body.ThingName, body.ThingArn, body.ThingGroupName, body.ThingGroupArn
		return nil
	}, h.iot.AddThingToThingGroup))
	m.HandleFunc("PUT /thing-groups/removeThingFromThingGroup", op(h, "RemoveThingFromThingGroup", func(r *http.Request, in *iot.RemoveThingFromThingGroupInput) error {
		var body struct{ ThingName, ThingArn, ThingGroupName, ThingGroupArn *string }
		if err := readBody(r, &body); err != nil {
			return err
		}
		if body.ThingName == nil || body.ThingGroupName == nil {
			return errors.New("thingName and thingGroupName are required (the local IoT Core does not resolve ARNs here)")
		}
		in.ThingName, in.ThingGroupName = body.ThingName, body.ThingGroupName
		return nil
	}, h.iot.RemoveThingFromThingGroup))

	// Certificates and policies.
	m.HandleFunc("GET /certificates", op(h, "ListCertificates", func(r *http.Request, in *iot.ListCertificatesInput) error {
		in.Marker = optQuery(r, "marker")
		var err error
		if in.PageSize, err = intQuery(r, "pageSize"); err != nil {
			return err
		}
		in.AscendingOrder, err = boolQuery(r, "isAscendingOrder")
		return err
	}, h.iot.ListCertificates))
	m.HandleFunc("GET /certificates/{certificateId}", op(h, "DescribeCertificate", func(r *http.Request, in *iot.DescribeCertificateInput) error {
		in.CertificateId = aws.String(r.PathValue("certificateId"))
		return nil
	}, h.iot.DescribeCertificate))
	m.HandleFunc("PUT /certificates/{certificateId}", op(h, "UpdateCertificate", func(r *http.Request, in *iot.UpdateCertificateInput) error {
		in.CertificateId = aws.String(r.PathValue("certificateId"))
		in.NewStatus = types.CertificateStatus(r.URL.Query().Get("newStatus"))
		switch in.NewStatus {
		case types.CertificateStatusActive, types.CertificateStatusInactive, types.CertificateStatusRevoked:
			return nil
		}
		return fmt.Errorf("newStatus %q must be ACTIVE, INACTIVE or REVOKED", in.NewStatus)
	}, h.iot.UpdateCertificate))
	m.HandleFunc("PUT /target-policies/{policyName}", op(h, "AttachPolicy", func(r *http.Request, in *iot.AttachPolicyInput) error {
		var body struct{ Target *string }
		in.PolicyName = aws.String(r.PathValue("policyName"))
		if err := readBody(r, &body); err != nil {
			return err
		}
		in.Target = body.Target
		return requireField("target", body.Target)
	}, h.iot.AttachPolicy))
	m.HandleFunc("POST /target-policies/{policyName}", op(h, "DetachPolicy", func(r *http.Request, in *iot.DetachPolicyInput) error {
		var body struct{ Target *string }
		in.PolicyName = aws.String(r.PathValue("policyName"))
		if err := readBody(r, &body); err != nil {
			return err
		}
		in.Target = body.Target
		return requireField("target", body.Target)
	}, h.iot.DetachPolicy))
	m.HandleFunc("POST /attached-policies/{target}", op(h, "ListAttachedPolicies", func(r *http.Request, in *iot.ListAttachedPoliciesInput) error {
		in.Target, in.Marker = aws.String(r.PathValue("target")), optQuery(r, "marker")
		var err error
		in.PageSize, err = intQuery(r, "pageSize")
		return err
	}, h.iot.ListAttachedPolicies))

	// Jobs.
	m.HandleFunc("PUT /jobs/{jobId}", op(h, "CreateJob", func(r *http.Request, in *iot.CreateJobInput) error {
		if err := readBody(r, in); err != nil {
			return err
		}
		in.JobId = aws.String(r.PathValue("jobId"))
		return nil
	}, h.jobs.CreateJob))
	m.HandleFunc("GET /jobs/{jobId}", op(h, "DescribeJob", func(r *http.Request, in *iot.DescribeJobInput) error {
		in.JobId = aws.String(r.PathValue("jobId"))
		return nil
	}, h.jobs.DescribeJob))
	m.HandleFunc("GET /jobs", op(h, "ListJobs", func(r *http.Request, in *iot.ListJobsInput) error {
		q := r.URL.Query()
		in.NextToken, in.ThingGroupName = optQuery(r, "nextToken"), optQuery(r, "thingGroupName")
		in.NamespaceId, in.ThingGroupId = optQuery(r, "namespaceId"), optQuery(r, "thingGroupId")
		in.Status, in.TargetSelection = types.JobStatus(q.Get("status")), types.TargetSelection(q.Get("targetSelection"))
		var err error
		in.MaxResults, err = intQuery(r, "maxResults")
		return err
	}, h.jobs.ListJobs))
	m.HandleFunc("PUT /jobs/{jobId}/cancel", op(h, "CancelJob", func(r *http.Request, in *iot.CancelJobInput) error {
		if err := readBody(r, in); err != nil {
			return err
		}
		in.JobId = aws.String(r.PathValue("jobId"))
		var err error
		in.Force, err = boolQuery(r, "force")
		return err
	}, h.jobs.CancelJob))
	m.HandleFunc("GET /jobs/{jobId}/things", op(h, "ListJobExecutionsForJob", func(r *http.Request, in *iot.ListJobExecutionsForJobInput) error {
		in.JobId, in.NextToken = aws.String(r.PathValue("jobId")), optQuery(r, "nextToken")
		in.Status = types.JobExecutionStatus(r.URL.Query().Get("status"))
		var err error
		in.MaxResults, err = intQuery(r, "maxResults")
		return err
	}, h.jobs.ListJobExecutionsForJob))
	m.HandleFunc("GET /things/{thingName}/jobs", op(h, "ListJobExecutionsForThing", func(r *http.Request, in *iot.ListJobExecutionsForThingInput) error {
		in.ThingName, in.NextToken = aws.String(r.PathValue("thingName")), optQuery(r, "nextToken")
		in.JobId, in.NamespaceId = optQuery(r, "jobId"), optQuery(r, "namespaceId")
		in.Status = types.JobExecutionStatus(r.URL.Query().Get("status"))
		var err error
		in.MaxResults, err = intQuery(r, "maxResults")
		return err
	}, h.jobs.ListJobExecutionsForThing))
	m.HandleFunc("GET /things/{thingName}/jobs/{jobId}", op(h, "DescribeJobExecution", func(r *http.Request, in *iot.DescribeJobExecutionInput) error {
		in.ThingName, in.JobId = aws.String(r.PathValue("thingName")), aws.String(r.PathValue("jobId"))
		if v := r.URL.Query().Get("executionNumber"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("executionNumber %q is not an integer", v)
			}
			in.ExecutionNumber = aws.Int64(n)
		}
		return nil
	}, h.jobs.DescribeJobExecution))
	m.HandleFunc("GET /jobs/{jobId}/job-document", op(h, "GetJobDocument", func(r *http.Request, in *iot.GetJobDocumentInput) error {
		in.JobId = aws.String(r.PathValue("jobId"))
		return nil
	}, h.jobs.GetJobDocument))

	// Endpoint.
	m.HandleFunc("GET /endpoint", op(h, "DescribeEndpoint", func(r *http.Request, in *iot.DescribeEndpointInput) error {
		in.EndpointType = optQuery(r, "endpointType")
		return nil
	}, h.describeEndpoint))

	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.writeError(w, "", &smithy.GenericAPIError{Code: "UnknownOperationException",
			Message: fmt.Sprintf("the local IoT Core does not serve %s %s (see docs/local-iot-core.md for the operations it serves)", r.Method, r.URL.Path)})
	})
}

// describeEndpoint answers iot:Data-ATS (and the legacy iot:Data) with the
// host of the local MQTT/TLS endpoint.
func (h *Handler) describeEndpoint(_ context.Context, in *iot.DescribeEndpointInput, _ ...func(*iot.Options)) (*iot.DescribeEndpointOutput, error) {
	switch t := aws.ToString(in.EndpointType); t {
	case "", "iot:Data-ATS", "iot:Data":
		host, _, err := net.SplitHostPort(h.mqtt())
		if err != nil {
			return nil, &types.InternalFailureException{Message: aws.String(fmt.Sprintf("DescribeEndpoint: MQTT endpoint %q: %v", h.mqtt(), err))}
		}
		return &iot.DescribeEndpointOutput{EndpointAddress: aws.String(host)}, nil
	default:
		return nil, &types.InvalidRequestException{Message: aws.String(fmt.Sprintf("DescribeEndpoint: endpointType %q is not served by the local IoT Core (iot:Data-ATS is)", t))}
	}
}

func optQuery(r *http.Request, key string) *string {
	q := r.URL.Query()
	if !q.Has(key) {
		return nil
	}
	return aws.String(q.Get(key))
}

func intQuery(r *http.Request, key string) (*int32, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%s %q is not an integer", key, v)
	}
	return aws.Int32(int32(n)), nil
}

func boolQuery(r *http.Request, key string) (bool, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s %q is not a boolean", key, v)
	}
	return b, nil
}

func requireHeader(r *http.Request, name string) error {
	if r.Header.Get(name) == "" {
		return fmt.Errorf("header %s (the principal) is required", name)
	}
	return nil
}

func requireField(name string, v *string) error {
	if aws.ToString(v) == "" {
		return fmt.Errorf("%s is required", name)
	}
	return nil
}

// readBody decodes a JSON request body (AWS's member names match Go's
// field names case-insensitively).
func readBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if len(data) > maxBody {
		return fmt.Errorf("body larger than %d bytes", maxBody)
	}
	if len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("body is not valid JSON: %w", err)
	}
	return nil
}

// statusOf is the HTTP status AWS IoT answers an error code with.
var statusOf = map[string]int{
	"InvalidRequestException":              http.StatusBadRequest,
	"UnauthorizedException":                http.StatusUnauthorized,
	"ResourceNotFoundException":            http.StatusNotFound,
	"UnknownOperationException":            http.StatusNotFound,
	"CertificateStateException":            http.StatusNotAcceptable,
	"ResourceAlreadyExistsException":       http.StatusConflict,
	"VersionConflictException":             http.StatusConflict,
	"ConflictException":                    http.StatusConflict,
	"DeleteConflictException":              http.StatusConflict,
	"LimitExceededException":               http.StatusGone,
	"ThrottlingException":                  http.StatusTooManyRequests,
	"RequestEntityTooLargeException":       http.StatusRequestEntityTooLarge,
	"UnsupportedDocumentEncodingException": http.StatusUnsupportedMediaType,
	"InternalFailureException":             http.StatusInternalServerError,
	"ServiceUnavailableException":          http.StatusServiceUnavailable,
}

// writeError answers err in AWS's REST-JSON error shape: the code in the
// X-Amzn-ErrorType header and {"message": …} in the body.
func (h *Handler) writeError(w http.ResponseWriter, op string, err error) {
	code, msg := "InternalFailureException", err.Error()
	var api smithy.APIError
	if errors.As(err, &api) {
		code, msg = api.ErrorCode(), api.ErrorMessage()
	} else if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		code = "ServiceUnavailableException"
	}
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	h.log.Info("control plane call failed", "op", op, "code", code, "status", status, "message", msg)
	w.Header().Set("X-Amzn-ErrorType", code)
	h.writeJSON(w, status, map[string]string{"message": msg})
}

func (h *Handler) writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		h.log.Error("control plane: encode response", "err", err)
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(data)
}
