// Package provisioning implements AWS IoT fleet provisioning's MQTT API
// for the simulated IoT Core: CreateCertificateFromCsr,
// CreateKeysAndCertificate and RegisterThing with a provisioning template
// body and an optional pre-provisioning hook. Rejections use AWS's error
// shape (statusCode, errorCode, errorMessage).
package provisioning

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/ca"
	"github.com/iot-fleet/iot-fleet/sim/faults"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// Error codes this service answers with besides those in protocol.
const (
	ErrCodeInvalidCSR = "InvalidCSR"

	ErrCodeInvalidParameters = "InvalidParameters"
)

// Hook is the pre-provisioning hook (the Lambda AWS would invoke).
type Hook func(context.Context, protocol.PreProvisioningHookRequest) (protocol.PreProvisioningHookResponse, error)

// Reply sends an answer to the requesting connection.
type Reply func(topic string, payload []byte)

// Options configure the service.
type Options struct {
	CA           *ca.CA
	Registry     *registry.Registry
	TemplateName string
	TemplateARN  string
	TemplateBody string
	// Hook may be nil (no pre-provisioning hook).
	Hook        Hook
	HookTimeout time.Duration // default 5s, like AWS
	Faults      *faults.Set
	Now         func() time.Time
	// TokenTTL is how long a certificateOwnershipToken is valid (AWS:
	// one hour).
	TokenTTL time.Duration
	Logger   *slog.Logger
}

// Service answers the fleet provisioning MQTT API.
type Service struct {
	opts Options
	tmpl *Template
	log  *slog.Logger

	hookMu sync.RWMutex
	hook   Hook

	mu     sync.Mutex
	tokens map[string]*token
}

type token struct {
	certID  string
	certPEM string
	expires time.Time
	inUse   bool
}

