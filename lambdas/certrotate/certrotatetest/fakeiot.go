// Package certrotatetest is a faithful in-memory AWS IoT (control plane and
// data-plane Publish) for the rotation Lambdas' tests and for device tests
// that run the real rotation handler against a test broker. It records
// every call, injects failures per operation, and behaves like AWS IoT
// where the handlers depend on it (see certrotate.IoTAPI).
package certrotatetest

import (
	"context"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"
)

// ARNPrefix is the ARN prefix of the fake account and region.
const ARNPrefix = "arn:aws:iot:eu-central-1:123456789012:"

// CertARN is the ARN of certificate id.
func CertARN(id string) string { return ARNPrefix + "cert/" + id }

// CertID is AWS IoT's certificate id of a DER certificate: the hex SHA-256
// of its bytes.
func CertID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// Signer issues a certificate for a CSR; it returns the PEM certificate.
type Signer func(csr *x509.CertificateRequest) (certPEM []byte, err error)

// Cert is a certificate the fake knows.
type Cert struct {
	ID     string
	ARN    string
	PEM    string
	Status types.CertificateStatus
}

// Message is one data-plane publish.
type Message struct {
	Topic   string
	Payload []byte
	QoS     int32
}

// IoT is the fake. The zero value is not usable; use New.
type IoT struct {
	sign Signer

	mu       sync.Mutex
	certs    map[string]*Cert
	things   map[string]map[string]bool // thing → principal ARNs
	groups   map[string][]string        // group → things (in order added)
	policies map[string]map[string]bool // policy → target ARNs
	calls    []string
	inject   map[string][]error
	messages []Message
	onChange func(Cert, string) // cert after a change, thing it is attached to ("" if none)
	onPub    func(Message)
	pageSize int
}

// New returns an empty fake with the device policy policy. sign issues
// certificates for CreateCertificateFromCsr; nil uses a CA of its own
// (certificates valid for a year).
func New(policy string, sign Signer) *IoT {
	if sign == nil {
		sign = ownCA()
	}
	return &IoT{
		sign: sign, certs: map[string]*Cert{}, things: map[string]map[string]bool{},
		groups: map[string][]string{}, policies: map[string]map[string]bool{policy: {}},
		inject: map[string][]error{},
	}
}

func ownCA() Signer {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake IoT CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	var mu sync.Mutex
	serial := int64(1)
	return func(csr *x509.CertificateRequest) ([]byte, error) {
		mu.Lock()
		serial++
		n := serial
		mu.Unlock()
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: big.NewInt(n), Subject: csr.Subject,
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().AddDate(1, 0, 0).Truncate(time.Second),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, ca, csr.PublicKey, key)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
	}
}

// OnChange registers fn, called (without the lock) after a certificate is
// created, changes status, is attached to or detached from a thing, or is
// deleted (status "" then). Device tests mirror the fake into a broker.
func (f *IoT) OnChange(fn func(c Cert, thing string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onChange = fn
}

// OnPublish registers fn, called (without the lock) for every publish.
func (f *IoT) OnPublish(fn func(Message)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onPub = fn
}

// SetPageSize bounds ListThingsInThingGroup pages.
func (f *IoT) SetPageSize(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pageSize = n
}

// AddDevice registers thing (in group, if not empty) with an active
// certificate certPEM attached to it and to policy, as fleet provisioning
// leaves a device. It returns the certificate id.
func (f *IoT) AddDevice(thing, group, policy, certPEM string) string {
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil {
		panic("certrotatetest: AddDevice: no PEM certificate")
	}
	id := CertID(block.Bytes)
	f.mu.Lock()
	f.certs[id] = &Cert{ID: id, ARN: CertARN(id), PEM: certPEM, Status: types.CertificateStatusActive}
	f.addThingLocked(thing, group)
	f.things[thing][CertARN(id)] = true
	if f.policies[policy] == nil {
		f.policies[policy] = map[string]bool{}
	}
	f.policies[policy][CertARN(id)] = true
	c := *f.certs[id]
	fn := f.onChange
	f.mu.Unlock()
	if fn != nil {
		fn(c, thing)
	}
	return id
}

// AddThing registers thing (in group, if not empty) without a certificate.
func (f *IoT) AddThing(thing, group string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addThingLocked(thing, group)
}

func (f *IoT) addThingLocked(thing, group string) {
	if f.things[thing] == nil {
		f.things[thing] = map[string]bool{}
	}
	if group != "" {
		for _, t := range f.groups[group] {
			if t == thing {
				return
			}
		}
		f.groups[group] = append(f.groups[group], thing)
	}
}

// FailNext makes the next len(errs) calls of op ("CreateCertificateFromCsr",
// "Publish", ...) fail with errs, in order, before they take effect.
func (f *IoT) FailNext(op string, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inject[op] = append(f.inject[op], errs...)
}

// Calls returns every call made so far as "Op key".
func (f *IoT) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// CallCount counts the calls of op.
func (f *IoT) CallCount(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == op || len(c) > len(op) && c[:len(op)+1] == op+" " {
			n++
		}
	}
	return n
}

