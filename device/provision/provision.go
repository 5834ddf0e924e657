// Package provision turns a device that only holds the shared claim
// certificate into a registered thing with its own key and certificate,
// using AWS IoT fleet provisioning by claim over MQTT
// (CreateCertificateFromCsr, then RegisterThing).
//
// It is an explicit state machine persisted in provision.json before each
// step is acted on:
//
//	(none) ──key generated on the device, written 0600──▶ key
//	key ──CreateCertificateFromCsr accepted, certificate written──▶ certificate
//	certificate ──RegisterThing accepted──▶ registered ──identity.json──▶ done
//
// Killed at any point it resumes from the persisted step: with a key but no
// certificate it sends a new CSR for the same key; with a certificate and an
// ownership token it calls RegisterThing again, falling back to a new CSR
// when the token is too old or refused. It never logs key material or the
// ownership token.
//
// Recover runs the same state machine for a device whose certificate the
// broker refuses (revoked, inactive, thing deleted): the new key and
// certificate go to new files beside the old ones, and identity.json is
// switched only once a connection with the new certificate succeeded; the
// old files are removed after that:
//
//	... registered ──connected with the new certificate──▶ switched ──old files removed──▶ done
//
// Every attempt first tries the current certificate again (an operator may
// have re-activated it) and only goes on with the claim certificate when
// the broker refuses the current one and accepts the claim certificate, so
// a network outage or an unavailable broker never replaces an identity.
//
// Failed attempts are spaced by a backoff persisted in provision-retry.json
// (consecutive failures and denials, the time of the next attempt): a
// restarted agent (power cut, crash-looping unit) waits for the remaining
// time instead of retrying at once. Denials (the pre-provisioning hook
// refused the serial or the key) back off exponentially with jitter up to
// Denied.Max (an hour by default).
package provision

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/devkey"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Step is a persisted provisioning step.
type Step string

// Steps of the state machine.
const (
	StepKey         Step = "key"
	StepCertificate Step = "certificate"
	StepRegistered  Step = "registered"
	// StepSwitched (recovery only): identity.json names the new
	// certificate; the previous identity's files are being removed.
	StepSwitched Step = "switched"
)

// RetryFile is the persisted backoff between provisioning attempts.
const RetryFile = "provision-retry.json"

// verifyRefusalsBeforeNewCSR: a newly registered certificate the broker
// refuses this many times in a row is given up, and a new CSR is sent for
// the same key (the pre-provisioning hook decides again).
const verifyRefusalsBeforeNewCSR = 3

// Files the provisioner writes, relative to the state directory.
const (
	KeyFile  = store.CertsDir + "/device.key"
	CertFile = store.CertsDir + "/device.crt"
)

// State is the content of provision.json.
type State struct {
	Step          Step      `json:"step"`
	Serial        string    `json:"serial"`
	KeyFile       string    `json:"keyFile"`
	CertFile      string    `json:"certFile,omitempty"`
	CertificateID string    `json:"certificateId,omitempty"`
	Token         string    `json:"certificateOwnershipToken,omitempty"`
	TokenIssuedAt time.Time `json:"tokenIssuedAt,omitzero"`
	ThingName     string    `json:"thingName,omitempty"`
	UpdatedAt     time.Time `json:"updatedAt"`
	// Recovery marks a re-provisioning of a device whose identity
	// (Previous) the broker refused; Previous stays identity.json until
	// the new certificate has connected.
	Recovery bool            `json:"recovery,omitempty"`
	Previous *store.Identity `json:"previous,omitempty"`
	// VerifyRefusals counts refused connections with the newly registered
	// certificate.
	VerifyRefusals int `json:"verifyRefusals,omitempty"`
}

// backToKey keeps the key (and the recovery context) and forgets the
// certificate.
func (st State) backToKey() State {
	return State{Step: StepKey, Serial: st.Serial, KeyFile: st.KeyFile, Recovery: st.Recovery, Previous: st.Previous}
}

// Retry is the persisted backoff (provision-retry.json).
type Retry struct {
	// Failures counts consecutive transient failures, Denials consecutive
	// denials; each grows its own exponential backoff.
	Failures    int       `json:"failures"`
	Denials     int       `json:"denials"`
	NextAttempt time.Time `json:"nextAttempt"`
	LastError   string    `json:"lastError,omitempty"`
}