// New parses the template body and prepares the service.
func New(opts Options) (*Service, error) {
	if opts.CA == nil || opts.Registry == nil || opts.TemplateName == "" {
		return nil, fmt.Errorf("provisioning: CA, Registry and TemplateName are required")
	}
	tmpl, err := ParseTemplate(opts.TemplateBody)
	if err != nil {
		return nil, fmt.Errorf("provisioning: template %s: %w", opts.TemplateName, err)
	}
	if opts.HookTimeout <= 0 {
		opts.HookTimeout = 5 * time.Second
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Faults == nil {
		opts.Faults = faults.New()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{
		opts:   opts,
		tmpl:   tmpl,
		hook:   opts.Hook,
		log:    opts.Logger.With("component", "provisioning"),
		tokens: map[string]*token{},
	}, nil
}

// SetHook replaces the pre-provisioning hook (nil removes it).
func (s *Service) SetHook(h Hook) {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	s.hook = h
}

// Hook returns the pre-provisioning hook in force (nil: none).
func (s *Service) Hook() Hook {
	s.hookMu.RLock()
	defer s.hookMu.RUnlock()
	return s.hook
}

// Match reports whether topic is a request topic of this service.
func (s *Service) Match(topic string) bool {
	return topic == protocol.CreateCertFromCSRTopic ||
		topic == protocol.CreateKeysAndCertTopic ||
		topic == protocol.RegisterThingTopic(s.opts.TemplateName)
}

// Handle answers one request made by clientID, authenticated with the
// (claim) certificate claimCertID.
func (s *Service) Handle(ctx context.Context, clientID, claimCertID, topic string, payload []byte, reply Reply) {
	var (
		resp any
		rej  *protocol.ErrorResponse
	)
	switch topic {
	case protocol.CreateCertFromCSRTopic:
		resp, rej = s.createFromCSR(payload)
	case protocol.CreateKeysAndCertTopic:
		resp, rej = s.createKeys()
	case protocol.RegisterThingTopic(s.opts.TemplateName):
		resp, rej = s.registerThing(ctx, clientID, claimCertID, payload)
	default:
		return
	}
	if rej != nil {
		s.log.Info("provisioning request rejected", "client", clientID, "topic", topic, "statusCode", rej.StatusCode, "errorCode", rej.ErrorCode, "errorMessage", rej.ErrorMessage)
		reply(protocol.Rejected(topic), mustJSON(rej))
		return
	}
	reply(protocol.Accepted(topic), mustJSON(resp))
}

func reject(status int, code, format string, args ...any) *protocol.ErrorResponse {
	return &protocol.ErrorResponse{StatusCode: status, ErrorCode: code, ErrorMessage: fmt.Sprintf(format, args...)}
}

func (s *Service) throttled() *protocol.ErrorResponse {
	if s.opts.Faults.TakeThrottle() {
		return reject(http.StatusTooManyRequests, protocol.ErrCodeThrottling, "Rate exceeded")
	}
	return nil
}

func (s *Service) createFromCSR(payload []byte) (any, *protocol.ErrorResponse) {
	if rej := s.throttled(); rej != nil {
		return nil, rej
	}
	var req protocol.CreateCertFromCSRRequest
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, reject(http.StatusBadRequest, protocol.ErrCodeInvalidPayload, "payload is not valid JSON: %v", err)
	}
	if strings.TrimSpace(req.CertificateSigningRequest) == "" {
		return nil, reject(http.StatusBadRequest, protocol.ErrCodeInvalidPayload, "certificateSigningRequest is required")
	}
	if s.opts.Faults.TakeRefuseCSR() {
		return nil, reject(http.StatusBadRequest, ErrCodeInvalidCSR, "certificate signing request refused (injected fault)")
	}
	iss, err := s.opts.CA.SignCSR([]byte(req.CertificateSigningRequest))
	if err != nil {
		return nil, reject(http.StatusBadRequest, ErrCodeInvalidCSR, "%v", err)
	}
	tok, rej := s.registerPending(iss)
	if rej != nil {
		return nil, rej
	}
	return protocol.CreateCertResponse{CertificateID: iss.ID, CertificatePEM: iss.PEM, CertificateOwnershipToken: tok}, nil
}

func (s *Service) createKeys() (any, *protocol.ErrorResponse) {
	if rej := s.throttled(); rej != nil {
		return nil, rej
	}
	iss, keyPEM, err := s.opts.CA.NewKeyAndCertificate()
	if err != nil {
		return nil, reject(http.StatusInternalServerError, protocol.ErrCodeInternalError, "create keys and certificate failed")
	}
	tok, rej := s.registerPending(iss)
	if rej != nil {
		return nil, rej
	}
	return protocol.CreateCertResponse{CertificateID: iss.ID, CertificatePEM: iss.PEM, PrivateKey: string(keyPEM), CertificateOwnershipToken: tok}, nil
}

func (s *Service) registerPending(iss *ca.Issued) (string, *protocol.ErrorResponse) {
	if err := s.opts.Registry.RegisterCertificate(iss.ID, iss.PEM, registry.CertPendingActivation, iss.Cert.NotAfter); err != nil {
		return "", reject(http.StatusInternalServerError, protocol.ErrCodeInternalError, "register certificate failed")
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", reject(http.StatusInternalServerError, protocol.ErrCodeInternalError, "token generation failed")
	}
	tok := base64.RawURLEncoding.EncodeToString(b)
	s.mu.Lock()
	s.tokens[tok] = &token{certID: iss.ID, certPEM: iss.PEM, expires: s.opts.Now().Add(s.opts.TokenTTL)}
	s.mu.Unlock()
	return tok, nil
}

// claimToken reserves a valid token for one RegisterThing.
func (s *Service) claimToken(tok string) (*token, *protocol.ErrorResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[tok]
	if !ok {
		return nil, reject(http.StatusBadRequest, protocol.ErrCodeInvalidToken, "certificateOwnershipToken is invalid or was already used")
	}
	if !s.opts.Now().Before(t.expires) {
		return nil, reject(http.StatusBadRequest, protocol.ErrCodeInvalidToken, "certificateOwnershipToken expired")
	}
	if t.inUse {
		return nil, reject(http.StatusConflict, protocol.ErrCodeInvalidToken, "certificateOwnershipToken is being used by another request")
	}
	t.inUse = true
	return t, nil
}

func (s *Service) releaseToken(tok string, consumed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if consumed {
		delete(s.tokens, tok)
		return
	}
	if t, ok := s.tokens[tok]; ok {
		t.inUse = false
	}
}

type thingPlan struct {
	name        string
	attrs       map[string]string
	groups      []string
	attrMode    string
	groupsMode  string
	certStatus  registry.CertStatus
	policyNames []string
}

func (s *Service) registerThing(ctx context.Context, clientID, claimCertID string, payload []byte) (any, *protocol.ErrorResponse) {
	if rej := s.throttled(); rej != nil {
		return nil, rej
	}
	var req protocol.RegisterThingRequest
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, reject(http.StatusBadRequest, protocol.ErrCodeInvalidPayload, "payload is not valid JSON: %v", err)
	}
	if req.CertificateOwnershipToken == "" {
		return nil, reject(http.StatusBadRequest, protocol.ErrCodeInvalidPayload, "certificateOwnershipToken is required")
	}
	tok, rej := s.claimToken(req.CertificateOwnershipToken)
	if rej != nil {
		return nil, rej
	}
	consumed := false
	defer func() { s.releaseToken(req.CertificateOwnershipToken, consumed) }()

	given := map[string]string{}
	for k, v := range req.Parameters {
		given[k] = v
	}
	given[protocol.ParamCertificateID] = tok.certID
	params, err := s.tmpl.ResolveParameters(given)
	if err != nil {
		return nil, reject(http.StatusBadRequest, ErrCodeInvalidParameters, "%v", err)
	}

	s.hookMu.RLock()
	hook := s.hook
	s.hookMu.RUnlock()
	if hook != nil {
		hctx, cancel := context.WithTimeout(ctx, s.opts.HookTimeout)
		hresp, err := hook(hctx, protocol.PreProvisioningHookRequest{
			ClaimCertificateID: claimCertID,
			CertificateID:      tok.certID,
			CertificatePEM:     tok.certPEM,
			TemplateARN:        s.opts.TemplateARN,
			ClientID:           clientID,
			Parameters:         cloneMap(params),
		})
		cancel()
		if err != nil {
			s.log.Warn("pre-provisioning hook failed", "client", clientID, "error", err)
			return nil, reject(http.StatusInternalServerError, protocol.ErrCodeInternalError, "pre-provisioning hook failed")
		}
		if !hresp.AllowProvisioning {
			return nil, reject(http.StatusForbidden, protocol.ErrCodeAccessDenied, "Pre-provisioning hook denied the request")
		}
		for k, v := range hresp.ParameterOverrides {
			params[k] = v
		}
		params[protocol.ParamCertificateID] = tok.certID
	}

	plan, rej := s.plan(params, tok.certID)
	if rej != nil {
		return nil, rej
	}
	if rej := s.apply(plan, tok.certID); rej != nil {
		return nil, rej
	}
	consumed = true

	devCfg := map[string]string{}
	if s.tmpl.DeviceConfiguration != nil {
		m, err := evalStringMap(map[string]any(s.tmpl.DeviceConfiguration), params, "DeviceConfiguration")
		if err != nil {
			return nil, reject(http.StatusBadRequest, protocol.ErrCodeInvalidRequest, "%v", err)
		}
		devCfg = m
	}
	s.log.Info("thing provisioned", "client", clientID, "thing", plan.name, "certificate", tok.certID)
	return protocol.RegisterThingResponse{ThingName: plan.name, DeviceConfiguration: devCfg}, nil
}