// Messages returns every publish so far.
func (f *IoT) Messages() []Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Message(nil), f.messages...)
}

// Cert returns certificate id, ok=false if it does not exist.
func (f *IoT) Cert(id string) (Cert, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.certs[id]
	if !ok {
		return Cert{}, false
	}
	return *c, true
}

// Certs returns every certificate, by id.
func (f *IoT) Certs() []Cert {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Cert
	for _, c := range f.certs {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Principals returns the certificate ids attached to thing, sorted.
func (f *IoT) Principals(thing string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for arn := range f.things[thing] {
		out = append(out, arn[len(ARNPrefix+"cert/"):])
	}
	sort.Strings(out)
	return out
}

// PolicyAttached reports whether policy is attached to certificate id.
func (f *IoT) PolicyAttached(policy, id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.policies[policy][CertARN(id)]
}

// begin records a call and returns the injected failure, if any. Called
// with the lock held.
func (f *IoT) begin(op, key string) error {
	f.calls = append(f.calls, op+" "+key)
	if q := f.inject[op]; len(q) > 0 {
		f.inject[op] = q[1:]
		return q[0]
	}
	return nil
}

func notFound(what string) error {
	return &types.ResourceNotFoundException{Message: aws.String(what + " not found")}
}

// Throttled is the error AWS IoT returns when a call is throttled.
func Throttled() error { return &types.ThrottlingException{Message: aws.String("Rate exceeded")} }

// Unavailable is AWS IoT's transient service error.
func Unavailable() error {
	return &types.ServiceUnavailableException{Message: aws.String("Service unavailable")}
}

func (f *IoT) thingOf(arn string) string {
	for t, ps := range f.things {
		if ps[arn] {
			return t
		}
	}
	return ""
}

func (f *IoT) changed(id string) func() {
	c := f.certs[id]
	var snap Cert
	if c != nil {
		snap = *c
	} else {
		snap = Cert{ID: id, ARN: CertARN(id)}
	}
	thing := f.thingOf(CertARN(id))
	fn := f.onChange
	return func() {
		if fn != nil {
			fn(snap, thing)
		}
	}
}

// call runs one call of op with key: it checks ctx, then under the lock
// records the call, returns its injected failure if any, and otherwise
// runs body. The notification body returns (if not nil) runs after the
// lock is released.
func (f *IoT) call(ctx context.Context, op, key string, body func() (notify func(), err error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	if err := f.begin(op, key); err != nil {
		f.mu.Unlock()
		return err
	}
	notify, err := body()
	f.mu.Unlock()
	if notify != nil {
		notify()
	}
	return err
}

// CreateCertificateFromCsr implements certrotate.IoTAPI.
func (f *IoT) CreateCertificateFromCsr(ctx context.Context, in *iot.CreateCertificateFromCsrInput, _ ...func(*iot.Options)) (*iot.CreateCertificateFromCsrOutput, error) {
	if err := f.call(ctx, "CreateCertificateFromCsr", "", func() (func(), error) { return nil, nil }); err != nil {
		return nil, err
	}
	block, _ := pem.Decode([]byte(aws.ToString(in.CertificateSigningRequest)))
	if block == nil {
		return nil, &types.InvalidRequestException{Message: aws.String("The certificate signing request is not valid")}
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, &types.InvalidRequestException{Message: aws.String("The certificate signing request is not valid: " + err.Error())}
	}
	certPEM, err := f.sign(csr)
	if err != nil {
		return nil, &types.InternalFailureException{Message: aws.String(err.Error())}
	}
	cb, _ := pem.Decode(certPEM)
	id := CertID(cb.Bytes)
	status := types.CertificateStatusInactive
	if in.SetAsActive {
		status = types.CertificateStatusActive
	}
	f.mu.Lock()
	f.certs[id] = &Cert{ID: id, ARN: CertARN(id), PEM: string(certPEM), Status: status}
	notify := f.changed(id)
	f.mu.Unlock()
	notify()
	return &iot.CreateCertificateFromCsrOutput{CertificateId: aws.String(id), CertificateArn: aws.String(CertARN(id)), CertificatePem: aws.String(string(certPEM))}, nil
}

// AttachPolicy implements certrotate.IoTAPI.
func (f *IoT) AttachPolicy(ctx context.Context, in *iot.AttachPolicyInput, _ ...func(*iot.Options)) (*iot.AttachPolicyOutput, error) {
	policy, target := aws.ToString(in.PolicyName), aws.ToString(in.Target)
	err := f.call(ctx, "AttachPolicy", policy+" "+target, func() (func(), error) {
		if f.policies[policy] == nil {
			return nil, notFound("policy " + policy)
		}
		if f.certByARN(target) == nil {
			return nil, notFound("target " + target)
		}
		f.policies[policy][target] = true
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &iot.AttachPolicyOutput{}, nil
}

func (f *IoT) certByARN(arn string) *Cert {
	for _, c := range f.certs {
		if c.ARN == arn {
			return c
		}
	}
	return nil
}

// AttachThingPrincipal implements certrotate.IoTAPI.
func (f *IoT) AttachThingPrincipal(ctx context.Context, in *iot.AttachThingPrincipalInput, _ ...func(*iot.Options)) (*iot.AttachThingPrincipalOutput, error) {
	thing, arn := aws.ToString(in.ThingName), aws.ToString(in.Principal)
	err := f.call(ctx, "AttachThingPrincipal", thing+" "+arn, func() (func(), error) {
		if f.things[thing] == nil {
			return nil, notFound("thing " + thing)
		}
		c := f.certByARN(arn)
		if c == nil {
			return nil, notFound("principal " + arn)
		}
		f.things[thing][arn] = true
		return f.changed(c.ID), nil
	})
	if err != nil {
		return nil, err
	}
	return &iot.AttachThingPrincipalOutput{}, nil
}

// UpdateCertificate implements certrotate.IoTAPI.
func (f *IoT) UpdateCertificate(ctx context.Context, in *iot.UpdateCertificateInput, _ ...func(*iot.Options)) (*iot.UpdateCertificateOutput, error) {
	id := aws.ToString(in.CertificateId)
	err := f.call(ctx, "UpdateCertificate", id+" "+string(in.NewStatus), func() (func(), error) {
		c := f.certs[id]
		if c == nil {
			return nil, notFound("certificate " + id)
		}
		if c.Status == types.CertificateStatusRevoked && in.NewStatus != types.CertificateStatusRevoked {
			return nil, &types.CertificateStateException{Message: aws.String("a revoked certificate cannot change status")}
		}
		c.Status = in.NewStatus
		return f.changed(id), nil
	})
	if err != nil {
		return nil, err
	}
	return &iot.UpdateCertificateOutput{}, nil
}

// DetachPolicy implements certrotate.IoTAPI.
func (f *IoT) DetachPolicy(ctx context.Context, in *iot.DetachPolicyInput, _ ...func(*iot.Options)) (*iot.DetachPolicyOutput, error) {
	policy, target := aws.ToString(in.PolicyName), aws.ToString(in.Target)
	err := f.call(ctx, "DetachPolicy", policy+" "+target, func() (func(), error) {
		if f.policies[policy] == nil {
			return nil, notFound("policy " + policy)
		}
		delete(f.policies[policy], target)
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &iot.DetachPolicyOutput{}, nil
}

// DetachThingPrincipal implements certrotate.IoTAPI.
func (f *IoT) DetachThingPrincipal(ctx context.Context, in *iot.DetachThingPrincipalInput, _ ...func(*iot.Options)) (*iot.DetachThingPrincipalOutput, error) {
	thing, arn := aws.ToString(in.ThingName), aws.ToString(in.Principal)
	err := f.call(ctx, "DetachThingPrincipal", thing+" "+arn, func() (func(), error) {
		if f.things[thing] == nil {
			return nil, notFound("thing " + thing)
		}
		delete(f.things[thing], arn)
		if c := f.certByARN(arn); c != nil {
			return f.changed(c.ID), nil
		}
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &iot.DetachThingPrincipalOutput{}, nil
}

// DeleteCertificate implements certrotate.IoTAPI.
func (f *IoT) DeleteCertificate(ctx context.Context, in *iot.DeleteCertificateInput, _ ...func(*iot.Options)) (*iot.DeleteCertificateOutput, error) {
	id := aws.ToString(in.CertificateId)
	err := f.call(ctx, "DeleteCertificate", id, func() (func(), error) {
		c := f.certs[id]
		if c == nil {
			return nil, notFound("certificate " + id)
		}
		if c.Status == types.CertificateStatusActive {
			return nil, &types.CertificateStateException{Message: aws.String("Certificate must be deactivated (not ACTIVE) before deletion.")}
		}
		for _, targets := range f.policies {
			if targets[c.ARN] && !in.ForceDelete {
				return nil, &types.DeleteConflictException{Message: aws.String("Things or policies are attached to the certificate")}
			}
		}
		if f.thingOf(c.ARN) != "" {
			return nil, &types.DeleteConflictException{Message: aws.String("Things are attached to the certificate")}
		}
		delete(f.certs, id)
		return f.changed(id), nil
	})
	if err != nil {
		return nil, err
	}
	return &iot.DeleteCertificateOutput{}, nil
}

// DescribeCertificate implements certrotate.IoTAPI.
func (f *IoT) DescribeCertificate(ctx context.Context, in *iot.DescribeCertificateInput, _ ...func(*iot.Options)) (*iot.DescribeCertificateOutput, error) {
	id := aws.ToString(in.CertificateId)
	var out *iot.DescribeCertificateOutput
	err := f.call(ctx, "DescribeCertificate", id, func() (func(), error) {
		c := f.certs[id]
		if c == nil {
			return nil, notFound("certificate " + id)
		}
		out = &iot.DescribeCertificateOutput{CertificateDescription: &types.CertificateDescription{
			CertificateId: aws.String(c.ID), CertificateArn: aws.String(c.ARN), CertificatePem: aws.String(c.PEM), Status: c.Status,
		}}
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ListThingsInThingGroup implements certscan's IoT interface.
func (f *IoT) ListThingsInThingGroup(ctx context.Context, in *iot.ListThingsInThingGroupInput, _ ...func(*iot.Options)) (*iot.ListThingsInThingGroupOutput, error) {
	group := aws.ToString(in.ThingGroupName)
	var out *iot.ListThingsInThingGroupOutput
	err := f.call(ctx, "ListThingsInThingGroup", group+" "+aws.ToString(in.NextToken), func() (func(), error) {
		things, ok := f.groups[group]
		if !ok {
			return nil, notFound("thing group " + group)
		}
		start := 0
		if tok := aws.ToString(in.NextToken); tok != "" {
			n, err := strconv.Atoi(tok)
			if err != nil || n < 0 || n > len(things) {
				return nil, &types.InvalidRequestException{Message: aws.String("invalid nextToken")}
			}
			start = n
		}
		size := len(things) - start
		if in.MaxResults != nil && int(*in.MaxResults) < size {
			size = int(*in.MaxResults)
		}
		if f.pageSize > 0 && f.pageSize < size {
			size = f.pageSize
		}
		out = &iot.ListThingsInThingGroupOutput{Things: append([]string(nil), things[start:start+size]...)}
		if start+size < len(things) {
			out.NextToken = aws.String(strconv.Itoa(start + size))
		}
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Publish implements certrotate.DataAPI.
func (f *IoT) Publish(ctx context.Context, in *iotdataplane.PublishInput, _ ...func(*iotdataplane.Options)) (*iotdataplane.PublishOutput, error) {
	topic := aws.ToString(in.Topic)
	err := f.call(ctx, "Publish", topic, func() (func(), error) {
		if topic == "" {
			return nil, errors.New("InvalidRequestException: empty topic")
		}
		m := Message{Topic: topic, Payload: append([]byte(nil), in.Payload...), QoS: in.Qos}
		f.messages = append(f.messages, m)
		fn := f.onPub
		if fn == nil {
			return nil, nil
		}
		return func() { fn(m) }, nil
	})
	if err != nil {
		return nil, err
	}
	return &iotdataplane.PublishOutput{}, nil
}

// String summarises the fake's state for test failure messages.
func (f *IoT) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("certs=%d things=%d calls=%d messages=%d", len(f.certs), len(f.things), len(f.calls), len(f.messages))
}