// Options configure a Provisioner.
type Options struct {
	Store *store.Store
	// Address is the IoT endpoint host:port; ServerName its TLS name.
	Address    string
	ServerName string
	ALPN       bool
	RootCAPEM  []byte
	// ClaimCertFile and ClaimKeyFile are the shared claim certificate.
	ClaimCertFile string
	ClaimKeyFile  string
	TemplateName  string
	Serial        string
	KeyAlgorithm  devkey.Algorithm
	// ResponseTimeout bounds the wait for each answer (default 30s).
	ResponseTimeout time.Duration
	ConnectTimeout  time.Duration
	// Retry is the backoff after throttling and transient failures.
	Retry backoff.Policy
	// Denied is the backoff after a denial or a malformed request
	// (default 1m doubling up to 1h).
	Denied backoff.Policy
	// TokenTTL: a persisted ownership token older than this is not used
	// (default 4m).
	TokenTTL time.Duration
	Logger   *slog.Logger
	// Sleep waits between attempts (default backoff.Sleep); tests record
	// the delays through it.
	Sleep func(ctx context.Context, d time.Duration) error
	// AfterPersist, if set, is called after every persisted step (tests
	// cancel ctx there to simulate a power cut at that point).
	AfterPersist func(st State)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Liveness, when set, hears the bound of each wait before it starts:
	// each attempt (at most 4 × (ConnectTimeout + ResponseTimeout)) and
	// each backoff sleep. The agent passes the supervised loop that
	// provisioning or a recovery runs on, so that a hang in them stops the
	// watchdog pings like a hang anywhere else.
	Liveness interface{ Busy(d time.Duration) }
}

// Provisioner runs provisioning by claim.
type Provisioner struct {
	o   Options
	log *slog.Logger
}

