// Package agent wires the device agent together: state directory, identity
// (provisioning by claim on first start, and again after the broker refused
// the device certificate: see recovery.go), the supervised MQTT connection,
// the durable outbox, the features that plug into them (the jobs engine,
// and later OTA, certificate rotation, SSM) and the systemd protocol
// (READY once connected, WATCHDOG at half of WATCHDOG_USEC, STOPPING on
// shutdown).
package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/devkey"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/outbox"
	"github.com/iot-fleet/iot-fleet/device/provision"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Publisher durably accepts a message for in-order, at-least-once delivery
// (implemented by the outbox). It is the contract of the jobs engine and
// every other feature that reports state to the cloud.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// Runtime is what a Feature gets to plug into the agent.
type Runtime struct {
	// Identity is the device identity (ThingName is the MQTT client id).
	Identity store.Identity
	// Store is the state directory; features keep their files in it.
	Store *store.Store
	// Conn is the MQTT connection: Subscribe registers a handler that is
	// re-subscribed on every (re)connect, OnConnect a hook run after each
	// (re)connect, Publish a direct QoS 1 publish that waits for the
	// PUBACK, Reconnect a reconnect with freshly loaded identity files.
	Conn *mqttconn.Client
	// Outbox is the durable Publisher.
	Outbox Publisher
	// Config is the validated agent configuration.
	Config config.Config
	Logger *slog.Logger
}

// Feature is a part of the agent that plugs into the connection (the jobs
// engine; OTA, certificate rotation and SSM later). Start registers
// subscriptions and hooks and may start goroutines bound to ctx; it must
// not block. Stop, if the feature implements Stopper, is called on
// shutdown after the connection is closed.
type Feature interface {
	Name() string
	Start(ctx context.Context, rt *Runtime) error
}

// Stopper is implemented by features that need to wait for their
// goroutines on shutdown.
type Stopper interface {
	Stop()
}

// FeatureFactory builds a feature once the identity is known.
type FeatureFactory func(rt *Runtime) (Feature, error)

// Notifier sends a systemd notification (sd_notify state string).
type Notifier func(state string) error

// SystemdNotifier notifies systemd through $NOTIFY_SOCKET; it does
// nothing when the agent does not run under systemd.
func SystemdNotifier(state string) error {
	_, err := daemon.SdNotify(false, state)
	return err
}

// Options configure an Agent.
type Options struct {
	Config  config.Config
	Version string
	Logger  *slog.Logger
	// Features are built and started after provisioning.
	Features []FeatureFactory
	// Notify defaults to SystemdNotifier.
	Notify Notifier
	// WatchdogInterval is the systemd watchdog timeout; the default reads
	// WATCHDOG_USEC. The agent pings at half of it.
	WatchdogInterval func() (time.Duration, error)
}

// Agent is the device agent.
type Agent struct {
	o   Options
	log *slog.Logger

	mu    sync.Mutex
	rt    *Runtime
	ready chan struct{}
}

// New validates the configuration.
func New(o Options) (*Agent, error) {
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Notify == nil {
		o.Notify = SystemdNotifier
	}
	if o.WatchdogInterval == nil {
		o.WatchdogInterval = func() (time.Duration, error) { return daemon.SdWatchdogEnabled(false) }
	}
	return &Agent{o: o, log: o.Logger, ready: make(chan struct{})}, nil
}

// Ready is closed once the agent is provisioned, connected and its
// features started.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Runtime returns the runtime once Ready is closed (nil before).
func (a *Agent) Runtime() *Runtime {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rt
}

func (a *Agent) notify(state string) {
	if err := a.o.Notify(state); err != nil {
		a.log.Warn("systemd notify failed", "state", state, "err", err)
	}
}