// plan evaluates the template resources without changing anything.
func (s *Service) plan(params map[string]string, certID string) (*thingPlan, *protocol.ErrorResponse) {
	p := &thingPlan{certStatus: registry.CertActive, attrMode: "MERGE", groupsMode: "DO_NOTHING"}
	bad := func(err error) *protocol.ErrorResponse {
		return reject(http.StatusBadRequest, protocol.ErrCodeInvalidRequest, "%v", err)
	}
	for name, r := range s.tmpl.Resources {
		field := "Resources." + name + ".Properties"
		switch r.Type {
		case TypeThing:
			n, err := evalString(r.Properties["ThingName"], params, field+".ThingName")
			if err != nil {
				return nil, bad(err)
			}
			if !registry.ValidThingName(n) {
				return nil, bad(fmt.Errorf("%s.ThingName %q is not a valid thing name", field, n))
			}
			p.name = n
			if p.attrs, err = evalStringMap(r.Properties["AttributePayload"], params, field+".AttributePayload"); err != nil {
				return nil, bad(err)
			}
			if p.groups, err = evalStringList(r.Properties["ThingGroups"], params, field+".ThingGroups"); err != nil {
				return nil, bad(err)
			}
			if m := r.OverrideSettings["AttributePayload"]; m != "" {
				p.attrMode = m
			}
			if m := r.OverrideSettings["ThingGroups"]; m != "" {
				p.groupsMode = m
			}
		case TypeCertificate:
			id, err := evalString(r.Properties["CertificateId"], params, field+".CertificateId")
			if err != nil {
				return nil, bad(err)
			}
			if id != certID {
				return nil, bad(fmt.Errorf("%s.CertificateId does not name the certificate of the ownership token", field))
			}
			if st, ok := r.Properties["Status"]; ok {
				v, err := evalString(st, params, field+".Status")
				if err != nil {
					return nil, bad(err)
				}
				switch registry.CertStatus(v) {
				case registry.CertActive, registry.CertInactive:
					p.certStatus = registry.CertStatus(v)
				default:
					return nil, bad(fmt.Errorf("%s.Status %q, want ACTIVE or INACTIVE", field, v))
				}
			}
		case TypePolicy:
			if pn, ok := r.Properties["PolicyName"]; ok {
				n, err := evalString(pn, params, field+".PolicyName")
				if err != nil {
					return nil, bad(err)
				}
				if _, err := s.opts.Registry.Policy(n); err != nil {
					return nil, reject(http.StatusNotFound, protocol.ErrCodeResourceNotFound, "%s.PolicyName: policy %s does not exist", field, n)
				}
				p.policyNames = append(p.policyNames, n)
				continue
			}
			pd, ok := r.Properties["PolicyDocument"]
			if !ok {
				return nil, bad(fmt.Errorf("%s: PolicyName or PolicyDocument is required", field))
			}
			docStr, err := evalString(pd, params, field+".PolicyDocument")
			if err != nil {
				return nil, bad(err)
			}
			doc, err := policy.Parse(docStr)
			if err != nil {
				return nil, bad(fmt.Errorf("%s.PolicyDocument: %w", field, err))
			}
			sum := sha256.Sum256([]byte(docStr))
			n := s.opts.TemplateName + "_" + hex.EncodeToString(sum[:8])
			if err := s.opts.Registry.CreatePolicy(n, doc); err != nil && !errors.Is(err, registry.ErrAlreadyExists) {
				return nil, bad(fmt.Errorf("%s.PolicyDocument: %w", field, err))
			}
			p.policyNames = append(p.policyNames, n)
		}
	}
	for _, g := range p.groups {
		if !s.opts.Registry.GroupExists(g) {
			return nil, reject(http.StatusNotFound, protocol.ErrCodeResourceNotFound, "thing group %s does not exist", g)
		}
	}
	return p, nil
}

