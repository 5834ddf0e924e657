// Package rotation is the device side of certificate rotation, an agent
// feature. On cmd/fleet/<thing>/rotate/request it generates a new key on
// the device, sends a CSR on dt/fleet/<thing>/rotate/csr, stores the
// certificate the cloud returns on cmd/fleet/<thing>/rotate/cert beside the
// old pair, switches identity.json to the new pair and reconnects. Only a
// connection made with the new certificate confirms the rotation (the
// cloud then retires the old certificate); if the new certificate is
// refused, or the cloud does not answer in time, the device switches back
// to the old pair and reports the failure (the cloud then retires the new
// certificate).
//
// The state machine is persisted (rotation.json, written atomically, 0600)
// before every step, and identity.json always names a key and certificate
// that are on disk, so a kill -9 or power loss at any point leaves a
// working identity: on restart a switched device tries the new certificate
// for a full SwitchTimeout before falling back, and once the new
// certificate has connected the device never falls back to the old one
// (the cloud may already have deleted it).
package rotation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"time"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/devkey"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// StateFile is the rotation state file in the agent's state directory.
const StateFile = "rotation.json"

// Step is a persisted step of the state machine.
type Step string

const (
	// StepIdle: no rotation in progress.
	StepIdle Step = ""
	// StepCSR: the new key is on disk and its CSR sent; waiting for the
	// certificate.
	StepCSR Step = "csr"
	// StepCert: the certificate is on disk; identity.json is being
	// switched to it.
	StepCert Step = "cert"
	// StepSwitched: identity.json names the new pair; waiting for a
	// connection with it, then confirming.
	StepSwitched Step = "switched"
	// StepFallback: identity.json names the old pair again; the failure is
	// being reported.
	StepFallback Step = "fallback"
)

// State is the persisted state (rotation.json).
type State struct {
	Step       Step   `json:"step"`
	RotationID string `json:"rotationId,omitempty"`
	// Old is the identity before the rotation; New the one being tried
	// (KeyFile from StepCSR, CertFile and CertificateID from StepCert).
	Old store.Identity `json:"old"`
	New store.Identity `json:"new"`
	CSR string         `json:"csr,omitempty"`
	// StartedAt bounds the wait for the certificate, SwitchedAt the wait
	// for a connection with it.
	StartedAt  time.Time `json:"startedAt,omitempty"`
	SwitchedAt time.Time `json:"switchedAt,omitempty"`
	// NewConnected is set once a connection with the new certificate
	// succeeded: from then on the device never falls back.
	NewConnected bool `json:"newConnected,omitempty"`
	// Reason of a fallback.
	Reason string `json:"reason,omitempty"`

	// The last finished rotation, to answer a repeated request.
	LastID     string `json:"lastId,omitempty"`
	LastStatus string `json:"lastStatus,omitempty"`
	LastCertID string `json:"lastCertificateId,omitempty"`
	LastReason string `json:"lastReason,omitempty"`
}

// Defaults of Config.
const (
	DefaultCertTimeout    = 10 * time.Minute
	DefaultSwitchTimeout  = 5 * time.Minute
	DefaultPublishTimeout = 30 * time.Second
)

// Config configures the feature.
type Config struct {
	// KeyAlgorithm is used when a request names none (the agent's
	// provisioning.keyAlgorithm).
	KeyAlgorithm devkey.Algorithm
	// CertTimeout bounds the wait for the certificate after the CSR.
	CertTimeout time.Duration
	// SwitchTimeout bounds the wait for a connection with the new
	// certificate; it must exceed the agent's reconnect backoff maximum.
	SwitchTimeout time.Duration
	// PublishTimeout bounds each publish (waiting for the PUBACK).
	PublishTimeout time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// AfterPersist, if set, is called after every state write with the
	// new state, from the feature's goroutine (tests stop the agent there
	// to simulate a crash at every step). ctx ends when the feature stops.
	AfterPersist func(ctx context.Context, st State)
}