// Run provisions the device if needed, connects and serves until ctx is
// done (SIGTERM), then shuts down cleanly.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.o.Config
	a.log.Info("fleet-agent starting", "version", a.o.Version, "endpoint", cfg.Address(), "stateDir", cfg.StateDir)

	wd := a.startWatchdog(ctx)
	defer wd()
	var stopping sync.Once
	notifyStopping := func() { stopping.Do(func() { a.notify(daemon.SdNotifyStopping) }) }
	defer notifyStopping()

	st, err := store.Open(cfg.StateDir)
	if err != nil {
		return err
	}
	rootCA, err := provision.RootCA(cfg.RootCAFile)
	if err != nil {
		return err
	}
	id, found, err := st.Identity()
	if err != nil {
		return err
	}
	recovering, err := provision.Recovering(st)
	if err != nil {
		a.log.Warn("provisioning state unreadable; resuming a recovery", "err", err)
		recovering = found
	}
	switch {
	case !found:
		a.notify("STATUS=provisioning by claim")
		if id, err = a.provision(ctx, st, rootCA); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	case recovering:
		// A recovery was under way when the agent stopped: resume it
		// (it tries the current certificate first).
		got, err := a.recover(ctx, st, rootCA, id)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			// Connect with the current identity; the refusals start a
			// recovery again.
			a.log.Error("recovery failed; connecting with the current identity", "err", err)
		default:
			id = got
		}
	}
	log := a.log.With("thing", id.ThingName)

	ob, err := outbox.Open(st.Path(store.OutboxDir), outbox.Options{
		MaxMessages: cfg.Outbox.MaxMessages, MaxAttempts: cfg.Outbox.MaxAttempts,
		Retry:  backoff.Policy{Initial: cfg.MQTT.ReconnectMin.D(), Max: cfg.MQTT.ReconnectMax.D()},
		Logger: log,
	})
	if err != nil {
		return err
	}
	det := newRefusalDetector(cfg.Provisioning.RecoverAfterRefusals, st, log)
	conn, err := mqttconn.New(mqttconn.Options{
		Address:        cfg.Address(),
		ClientID:       id.ThingName,
		CleanSession:   false,
		TLSConfig:      identityTLS(st, rootCA, cfg.Endpoint, cfg.ALPN),
		KeepAlive:      cfg.MQTT.KeepAlive.D(),
		ConnectTimeout: cfg.MQTT.ConnectTimeout.D(),
		Backoff:        backoff.Policy{Initial: cfg.MQTT.ReconnectMin.D(), Max: cfg.MQTT.ReconnectMax.D()},
		Logger:         log,
		OnAttempt:      det.attempt,
	})
	if err != nil {
		return err
	}
	rt := &Runtime{Identity: id, Store: st, Conn: conn, Outbox: ob, Config: cfg, Logger: log}

	started := time.Now().UTC()
	conn.OnConnect(func(ctx context.Context) { a.publishStatus(ctx, rt, started) })

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var features []Feature
	for _, mk := range a.o.Features {
		f, err := mk(rt)
		if err != nil {
			return fmt.Errorf("agent: build feature: %w", err)
		}
		if err := f.Start(runCtx, rt); err != nil {
			return fmt.Errorf("agent: start %s: %w", f.Name(), err)
		}
		log.Info("feature started", "feature", f.Name())
		features = append(features, f)
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := ob.Run(runCtx, conn); err != nil {
			log.Error("outbox stopped", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := conn.WaitConnected(runCtx); err == nil {
			a.mu.Lock()
			a.rt = rt
			a.mu.Unlock()
			close(a.ready)
			a.notify(daemon.SdNotifyReady + "\nSTATUS=connected as " + id.ThingName)
			log.Info("fleet-agent ready")
		}
	}()

	runErr := a.serve(runCtx, st, rootCA, conn, det, id, log)
	log.Info("fleet-agent stopping")
	notifyStopping()
	cancel()
	wg.Wait()
	for i := len(features) - 1; i >= 0; i-- {
		if s, ok := features[i].(Stopper); ok {
			s.Stop()
		}
	}
	log.Info("fleet-agent stopped", "outboxPending", ob.Len())
	if ctx.Err() != nil {
		return nil
	}
	return runErr
}

// serve keeps the connection up until ctx is done. When the broker keeps
// refusing the device certificate it stops the connection, recovers the
// identity (provision.Recover) and connects again with it.
func (a *Agent) serve(ctx context.Context, st *store.Store, rootCA []byte, conn *mqttconn.Client, det *refusalDetector, id store.Identity, log *slog.Logger) error {
	for {
		connCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = conn.Run(connCtx) }()
		select {
		case <-ctx.Done():
		case <-det.trigger:
		}
		stop()
		<-done
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("the broker keeps refusing the device certificate; checking it and recovering the identity by claim")
		a.notify("STATUS=recovering: the device certificate is refused")
		got, err := a.recover(ctx, st, rootCA, id)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// Not a refusal or a denial (those are retried inside): a
			// problem on the device (serial unreadable, state directory
			// not writable). Wait long, then connect normally again.
			wait := a.o.Config.Provisioning.DeniedBackoff.D()
			log.Error("recovery failed; reconnecting with the current identity later", "err", err, "retryIn", wait)
			if backoff.Sleep(ctx, wait) != nil {
				return nil
			}
			det.reset()
			continue
		}
		if got.ThingName != id.ThingName {
			// Features subscribed with the old thing name: start over
			// (systemd restarts the agent).
			return fmt.Errorf("agent: the recovered identity is thing %q, not %q: restarting", got.ThingName, id.ThingName)
		}
		det.reset()
	}
}