func (s *Service) apply(p *thingPlan, certID string) *protocol.ErrorResponse {
	reg := s.opts.Registry
	internal := func(err error) *protocol.ErrorResponse {
		s.log.Error("register thing failed", "thing", p.name, "error", err)
		return reject(http.StatusInternalServerError, protocol.ErrCodeInternalError, "register thing failed")
	}
	created, err := reg.CreateThing(p.name, p.attrs)
	if err != nil {
		return internal(err)
	}
	if !created {
		switch p.attrMode {
		case "MERGE":
			err = reg.SetThingAttributes(p.name, p.attrs, true)
		case "REPLACE":
			err = reg.SetThingAttributes(p.name, p.attrs, false)
		case "FAIL":
			return reject(http.StatusConflict, protocol.ErrCodeInvalidRequest, "thing %s already exists and AttributePayload override is FAIL", p.name)
		}
		if err != nil {
			return internal(err)
		}
	}
	addGroups := created || p.groupsMode == "REPLACE"
	if !created && p.groupsMode == "FAIL" {
		return reject(http.StatusConflict, protocol.ErrCodeInvalidRequest, "thing %s already exists and ThingGroups override is FAIL", p.name)
	}
	if !created && p.groupsMode == "REPLACE" {
		th, err := reg.Thing(p.name)
		if err != nil {
			return internal(err)
		}
		for _, g := range th.Groups {
			if err := reg.RemoveThingFromGroup(p.name, g); err != nil {
				return internal(err)
			}
		}
	}
	for _, pn := range p.policyNames {
		if err := reg.AttachPolicy(pn, certID); err != nil {
			return internal(err)
		}
	}
	if err := reg.AttachThingPrincipal(p.name, certID); err != nil {
		return internal(err)
	}
	if err := reg.SetCertificateStatus(certID, p.certStatus); err != nil {
		return internal(err)
	}
	if addGroups {
		for _, g := range p.groups {
			if err := reg.AddThingToGroup(p.name, g); err != nil {
				return internal(err)
			}
		}
	}
	return nil
}

// CleanupExpired drops expired ownership tokens and deletes their
// certificates if they were never activated nor attached, as AWS does
// one hour after CreateCertificateFromCsr. It returns the deleted
// certificate ids.
func (s *Service) CleanupExpired() []string {
	now := s.opts.Now()
	var expired []string
	s.mu.Lock()
	for k, t := range s.tokens {
		if !now.Before(t.expires) && !t.inUse {
			expired = append(expired, t.certID)
			delete(s.tokens, k)
		}
	}
	s.mu.Unlock()
	var deleted []string
	for _, id := range expired {
		c, err := s.opts.Registry.Certificate(id)
		if err != nil || c.Status != registry.CertPendingActivation || len(c.Policies) > 0 || len(c.Things) > 0 {
			continue
		}
		if err := s.opts.Registry.DeleteCertificate(id, false); err == nil {
			deleted = append(deleted, id)
		}
	}
	return deleted
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("provisioning: marshal %T: %v", v, err))
	}
	return b
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
