// Package iottest serves the local IoT Core's AWS IoT control plane
// (sim/controlplane over sim/awsiot and a simulator registry) and its IoT
// data plane (Publish, device shadows) on a loopback HTTP listener for the
// Lambdas' tests, and hands out real aws-sdk-go-v2 *iot.Client and
// *iotdataplane.Client values pointed at it. A handler under test talks
// to it over AWS's own wire protocol (REST-JSON), exactly as it talks to
// AWS IoT; the test sets the world up through Registry and injects
// faults and reads the calls through IoT (awsiot.Client.FailNext,
// AfterEach, Calls, SetPageSize), which sit behind the HTTP endpoint.
// The messages published through the data plane are recorded (Messages)
// instead of reaching a broker; FailNextPublish makes chosen publishes
// fail with AWS's error shape.
//
// CreateCertificateFromCsr issues certificates signed by a CA of the
// server's own (CA). Only tests and test helper packages import it.
package iottest

import (
	"context"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"

	iotpolicy "github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/iot-fleet/iot-fleet/sim/ca"
	"github.com/iot-fleet/iot-fleet/sim/controlplane"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
	"github.com/iot-fleet/iot-fleet/sim/shadow"
)

// The account and region the server's ARNs name.
const (
	Partition = "aws"
	Region    = "eu-central-1"
	AccountID = "123456789012"
	// ARNPrefix is the prefix of the server's ARNs.
	ARNPrefix = "arn:" + Partition + ":iot:" + Region + ":" + AccountID + ":"
)

// CertARN is the ARN of certificate id.
func CertARN(id string) string { return ARNPrefix + "cert/" + id }

// Server is a running control-plane endpoint.
type Server struct {
	// Registry is the simulator registry behind the endpoint: things,
	// certificates, policies, groups.
	Registry *simregistry.Registry
	// IoT is the in-process control plane the endpoint serves: inject
	// faults and read the calls it served here.
	IoT *awsiot.Client
	// URL is the endpoint (http://127.0.0.1:PORT), an SDK's BaseEndpoint.
	URL string
	// CA signs the certificates CreateCertificateFromCsr issues.
	CA *ca.CA

	data *dataPlane
}

// Options configure Start.
type Options struct {
	// Policies are created (allowing iot:Connect) before the test runs.
	Policies []string
	// ThingGroups are created before the test runs.
	ThingGroups []string
}

// Start serves a control plane over an empty registry (plus opts'
// policies and groups) until the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	reg := simregistry.New(nil)
	for _, p := range opts.Policies {
		if err := reg.CreatePolicy(p, iotpolicy.Document{Version: "2012-10-17", Statement: []iotpolicy.Statement{
			{Effect: "Allow", Action: []string{"iot:Connect"}, Resource: []string{"*"}},
		}}); err != nil {
			t.Fatalf("iottest: policy %s: %v", p, err)
		}
	}
	for _, g := range opts.ThingGroups {
		if err := reg.CreateThingGroup(g); err != nil {
			t.Fatalf("iottest: thing group %s: %v", g, err)
		}
	}
	c := awsiot.New(reg, Partition, Region, AccountID)
	js := jobs.New(jobs.Options{Registry: reg})
	t.Cleanup(js.Close)
	authority, err := ca.New(ca.Options{})
	if err != nil {
		t.Fatalf("iottest: %v", err)
	}
	h := controlplane.New(c, awsiot.NewJobs(js, c), func() string { return "127.0.0.1:8883" }, nil)
	h.ServeCertificateIssuance(awsiot.NewIssuer(c, authority))
	data := &dataPlane{faults: map[string][]error{}}
	h.ServeDataPlane(controlplane.DataPlane{
		Publish:      data.publish,
		PublishFault: data.fault,
		Shadows:      shadow.New(shadow.Options{}),
		Now:          func() int64 { return time.Now().Unix() },
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &Server{Registry: reg, IoT: c, URL: srv.URL, CA: authority, data: data}
}

// Client returns a real aws-sdk-go-v2 IoT client for the endpoint, as a
// Lambda builds it, except that it does not retry: a fault the test
// injects reaches the handler as the SDK surfaces AWS's answer once its
// retries are used up.
func (s *Server) Client() *iot.Client { return Client(s.URL) }

// Client returns an IoT client for endpoint (SigV4 with dummy
// credentials, no retries).
func Client(endpoint string) *iot.Client {
	return iot.NewFromConfig(clientConfig(), func(o *iot.Options) { o.BaseEndpoint = aws.String(endpoint) })
}

// clientConfig is a Lambda's AWS configuration as the test clients use it:
// SigV4 with dummy credentials, no retries.
func clientConfig() aws.Config {
	return aws.Config{
		Region:      Region,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "test-secret", ""),
		Retryer:     func() aws.Retryer { return aws.NopRetryer{} },
	}
}

// DataClient returns a real aws-sdk-go-v2 IoT data-plane client for the
// endpoint, as a Lambda builds it, except that it does not retry (as
// Client).
func (s *Server) DataClient() *iotdataplane.Client { return DataClient(s.URL) }