func (a *Agent) provision(ctx context.Context, st *store.Store, rootCA []byte) (store.Identity, error) {
	p, err := a.provisioner(st, rootCA)
	if err != nil {
		return store.Identity{}, err
	}
	return p.Run(ctx)
}

// recover runs provision.Recover for the identity cur.
func (a *Agent) recover(ctx context.Context, st *store.Store, rootCA []byte, cur store.Identity) (store.Identity, error) {
	p, err := a.provisioner(st, rootCA)
	if err != nil {
		return store.Identity{}, err
	}
	id, replaced, err := p.Recover(ctx)
	if err != nil {
		return store.Identity{}, err
	}
	if replaced {
		a.log.Info("identity recovered with a new certificate", "thing", id.ThingName, "oldCertificateId", cur.CertificateID, "certificateId", id.CertificateID)
	}
	return id, nil
}

func (a *Agent) provisioner(st *store.Store, rootCA []byte) (*provision.Provisioner, error) {
	cfg := a.o.Config
	pc := cfg.Provisioning
	serial, err := provision.ReadSerial(pc.Serial, pc.SerialFiles, pc.SerialPattern)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return provision.New(provision.Options{
		Store: st, Address: cfg.Address(), ServerName: cfg.Endpoint, ALPN: cfg.ALPN, RootCAPEM: rootCA,
		ClaimCertFile: pc.ClaimCertFile, ClaimKeyFile: pc.ClaimKeyFile, TemplateName: pc.TemplateName,
		Serial: serial, KeyAlgorithm: devkey.Algorithm(pc.KeyAlgorithm),
		ResponseTimeout: pc.ResponseTimeout.D(), ConnectTimeout: cfg.MQTT.ConnectTimeout.D(),
		Retry:    backoff.Policy{Initial: pc.RetryMin.D(), Max: pc.RetryMax.D()},
		Denied:   backoff.Policy{Initial: pc.DeniedBackoffStart(), Max: pc.DeniedBackoff.D()},
		TokenTTL: pc.TokenTTL.D(),
		Logger:   a.log,
	})
}

// identityTLS loads the current identity from the store on every connect
// attempt, so a rotated certificate (identity.json switched atomically by
// the rotation feature) is used after Conn.Reconnect.
func identityTLS(st *store.Store, rootCA []byte, serverName string, alpn bool) mqttconn.TLSConfigFunc {
	return func() (*tls.Config, error) {
		id, found, err := st.Identity()
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, errors.New("no device identity")
		}
		cert, err := st.TLSCertificate(id)
		if err != nil {
			return nil, err
		}
		return mqttconn.NewTLSConfig(rootCA, cert, serverName, alpn)
	}
}

// Status is the payload the agent publishes on dt/fleet/<thing>/status
// after every (re)connect.
type Status struct {
	ThingName   string    `json:"thingName"`
	Version     string    `json:"version"`
	StartedAt   time.Time `json:"startedAt"`
	ConnectedAt time.Time `json:"connectedAt"`
	Connections int64     `json:"connections"`
}

func (a *Agent) publishStatus(ctx context.Context, rt *Runtime, started time.Time) {
	payload, err := json.Marshal(Status{
		ThingName: rt.Identity.ThingName, Version: a.o.Version, StartedAt: started,
		ConnectedAt: time.Now().UTC(), Connections: rt.Conn.Connections(),
	})
	if err != nil {
		return
	}
	if err := rt.Conn.Publish(ctx, protocol.DataTopic(rt.Identity.ThingName, protocol.KindStatus), 1, payload); err != nil && ctx.Err() == nil {
		rt.Logger.Warn("status publish failed", "err", err)
	}
}

// startWatchdog pings the systemd watchdog at half of its interval until
// the returned stop function is called.
func (a *Agent) startWatchdog(ctx context.Context) (stop func()) {
	interval, err := a.o.WatchdogInterval()
	if err != nil {
		a.log.Warn("systemd watchdog setting unreadable", "err", err)
	}
	if interval <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		for {
			a.notify(daemon.SdNotifyWatchdog)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}
