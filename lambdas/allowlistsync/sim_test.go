package allowlistsync

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/iot-fleet/iot-fleet/sim/iottest"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
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