// DataClient returns an IoT data-plane client for endpoint (SigV4 with
// dummy credentials, no retries).
func DataClient(endpoint string) *iotdataplane.Client {
	return iotdataplane.NewFromConfig(clientConfig(), func(o *iotdataplane.Options) { o.BaseEndpoint = aws.String(endpoint) })
}

// Message is one message the data plane's Publish accepted.
type Message struct {
	Topic   string
	Payload []byte
	QoS     int32
}

// Messages returns the messages published through the data plane so
// far, in order. Publishes on shadow topics are shadow requests (the
// shadow service answers them) and are not among them.
func (s *Server) Messages() []Message { return s.data.messages() }

// FailNextPublish makes the next len(errs) data-plane publishes on topic
// ("" for any topic) fail with errs, answered in AWS's error shape: an
// AWS error (Throttled, a data-plane or IoT exception) keeps its code,
// which the data-plane client surfaces as its own exception type; any
// other error is an InternalFailureException. Nothing is published.
func (s *Server) FailNextPublish(topic string, errs ...error) {
	s.data.mu.Lock()
	defer s.data.mu.Unlock()
	s.data.faults[topic] = append(s.data.faults[topic], errs...)
}

// dataPlane records the data plane's publishes and fails chosen ones.
type dataPlane struct {
	mu     sync.Mutex
	msgs   []Message
	faults map[string][]error // by topic; "" matches any
}

func (d *dataPlane) publish(topic string, payload []byte, qos byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.msgs = append(d.msgs, Message{Topic: topic, Payload: slices.Clone(payload), QoS: int32(qos)})
}

func (d *dataPlane) fault(topic string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range []string{topic, ""} {
		if errs := d.faults[k]; len(errs) > 0 {
			d.faults[k] = errs[1:]
			return errs[0]
		}
	}
	return nil
}

func (d *dataPlane) messages() []Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.msgs)
}

// Provision does what fleet provisioning does for a device: an ACTIVE
// certificate with policy attached, a thing (in group when not empty) with
// the certificate as its principal.
func (s *Server) Provision(t testing.TB, thing, group, policy, certID string) {
	t.Helper()
	s.ProvisionPEM(t, thing, group, policy, certID, "", time.Now().Add(time.Hour))
}

// ProvisionPEM is Provision with the certificate's PEM and expiry.
func (s *Server) ProvisionPEM(t testing.TB, thing, group, policy, certID, certPEM string, notAfter time.Time) {
	t.Helper()
	if err := s.Registry.RegisterCertificate(certID, certPEM, simregistry.CertActive, notAfter); err != nil {
		t.Fatalf("iottest: certificate %s: %v", certID, err)
	}
	if err := s.Registry.AttachPolicy(policy, certID); err != nil {
		t.Fatalf("iottest: attach %s: %v", policy, err)
	}
	if _, err := s.Registry.Thing(thing); err != nil {
		if _, err := s.Registry.CreateThing(thing, nil); err != nil {
			t.Fatalf("iottest: thing %s: %v", thing, err)
		}
	}
	if err := s.Registry.AttachThingPrincipal(thing, certID); err != nil {
		t.Fatalf("iottest: attach %s to %s: %v", certID, thing, err)
	}
	if group != "" {
		if err := s.Registry.AddThingToGroup(thing, group); err != nil {
			t.Fatalf("iottest: add %s to %s: %v", thing, group, err)
		}
	}
}

// CertStatus returns a certificate's status (false: no such certificate).
func (s *Server) CertStatus(id string) (types.CertificateStatus, bool) {
	c, err := s.Registry.Certificate(id)
	if err != nil {
		return "", false
	}
	return types.CertificateStatus(c.Status), true
}

// ThingExists reports whether thing exists.
func (s *Server) ThingExists(name string) bool {
	_, err := s.Registry.Thing(name)
	return err == nil
}

// PolicyAttached reports whether policy is attached to certificate id.
func (s *Server) PolicyAttached(policy, id string) bool {
	c, err := s.Registry.Certificate(id)
	return err == nil && slices.Contains(c.Policies, policy)
}

// Principals returns the certificate ids attached to thing (nil: no such
// thing).
func (s *Server) Principals(thing string) []string {
	th, err := s.Registry.Thing(thing)
	if err != nil {
		return nil
	}
	return slices.Clone(th.Principals)
}

// ThingsInGroup returns group's things.
func (s *Server) ThingsInGroup(group string) []string {
	things, _ := s.Registry.ThingsInGroup(group)
	return things
}

// Throttled is AWS IoT's ThrottlingException.
func Throttled() error { return &types.ThrottlingException{Message: aws.String("Rate exceeded")} }

// NotFound is AWS IoT's ResourceNotFoundException.
func NotFound(what string) error {
	return &types.ResourceNotFoundException{Message: aws.String(what + " not found")}
}

// Context is a test context that ends with the test or after d.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