// Feature returns the rotation feature's factory.
func Feature(cfg Config) agent.FeatureFactory {
	return func(rt *agent.Runtime) (agent.Feature, error) {
		if cfg.KeyAlgorithm == "" {
			cfg.KeyAlgorithm = devkey.Algorithm(rt.Config.Provisioning.KeyAlgorithm)
		}
		if !cfg.KeyAlgorithm.Valid() {
			return nil, fmt.Errorf("rotation: key algorithm %q", cfg.KeyAlgorithm)
		}
		if cfg.CertTimeout <= 0 {
			cfg.CertTimeout = DefaultCertTimeout
		}
		if cfg.SwitchTimeout <= 0 {
			// Longer than two reconnect backoffs, so a refused connection
			// is retried before giving up.
			cfg.SwitchTimeout = max(DefaultSwitchTimeout, 2*rt.Config.MQTT.ReconnectMax.D())
		}
		if cfg.PublishTimeout <= 0 {
			cfg.PublishTimeout = DefaultPublishTimeout
		}
		if cfg.Now == nil {
			cfg.Now = time.Now
		}
		return &Rotator{cfg: cfg, rt: rt, thing: rt.Identity.ThingName, log: rt.Logger.With("feature", "rotation"),
			events: make(chan event, 64), done: make(chan struct{})}, nil
	}
}

type eventKind int

const (
	evMessage eventKind = iota
	evConnected
)

type event struct {
	kind    eventKind
	topic   string
	payload []byte
	conn    int64 // connection number (evConnected)
}

// Rotator is the feature. Its state is owned by its goroutine.
type Rotator struct {
	cfg    Config
	rt     *agent.Runtime
	thing  string
	log    *slog.Logger
	events chan event
	done   chan struct{}

	st State
	// gen: connections numbered above it were made with the identity
	// that identity.json names since the last switch.
	gen int64
	// csrSent is the connection that was up when the broker acknowledged
	// the current CSR: the (re)connects numbered up to it need no re-send
	// (the cloud has the CSR; a second one would make it issue, and
	// retire, a second certificate).
	csrSent int64
}

// Name implements agent.Feature.
func (r *Rotator) Name() string { return "rotation" }

// Start implements agent.Feature: it recovers a rotation interrupted by a
// crash, subscribes to the rotation commands and runs the state machine.
func (r *Rotator) Start(ctx context.Context, rt *agent.Runtime) error {
	if _, err := rt.Store.ReadJSON(StateFile, &r.st); err != nil {
		return fmt.Errorf("rotation: %w", err)
	}
	if err := r.recover(ctx); err != nil {
		return fmt.Errorf("rotation: recover: %w", err)
	}
	filter := protocol.CommandTopic(r.thing, "rotate/#")
	if err := rt.Conn.Subscribe(ctx, filter, 1, func(topic string, payload []byte) {
		select {
		case r.events <- event{kind: evMessage, topic: topic, payload: append([]byte(nil), payload...)}:
		case <-ctx.Done():
		}
	}); err != nil {
		return fmt.Errorf("rotation: subscribe %s: %w", filter, err)
	}
	rt.Conn.OnConnect(func(cctx context.Context) {
		n := rt.Conn.Connections()
		select {
		case r.events <- event{kind: evConnected, conn: n}:
		case <-cctx.Done():
		case <-ctx.Done():
		}
	})
	rt.Go(ctx, "rotation", func(ctx context.Context, l *agent.Loop) error {
		r.run(ctx, l)
		return nil
	})
	return nil
}

// Stop implements agent.Stopper.
func (r *Rotator) Stop() { <-r.done }

// recover runs before the connection starts: identity.json is made to match
// the persisted step.
func (r *Rotator) recover(ctx context.Context) error {
	if r.st.Step != StepIdle {
		if cur, replaced := r.identityReplaced(); replaced {
			return r.void(ctx, cur, "interrupted")
		}
	}
	switch r.st.Step {
	case StepCert:
		// The certificate is stored; switching may or may not have
		// happened. Switch (again); the first connection uses it.
		return r.switchIdentity(ctx, false)
	case StepSwitched:
		if err := r.rt.Store.SaveIdentity(r.st.New); err != nil {
			return err
		}
		if !r.st.NewConnected {
			// Give the new certificate a full window after the restart.
			r.st.SwitchedAt = r.cfg.Now()
			return r.persist(ctx)
		}
	case StepFallback:
		return r.rt.Store.SaveIdentity(r.st.Old)
	}
	return nil
}

func (r *Rotator) persist(ctx context.Context) error {
	if err := r.rt.Store.WriteJSON(StateFile, r.st); err != nil {
		return err
	}
	if r.cfg.AfterPersist != nil {
		r.cfg.AfterPersist(ctx, r.st)
	}
	return ctx.Err()
}

