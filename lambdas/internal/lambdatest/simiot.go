package lambdatest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"

	"github.com/iot-fleet/iot-fleet/sim/iottest"
)

// SimIoT is AWS IoT for the Lambdas' tests: the local IoT Core's control
// and data planes served over HTTP (sim/iottest), which a handler reaches
// with real aws-sdk-go-v2 clients: *iot.Client (embedded: a test calls it
// as the handler does; certificates it issues are signed by the server's
// CA) and Data, an *iotdataplane.Client whose publishes the server
// records (Messages: the messages to the devices are what the tests
// check). The test sets devices up, injects faults and reads the calls
// behind the endpoint (Srv.IoT, Srv.FailNextPublish).
type SimIoT struct {
	*iot.Client
	Srv  *iottest.Server
	Data *iotdataplane.Client
}

// NewSimIoT starts the control and data planes with policy and group.
func NewSimIoT(t testing.TB, policy, group string) *SimIoT {
	t.Helper()
	srv := iottest.Start(t, iottest.Options{Policies: []string{policy}, ThingGroups: []string{group}})
	return &SimIoT{Client: srv.Client(), Srv: srv, Data: srv.DataClient()}
}

// Cert is a certificate as the tests inspect it.
type Cert struct {
	ID, PEM string
	Status  iottypes.CertificateStatus
}

// AddDevice registers thing in group with an ACTIVE certificate certPEM
// attached to it and to policy, as fleet provisioning leaves a device; it
// returns the certificate id (AWS IoT's: the hex SHA-256 of the DER).
func (s *SimIoT) AddDevice(t testing.TB, thing, group, policy, certPEM string) string {
	t.Helper()
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil {
		t.Fatal("AddDevice: no PEM certificate")
	}
	sum := sha256.Sum256(block.Bytes)
	id := hex.EncodeToString(sum[:])
	s.Srv.ProvisionPEM(t, thing, group, policy, id, certPEM, time.Now().Add(24*time.Hour))
	return id
}

// FailNext makes the next calls of op on key fail with errs (the control
// plane's fault injection; "Publish" is the data plane's, key its topic,
// "" any topic).
func (s *SimIoT) FailNext(op, key string, errs ...error) {
	if op == "Publish" {
		s.Srv.FailNextPublish(key, errs...)
		return
	}
	s.Srv.IoT.FailNext(op, key, errs...)
}

// Calls returns the control-plane calls served, as "Op key".
func (s *SimIoT) Calls() []string { return s.Srv.IoT.Calls() }

// CallCount counts the calls of op (or of "Op key").
func (s *SimIoT) CallCount(op string) int {
	n := 0
	for _, c := range s.Calls() {
		if c == op || strings.HasPrefix(c, op+" ") {
			n++
		}
	}
	return n
}

// Cert returns certificate id (false: it does not exist).
func (s *SimIoT) Cert(id string) (Cert, bool) {
	c, err := s.Srv.Registry.Certificate(id)
	if err != nil {
		return Cert{}, false
	}
	return Cert{ID: c.ID, PEM: c.PEM, Status: iottypes.CertificateStatus(c.Status)}, true
}

// Certs returns every certificate.
func (s *SimIoT) Certs() []Cert {
	var out []Cert
	for _, c := range s.Srv.Registry.Certificates() {
		out = append(out, Cert{ID: c.ID, PEM: c.PEM, Status: iottypes.CertificateStatus(c.Status)})
	}
	return out
}

// Principals returns the certificate ids attached to thing, sorted.
func (s *SimIoT) Principals(thing string) []string {
	p := s.Srv.Principals(thing)
	slices.Sort(p)
	return p
}

// PolicyAttached reports whether policy is attached to certificate id.
func (s *SimIoT) PolicyAttached(policy, id string) bool { return s.Srv.PolicyAttached(policy, id) }

// AddThing registers thing in group (if not empty) without a certificate.
func (s *SimIoT) AddThing(t testing.TB, thing, group string) {
	t.Helper()
	if _, err := s.Srv.Registry.CreateThing(thing, nil); err != nil {
		t.Fatalf("thing %s: %v", thing, err)
	}
	if group != "" {
		if err := s.Srv.Registry.AddThingToGroup(thing, group); err != nil {
			t.Fatalf("add %s to %s: %v", thing, group, err)
		}
	}
}

// SetPageSize bounds the control plane's list pages.
func (s *SimIoT) SetPageSize(n int) { s.Srv.IoT.SetPageSize(n) }

// Messages returns the messages published through the data plane so far.
func (s *SimIoT) Messages() []iottest.Message { return s.Srv.Messages() }