// New checks opts.
func New(o Options) (*Provisioner, error) {
	switch {
	case o.Store == nil:
		return nil, errors.New("provision: Store is required")
	case o.Address == "":
		return nil, errors.New("provision: Address is required")
	case o.TemplateName == "":
		return nil, errors.New("provision: TemplateName is required")
	case o.Serial == "":
		return nil, errors.New("provision: Serial is required")
	case o.ClaimCertFile == "" || o.ClaimKeyFile == "":
		return nil, errors.New("provision: claim certificate and key files are required")
	case !o.KeyAlgorithm.Valid():
		return nil, fmt.Errorf("provision: unsupported key algorithm %q", o.KeyAlgorithm)
	}
	if o.ResponseTimeout <= 0 {
		o.ResponseTimeout = 30 * time.Second
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 30 * time.Second
	}
	if o.Denied.Max <= 0 {
		o.Denied.Max = time.Hour
	}
	if o.Denied.Initial <= 0 {
		o.Denied.Initial = min(time.Minute, o.Denied.Max)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.TokenTTL <= 0 {
		o.TokenTTL = 4 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Sleep == nil {
		o.Sleep = backoff.Sleep
	}
	return &Provisioner{o: o, log: o.Logger.With("component", "provision", "serial", o.Serial)}, nil
}

// Rejection is a rejected provisioning request.
type Rejection struct {
	API  string
	Resp protocol.ErrorResponse
}

func (r *Rejection) Error() string {
	return fmt.Sprintf("%s rejected: %s (status %d): %s", r.API, r.Resp.ErrorCode, r.Resp.StatusCode, r.Resp.ErrorMessage)
}

// failure classes decide the wait before the next attempt.
type class int

const (
	transient class = iota // throttling, timeouts, lost connections
	denied                 // hook denial, malformed request: long backoff
	newCSR                 // the certificate/token cannot be used: CSR again
)

func classify(r *Rejection) class {
	code := r.Resp.ErrorCode
	switch {
	case code == protocol.ErrCodeThrottling || code == protocol.ErrCodeRequestThrottled ||
		code == protocol.ErrCodeInternalError || code == protocol.ErrCodeServiceUnavailable ||
		r.Resp.StatusCode == 429 || r.Resp.StatusCode >= 500:
		return transient
	case code == protocol.ErrCodeAccessDenied || r.Resp.StatusCode == 403:
		return denied
	case r.API == apiRegister && (code == protocol.ErrCodeInvalidToken || code == protocol.ErrCodeResourceNotFound ||
		(code == protocol.ErrCodeInvalidRequest && strings.Contains(strings.ToLower(r.Resp.ErrorMessage), "token"))):
		return newCSR
	}
	return denied
}

const (
	apiCSR      = "CreateCertificateFromCsr"
	apiRegister = "RegisterThing"
)

// Run provisions the device and returns its identity. If the device already
// has one, Run returns it without connecting. Failures are retried (with
// the persisted backoff) until ctx is done.
func (p *Provisioner) Run(ctx context.Context) (store.Identity, error) {
	if id, found, err := p.o.Store.Identity(); err != nil {
		return store.Identity{}, fmt.Errorf("provision: %w", err)
	} else if found {
		return id, nil
	}
	return p.loop(ctx, p.attempt)
}

// loop runs attempt until it succeeds or ctx is done, waiting between
// attempts as the persisted backoff says.
func (p *Provisioner) loop(ctx context.Context, attempt func(context.Context) (store.Identity, error)) (store.Identity, error) {
	if err := p.waitScheduled(ctx); err != nil {
		return store.Identity{}, err
	}
	for {
		p.busy(p.attemptBound())
		id, err := attempt(ctx)
		if err == nil {
			if rerr := p.o.Store.Remove(RetryFile); rerr != nil {
				p.log.Warn("provisioning backoff state not removed", "err", rerr)
			}
			return id, nil
		}
		if ctx.Err() != nil {
			return store.Identity{}, ctx.Err()
		}
		var rej *Rejection
		cls := transient
		if errors.As(err, &rej) {
			cls = classify(rej)
		} else if errors.Is(err, errMalformed) {
			cls = denied
		}
		r, rerr := p.loadRetry()
		if rerr != nil {
			p.log.Warn("provisioning backoff state unreadable; starting it over", "err", rerr)
		}
		var d time.Duration
		switch cls {
		case denied:
			d = p.o.Denied.Delay(r.Denials)
			r.Denials++
			r.Failures = 0
			p.log.Error("provisioning refused; backing off", "err", err, "attempt", r.Denials, "retryIn", d.Round(time.Second))
		default:
			d = p.o.Retry.Delay(r.Failures)
			r.Failures++
			p.log.Warn("provisioning attempt failed; retrying", "err", err, "retryIn", d.Round(time.Millisecond))
		}
		r.NextAttempt = p.o.Now().Add(d).UTC()
		r.LastError = err.Error()
		if werr := p.o.Store.WriteJSON(RetryFile, r); werr != nil {
			p.log.Warn("provisioning backoff state not persisted", "err", werr)
		}
		if cls == newCSR {
			if err := p.restartFromKey(ctx); err != nil {
				return store.Identity{}, err
			}
		}
		p.busy(d)
		if err := p.o.Sleep(ctx, d); err != nil {
			return store.Identity{}, err
		}
	}
}

// attemptBound is the longest one attempt can take: every connection and
// answer it waits for is bounded by ConnectTimeout or ResponseTimeout (a
// recovery's attempt connects three times and waits for two answers).
func (p *Provisioner) attemptBound() time.Duration {
	return 4 * (p.o.ConnectTimeout + p.o.ResponseTimeout)
}

// busy announces a bounded wait to the Liveness, if any.
func (p *Provisioner) busy(d time.Duration) {
	if p.o.Liveness != nil {
		p.o.Liveness.Busy(d)
	}
}

func (p *Provisioner) loadRetry() (Retry, error) {
	var r Retry
	if _, err := p.o.Store.ReadJSON(RetryFile, &r); err != nil {
		return Retry{}, err
	}
	return r, nil
}

// waitScheduled waits until the persisted time of the next attempt (a
// restarted agent does not retry early), at most the longest backoff in
// case the clock moved back.
func (p *Provisioner) waitScheduled(ctx context.Context) error {
	r, err := p.loadRetry()
	if err != nil {
		p.log.Warn("provisioning backoff state unreadable; not waiting", "err", err)
		return nil
	}
	d := r.NextAttempt.Sub(p.o.Now())
	if d <= 0 {
		return nil
	}
	d = min(d, max(p.o.Denied.Max, p.o.Retry.Max))
	p.log.Info("waiting for the next provisioning attempt (persisted backoff)",
		"retryIn", d.Round(time.Second), "denials", r.Denials, "failures", r.Failures, "lastError", r.LastError)
	p.busy(d)
	return p.o.Sleep(ctx, d)
}

var errMalformed = errors.New("malformed answer")

func (p *Provisioner) loadState() (State, error) {
	var st State
	found, err := p.o.Store.ReadJSON(store.ProvisionFile, &st)
	if err != nil {
		return State{}, fmt.Errorf("provision: %w", err)
	}
	if !found {
		return State{}, nil
	}
	return st, nil
}

// saveState persists st; it returns ctx's error when the AfterPersist
// hook (tests) cancelled it.
func (p *Provisioner) saveState(ctx context.Context, st State) error {
	st.UpdatedAt = p.o.Now().UTC()
	if err := p.o.Store.WriteJSON(store.ProvisionFile, st); err != nil {
		return fmt.Errorf("provision: persist step %s: %w", st.Step, err)
	}
	p.log.Info("provisioning step persisted", "step", st.Step)
	if p.o.AfterPersist != nil {
		p.o.AfterPersist(st)
	}
	return ctx.Err()
}

// restartFromKey keeps the key and forgets the unusable certificate.
func (p *Provisioner) restartFromKey(ctx context.Context) error {
	st, err := p.loadState()
	if err != nil {
		return err
	}
	if st.Step != StepCertificate {
		return nil
	}
	p.log.Warn("certificate ownership token unusable; requesting a new certificate for the same key", "certificateId", st.CertificateID)
	return p.saveState(ctx, st.backToKey())
}

// attempt advances the state machine as far as it can on one claim
// connection.
func (p *Provisioner) attempt(ctx context.Context) (store.Identity, error) {
	st, err := p.loadState()
	if err != nil {
		return store.Identity{}, err
	}
	if st.Step != "" && st.Serial != p.o.Serial {
		return store.Identity{}, fmt.Errorf("provision: %s was started for serial %q, this device reports %q", store.ProvisionFile, st.Serial, p.o.Serial)
	}
	if st.Step == "" || !p.keyUsable(st) {
		if st, err = p.makeKey(ctx, State{Step: StepKey, Serial: p.o.Serial, KeyFile: KeyFile}); err != nil {
			return store.Identity{}, err
		}
	}
	if st, err = p.checkToken(ctx, st); err != nil {
		return store.Identity{}, err
	}
	if st.Step == StepRegistered {
		return p.finish(st)
	}
	if st, err = p.claimSteps(ctx, st); err != nil {
		return store.Identity{}, err
	}
	return p.finish(st)
}

// checkToken drops a persisted ownership token that is too old to use.
func (p *Provisioner) checkToken(ctx context.Context, st State) (State, error) {
	if st.Step != StepCertificate || p.o.Now().Sub(st.TokenIssuedAt) <= p.o.TokenTTL {
		return st, nil
	}
	p.log.Warn("persisted ownership token is too old; requesting a new certificate for the same key", "age", p.o.Now().Sub(st.TokenIssuedAt).Round(time.Second))
	st = st.backToKey()
	return st, p.saveState(ctx, st)
}

// claimSteps connects with the claim certificate and advances st to
// StepRegistered.
func (p *Provisioner) claimSteps(ctx context.Context, st State) (State, error) {

	cl, stop, err := p.connectClaim(ctx)
	if err != nil {
		return st, err
	}
	defer stop()

	if st.Step == StepKey {
		if st, err = p.createCertificate(ctx, cl, st); err != nil {
			return st, err
		}
	}
	if st, err = p.registerThing(ctx, cl, st); err != nil {
		return st, err
	}
	stop() // disconnect the claim identity before the device identity connects
	return st, nil
}

func (p *Provisioner) keyUsable(st State) bool {
	if _, err := devkey.Load(p.o.Store.Path(st.KeyFile)); err != nil {
		p.log.Warn("persisted provisioning key unusable; starting over with a new key", "err", err)
		return false
	}
	return true
}

// makeKey generates the device key into st.KeyFile and persists st.
func (p *Provisioner) makeKey(ctx context.Context, st State) (State, error) {
	key, err := devkey.Generate(p.o.KeyAlgorithm)
	if err != nil {
		return State{}, fmt.Errorf("provision: %w", err)
	}
	// The key is on disk (0600, fsynced) before any CSR leaves the device.
	if err := devkey.Write(p.o.Store.Path(st.KeyFile), key); err != nil {
		return State{}, fmt.Errorf("provision: %w", err)
	}
	p.log.Info("device key generated", "algorithm", p.o.KeyAlgorithm, "keyFile", st.KeyFile)
	return st, p.saveState(ctx, st)
}

// certFileFor is the certificate file next to keyFile.
func certFileFor(keyFile string) string {
	return strings.TrimSuffix(keyFile, ".key") + ".crt"
}

// claimConn is the claim connection and its answer channel.
type claimConn struct {
	c       *mqttconn.Client
	answers chan answer
}

type answer struct {
	topic   string
	payload []byte
}

func (p *Provisioner) connectClaim(ctx context.Context) (*claimConn, func(), error) {
	claim, err := tls.LoadX509KeyPair(p.o.ClaimCertFile, p.o.ClaimKeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("provision: load claim certificate: %w", err)
	}
	host := p.o.ServerName
	c, err := mqttconn.New(mqttconn.Options{
		Address:        p.o.Address,
		ClientID:       protocol.ClaimClientID(p.o.Serial),
		CleanSession:   true,
		ConnectTimeout: p.o.ConnectTimeout,
		TLSConfig: func() (*tls.Config, error) {
			return mqttconn.NewTLSConfig(p.o.RootCAPEM, claim, host, p.o.ALPN)
		},
		Backoff: p.o.Retry,
		Logger:  p.o.Logger,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("provision: %w", err)
	}
	cc := &claimConn{c: c, answers: make(chan answer, 16)}
	h := func(topic string, payload []byte) {
		select {
		case cc.answers <- answer{topic: topic, payload: payload}:
		default: // a flood of unexpected answers must not block delivery
		}
	}
	tmpl := p.o.TemplateName
	// Subscribe to the answers before any request is sent: Run makes these
	// subscriptions (and waits for the SUBACK) before reporting connected.
	for _, topic := range []string{
		protocol.CreateCertFromCSRAcceptedTopic, protocol.CreateCertFromCSRRejectedTopic,
		protocol.RegisterThingAcceptedTopic(tmpl), protocol.RegisterThingRejectedTopic(tmpl),
	} {
		if err := c.Subscribe(ctx, topic, 1, h); err != nil {
			return nil, nil, fmt.Errorf("provision: %w", err)
		}
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(runCtx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, p.o.ConnectTimeout+p.o.ResponseTimeout)
	defer wcancel()
	if err := c.WaitConnected(wctx); err != nil {
		stop()
		return nil, nil, fmt.Errorf("provision: connect with the claim certificate to %s: %w", p.o.Address, err)
	}
	p.log.Info("connected with the claim certificate", "clientId", c.ClientID())
	return cc, stop, nil
}

// request publishes payload on topic and waits for the answer on accepted
// or rejected, decoding an accepted answer into out.
func (p *Provisioner) request(ctx context.Context, cc *claimConn, api, topic string, payload []byte, out any) error {
	for { // drop answers to earlier, abandoned requests
		select {
		case <-cc.answers:
			continue
		default:
		}
		break
	}
	if err := cc.c.Publish(ctx, topic, 1, payload); err != nil {
		return fmt.Errorf("%s: publish: %w", api, err)
	}
	timer := time.NewTimer(p.o.ResponseTimeout)
	defer timer.Stop()
	for {
		select {
		case a := <-cc.answers:
			switch a.topic {
			case protocol.Accepted(topic):
				if err := json.Unmarshal(a.payload, out); err != nil {
					return fmt.Errorf("%s: %w: accepted payload: %v", api, errMalformed, err)
				}
				return nil
			case protocol.Rejected(topic):
				var er protocol.ErrorResponse
				if err := json.Unmarshal(a.payload, &er); err != nil {
					return fmt.Errorf("%s: %w: rejected payload: %v", api, errMalformed, err)
				}
				return &Rejection{API: api, Resp: er}
			}
		case <-timer.C:
			return fmt.Errorf("%s: no answer within %v", api, p.o.ResponseTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *Provisioner) createCertificate(ctx context.Context, cc *claimConn, st State) (State, error) {
	key, err := devkey.Load(p.o.Store.Path(st.KeyFile))
	if err != nil {
		return st, fmt.Errorf("provision: %w", err)
	}
	csr, err := devkey.CSR(key, p.o.Serial)
	if err != nil {
		return st, fmt.Errorf("provision: %w", err)
	}
	req, err := json.Marshal(protocol.CreateCertFromCSRRequest{CertificateSigningRequest: string(csr)})
	if err != nil {
		return st, fmt.Errorf("provision: %w", err)
	}
	var resp protocol.CreateCertResponse
	if err := p.request(ctx, cc, apiCSR, protocol.CreateCertFromCSRTopic, req, &resp); err != nil {
		return st, err
	}
	cert, err := devkey.ParseCertificatePEM([]byte(resp.CertificatePEM))
	if err != nil {
		return st, fmt.Errorf("%s: %w: %v", apiCSR, errMalformed, err)
	}
	if !devkey.Matches(cert, key) {
		return st, fmt.Errorf("%s: %w: certificate does not certify the device key", apiCSR, errMalformed)
	}
	if resp.CertificateOwnershipToken == "" || resp.CertificateID == "" {
		return st, fmt.Errorf("%s: %w: missing certificateId or certificateOwnershipToken", apiCSR, errMalformed)
	}
	certFile := certFileFor(st.KeyFile)
	if err := p.o.Store.WriteFile(certFile, []byte(resp.CertificatePEM), 0o644); err != nil {
		return st, fmt.Errorf("provision: %w", err)
	}
	st = State{
		Step: StepCertificate, Serial: st.Serial, KeyFile: st.KeyFile, CertFile: certFile,
		CertificateID: resp.CertificateID, Token: resp.CertificateOwnershipToken, TokenIssuedAt: p.o.Now().UTC(),
		Recovery: st.Recovery, Previous: st.Previous,
	}
	if err := p.saveState(ctx, st); err != nil {
		return st, err
	}
	p.log.Info("certificate issued", "certificateId", resp.CertificateID)
	return st, nil
}

func (p *Provisioner) registerThing(ctx context.Context, cc *claimConn, st State) (State, error) {
	req, err := json.Marshal(protocol.RegisterThingRequest{
		CertificateOwnershipToken: st.Token,
		Parameters:                map[string]string{protocol.ParamSerialNumber: p.o.Serial},
	})
	if err != nil {
		return st, fmt.Errorf("provision: %w", err)
	}
	var resp protocol.RegisterThingResponse
	if err := p.request(ctx, cc, apiRegister, protocol.RegisterThingTopic(p.o.TemplateName), req, &resp); err != nil {
		return st, err
	}
	if resp.ThingName == "" {
		return st, fmt.Errorf("%s: %w: empty thingName", apiRegister, errMalformed)
	}
	st.Step, st.ThingName, st.Token = StepRegistered, resp.ThingName, ""
	if err := p.saveState(ctx, st); err != nil {
		return st, err
	}
	p.log.Info("thing registered", "thingName", resp.ThingName, "certificateId", st.CertificateID)
	return st, nil
}

func (st State) identity(at time.Time) store.Identity {
	return store.Identity{
		ThingName: st.ThingName, Serial: st.Serial, CertificateID: st.CertificateID,
		CertFile: st.CertFile, KeyFile: st.KeyFile, ProvisionedAt: at.UTC(),
	}
}

func (p *Provisioner) finish(st State) (store.Identity, error) {
	id := st.identity(p.o.Now())
	if err := p.o.Store.SaveIdentity(id); err != nil {
		return store.Identity{}, fmt.Errorf("provision: %w", err)
	}
	if err := p.o.Store.Remove(store.ProvisionFile); err != nil {
		return store.Identity{}, fmt.Errorf("provision: %w", err)
	}
	p.log.Info("device provisioned", "thingName", id.ThingName)
	return id, nil
}

// RootCA reads a root CA file for Options.RootCAPEM.
func RootCA(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read root CA: %w", err)
	}
	return b, nil
}