// run is the feature's loop, supervised by the agent: it beats on every
// turn and at least every l.Interval(); handling one event publishes a few
// times at most, each bounded by PublishTimeout.
func (r *Rotator) run(ctx context.Context, l *agent.Loop) {
	defer close(r.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	tick := time.NewTicker(l.Interval())
	defer tick.Stop()
	for {
		l.Beat()
		timer.Stop()
		var deadline <-chan time.Time
		if d, ok := r.deadline(); ok {
			timer.Reset(max(time.Until(d), 0))
			deadline = timer.C
		}
		var err error
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			continue
		case ev := <-r.events:
			l.Busy(4 * r.cfg.PublishTimeout)
			switch ev.kind {
			case evMessage:
				err = r.onMessage(ctx, ev.topic, ev.payload)
			case evConnected:
				err = r.onConnected(ctx, ev.conn)
			}
		case <-deadline:
			l.Busy(4 * r.cfg.PublishTimeout)
			err = r.onTimeout(ctx)
		}
		if err != nil && ctx.Err() == nil {
			r.log.Warn("rotation step failed", "rotationId", r.st.RotationID, "step", string(r.st.Step), "error", err.Error())
		}
	}
}

// deadline is when the current step times out.
func (r *Rotator) deadline() (time.Time, bool) {
	switch r.st.Step {
	case StepCSR:
		return r.st.StartedAt.Add(r.cfg.CertTimeout), true
	case StepSwitched:
		if !r.st.NewConnected {
			return r.st.SwitchedAt.Add(r.cfg.SwitchTimeout), true
		}
	}
	return time.Time{}, false
}

func (r *Rotator) onMessage(ctx context.Context, topic string, payload []byte) error {
	_, kind, ok := protocol.ThingFromTopic(topic)
	if !ok {
		return nil
	}
	switch kind {
	case protocol.KindRotateRequest:
		var req protocol.RotateRequest
		if err := json.Unmarshal(payload, &req); err != nil || req.RotationID == "" {
			return fmt.Errorf("invalid rotation request: %v", err)
		}
		return r.onRequest(ctx, req)
	case protocol.KindRotateCert:
		var rc protocol.RotateCert
		if err := json.Unmarshal(payload, &rc); err != nil || rc.RotationID == "" {
			return fmt.Errorf("invalid rotation certificate message: %v", err)
		}
		return r.onCert(ctx, rc)
	}
	return nil
}

func (r *Rotator) onRequest(ctx context.Context, req protocol.RotateRequest) error {
	switch {
	case r.st.Step == StepIdle && req.RotationID == r.st.LastID:
		// The cloud did not get the outcome: report it again.
		r.log.Info("rotation request repeated for a finished rotation", "rotationId", req.RotationID)
		return r.publishConfirm(ctx, r.st.LastID, r.st.LastCertID, r.st.LastStatus, r.st.LastReason)
	case r.st.Step == StepCSR && req.RotationID == r.st.RotationID:
		return r.publishCSR(ctx)
	case r.st.Step != StepIdle:
		r.log.Info("rotation request ignored: another rotation in progress", "rotationId", req.RotationID, "current", r.st.RotationID)
		return nil
	}
	alg := r.cfg.KeyAlgorithm
	if req.KeyAlgorithm != "" {
		alg = devkey.Algorithm(req.KeyAlgorithm)
		if !alg.Valid() {
			return fmt.Errorf("rotation %s: unsupported key algorithm %q", req.RotationID, req.KeyAlgorithm)
		}
	}
	id, found, err := r.rt.Store.Identity()
	if err != nil || !found {
		return fmt.Errorf("rotation %s: current identity: %v", req.RotationID, err)
	}
	// The new key is generated here, on the device, and written (0600,
	// atomically) before its CSR leaves.
	key, err := devkey.Generate(alg)
	if err != nil {
		return err
	}
	keyFile := path.Join(store.CertsDir, "rotation-"+fileID(req.RotationID)+".key")
	if err := devkey.Write(r.rt.Store.Path(keyFile), key); err != nil {
		return err
	}
	csr, err := devkey.CSR(key, r.thing)
	if err != nil {
		return err
	}
	r.st = State{
		Step: StepCSR, RotationID: req.RotationID, Old: id,
		New: store.Identity{ThingName: id.ThingName, Serial: id.Serial, KeyFile: keyFile},
		CSR: string(csr), StartedAt: r.cfg.Now(),
		LastID: r.st.LastID, LastStatus: r.st.LastStatus, LastCertID: r.st.LastCertID, LastReason: r.st.LastReason,
	}
	r.csrSent = 0
	if err := r.persist(ctx); err != nil {
		return err
	}
	r.log.Info("rotation started", "rotationId", req.RotationID, "keyAlgorithm", string(alg))
	return r.publishCSR(ctx)
}

// fileID keeps a rotation id usable in a file name.
func fileID(id string) string {
	b := []byte(id)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

func (r *Rotator) publishCSR(ctx context.Context) error {
	if err := r.publish(ctx, protocol.KindRotateCSR, protocol.RotateCSR{RotationID: r.st.RotationID, CSR: r.st.CSR, Timestamp: r.cfg.Now().Unix()}); err != nil {
		return err
	}
	r.csrSent = r.rt.Conn.Connections()
	return nil
}

func (r *Rotator) publishConfirm(ctx context.Context, id, certID, status, reason string) error {
	return r.publish(ctx, protocol.KindRotateConfirm, protocol.RotateConfirm{
		RotationID: id, CertificateID: certID, Status: status, Reason: reason, Timestamp: r.cfg.Now().Unix(),
	})
}

// publish sends directly on the current connection (QoS 1, waits for the
// PUBACK): a confirmation must travel over the connection it vouches for.
func (r *Rotator) publish(ctx context.Context, kind string, v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	return r.rt.Conn.Publish(ctx, protocol.DataTopic(r.thing, kind), 1, payload)
}

func (r *Rotator) onCert(ctx context.Context, rc protocol.RotateCert) error {
	if r.st.Step != StepCSR || rc.RotationID != r.st.RotationID {
		return nil // duplicate or stale
	}
	if rc.ErrorCode != "" {
		return r.fallback(ctx, "cloud refused the CSR: "+rc.ErrorCode+": "+rc.ErrorMessage)
	}
	leaf, err := devkey.ParseCertificatePEM([]byte(rc.CertificatePEM))
	if err != nil {
		return r.fallback(ctx, "invalid certificate: "+err.Error())
	}
	key, err := devkey.Load(r.rt.Store.Path(r.st.New.KeyFile))
	if err != nil {
		return r.fallback(ctx, "new key unreadable: "+err.Error())
	}
	if !devkey.Matches(leaf, key) {
		return r.fallback(ctx, "certificate does not match the new key")
	}
	certFile := path.Join(store.CertsDir, "rotation-"+fileID(r.st.RotationID)+".crt")
	if err := r.rt.Store.WriteFile(certFile, []byte(rc.CertificatePEM), 0o644); err != nil {
		return err
	}
	r.st.New.CertFile = certFile
	r.st.New.CertificateID = rc.CertificateID
	r.st.New.ProvisionedAt = r.cfg.Now().UTC()
	r.st.Step = StepCert
	if err := r.persist(ctx); err != nil {
		return err
	}
	return r.switchIdentity(ctx, true)
}

// switchIdentity makes identity.json name the new pair and, when live,
// drops the current connection so that the next one uses it.
func (r *Rotator) switchIdentity(ctx context.Context, live bool) error {
	if err := r.rt.Store.SaveIdentity(r.st.New); err != nil {
		return r.fallback(ctx, "new identity unusable: "+err.Error())
	}
	// Every connection numbered above gen is made after the switch: the
	// connection up now (if any) is dropped by Reconnect, and no attempt
	// can be in flight while one is up. When none is up, an attempt that
	// loaded the old pair may be in flight (a certificate redelivered by
	// the persistent session arrives during the connect, before the
	// SUBACK): the Reconnect request stays pending and mqttconn drops
	// that connection as soon as it is up, which cancels its on-connect
	// hooks (this feature's runs after the agent's status publish has
	// been acknowledged); and the cloud accepts a confirmation only over
	// the new certificate (principal()).
	r.gen = r.rt.Conn.Connections()
	r.st.Step = StepSwitched
	r.st.SwitchedAt = r.cfg.Now()
	if err := r.persist(ctx); err != nil {
		return err
	}
	r.log.Info("rotation: switched to the new certificate, reconnecting", "rotationId", r.st.RotationID, "certificateId", r.st.New.CertificateID)
	if live {
		r.rt.Conn.Reconnect()
	}
	return nil
}

func (r *Rotator) onConnected(ctx context.Context, conn int64) error {
	switch r.st.Step {
	case StepCSR:
		if conn <= r.csrSent {
			// The CSR was acknowledged on this connection: the request
			// arrived before this connection's hook ran.
			return nil
		}
		// The CSR, or the certificate, may have been lost with the
		// previous connection (or process): send it again; the cloud
		// answers with the certificate it already issued.
		return r.publishCSR(ctx)
	case StepSwitched:
		if conn <= r.gen {
			return nil // made before the switch
		}
		if !r.st.NewConnected {
			r.st.NewConnected = true
			if err := r.persist(ctx); err != nil {
				return err
			}
			r.log.Info("rotation: connected with the new certificate", "rotationId", r.st.RotationID)
		}
		if err := r.publishConfirm(ctx, r.st.RotationID, r.st.New.CertificateID, protocol.RotateConfirmed, ""); err != nil {
			return fmt.Errorf("confirm (retried on the next connection): %w", err)
		}
		return r.finish(ctx, protocol.RotateConfirmed, r.st.New.CertificateID, "", r.st.Old, r.st.New)
	case StepFallback:
		if err := r.publishConfirm(ctx, r.st.RotationID, r.st.New.CertificateID, protocol.RotateFailed, r.st.Reason); err != nil {
			return fmt.Errorf("report failure (retried on the next connection): %w", err)
		}
		return r.finish(ctx, protocol.RotateFailed, r.st.New.CertificateID, r.st.Reason, r.st.New, r.st.Old)
	}
	return nil
}

func (r *Rotator) onTimeout(ctx context.Context) error {
	switch r.st.Step {
	case StepCSR:
		return r.fallback(ctx, "no certificate within "+r.cfg.CertTimeout.String())
	case StepSwitched:
		if !r.st.NewConnected {
			return r.fallback(ctx, "no connection with the new certificate within "+r.cfg.SwitchTimeout.String())
		}
	}
	return nil
}

// fallback restores the old identity and reports the failure once
// connected with it.
func (r *Rotator) fallback(ctx context.Context, reason string) error {
	if r.st.NewConnected {
		return errors.New("the new certificate has connected: not falling back")
	}
	if cur, replaced := r.identityReplaced(); replaced {
		return r.void(ctx, cur, reason)
	}
	switched := r.st.Step == StepCert || r.st.Step == StepSwitched
	if err := r.rt.Store.SaveIdentity(r.st.Old); err != nil {
		return fmt.Errorf("restore old identity: %w", err)
	}
	r.st.Step = StepFallback
	r.st.Reason = reason
	if err := r.persist(ctx); err != nil {
		return err
	}
	r.log.Warn("rotation failed, back on the old certificate", "rotationId", r.st.RotationID, "reason", reason)
	r.gen = r.rt.Conn.Connections()
	if switched && r.rt.Conn.IsConnected() {
		r.rt.Conn.Reconnect()
		return nil
	}
	if r.rt.Conn.IsConnected() {
		return r.onConnected(ctx, r.gen)
	}
	return nil
}

// identityReplaced reports whether identity.json names neither the
// rotation's old nor its new pair: the agent replaced the identity by
// claim (its certificate was refused, docs/protocol.md) while the rotation
// was under way.
func (r *Rotator) identityReplaced() (store.Identity, bool) {
	cur, found, err := r.rt.Store.Identity()
	if err != nil || !found {
		return store.Identity{}, false
	}
	return cur, cur.CertFile != r.st.Old.CertFile && cur.CertFile != r.st.New.CertFile
}

// void ends a rotation overtaken by a re-provisioning: identity.json is
// left alone (the old pair is gone) and the rotation's new files removed.
func (r *Rotator) void(ctx context.Context, cur store.Identity, reason string) error {
	r.log.Warn("rotation abandoned: the identity was replaced by a re-provisioning", "rotationId", r.st.RotationID, "reason", reason)
	return r.finish(ctx, protocol.RotateFailed, r.st.New.CertificateID, "identity replaced by a re-provisioning ("+reason+")", r.st.New, cur)
}

// finish records the outcome and removes the pair that is no longer used.
func (r *Rotator) finish(ctx context.Context, status, certID, reason string, unused, kept store.Identity) error {
	id := r.st.RotationID
	r.st = State{Step: StepIdle, LastID: id, LastStatus: status, LastCertID: certID, LastReason: reason}
	if err := r.persist(ctx); err != nil {
		return err
	}
	for _, f := range []string{unused.KeyFile, unused.CertFile} {
		if f == "" || f == kept.KeyFile || f == kept.CertFile {
			continue
		}
		if err := os.Remove(r.rt.Store.Path(f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("rotation: remove unused file", "file", f, "error", err.Error())
		}
	}
	r.log.Info("rotation finished", "rotationId", id, "status", status, "certificateId", certID, "reason", reason)
	return nil
}
