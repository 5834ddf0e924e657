// Package agent wires the device agent together: state directory, identity
// (provisioning by claim on first start, and again after the broker refused
// the device certificate: see recovery.go), the supervised MQTT connection,
// the durable outbox, the features that plug into them (the jobs engine,
// OTA through it, certificate rotation, SSM), the supervision of their
// loops (supervisor.go) and the systemd protocol (READY once connected,
// WATCHDOG at half of WATCHDOG_USEC while every loop beats, STATUS with
// the connection and the current job step, STOPPING on shutdown).
package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
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

	sup       *Supervisor
	setStatus func(part, text string)
}

// Go runs fn as a supervised loop named name (see Supervisor): fn must
// call l.Beat on every turn and at least every l.Interval() while it
// waits, and l.Busy before a bounded blocking operation; it returns when
// ctx is done. If it returns (or panics) earlier, the agent exits
// non-zero. Every feature's long-running goroutine runs through Go.
func (rt *Runtime) Go(ctx context.Context, name string, fn func(ctx context.Context, l *Loop) error) {
	sup := rt.sup
	if sup == nil { // a Runtime not made by Agent.Run (tests)
		sup = NewSupervisor(time.Hour, nil)
	}
	l := sup.Register(name)
	sup.Go(ctx, l, func(ctx context.Context) error { return fn(ctx, l) })
}

// SetStatus sets what part (a feature's name) shows in systemd's STATUS=
// and in `fleet-agent status` (empty: nothing), e.g. the current job step.
func (rt *Runtime) SetStatus(part, text string) {
	if rt.setStatus != nil {
		rt.setStatus(part, text)
	}
}

// Feature is a part of the agent that plugs into the connection (the jobs
// engine; OTA, certificate rotation and SSM later). Start registers
// subscriptions and hooks and may start goroutines bound to ctx, its
// long-running ones through Runtime.Go so that they are supervised; it
// must not block. Stop, if the feature implements Stopper, is called on
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
	// WATCHDOG_USEC. The agent pings at half of it while every loop beats.
	WatchdogInterval func() (time.Duration, error)
	// LoopTimeout is how long a supervised loop may go without a beat
	// (default: the watchdog timeout, WatchdogSec; 60s without one).
	LoopTimeout time.Duration
	// TestHook, if set, is called by every loop's Beat on the loop's
	// goroutine with the loop's name (tests kill or stall a loop there).
	TestHook func(loop string)
}

// stopGrace bounds the wait for the loops on shutdown (a hung loop does
// not return; systemd's TimeoutStopSec is 30s).
const stopGrace = 15 * time.Second

// Agent is the device agent.
type Agent struct {
	o   Options
	log *slog.Logger

	mu    sync.Mutex
	rt    *Runtime
	ready chan struct{}

	// Live state (RunStateFile, STATUS=), guarded by mu.
	phase    string
	thing    string
	conn     *mqttconn.Client
	parts    map[string]string
	changed  chan struct{}
	stopping bool
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
	return &Agent{o: o, log: o.Logger, ready: make(chan struct{}), phase: PhaseStarting,
		parts: map[string]string{}, changed: make(chan struct{}, 1)}, nil
}

func (a *Agent) update(fn func()) {
	a.mu.Lock()
	fn()
	a.mu.Unlock()
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *Agent) setPhase(phase string) { a.update(func() { a.phase = phase }) }

func (a *Agent) setPart(part, text string) {
	a.update(func() {
		if text == "" {
			delete(a.parts, part)
		} else {
			a.parts[part] = text
		}
	})
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
// done (SIGTERM), then shuts down cleanly. It returns an error (the agent
// exits non-zero, and systemd restarts it) when a supervised loop stopped
// or hung.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.o.Config
	a.log.Info("fleet-agent starting", "version", a.o.Version, "endpoint", cfg.Address(), "stateDir", cfg.StateDir)

	st, err := store.Open(cfg.StateDir)
	if err != nil {
		return err
	}
	wd, err := a.o.WatchdogInterval()
	if err != nil {
		a.log.Warn("systemd watchdog setting unreadable", "err", err)
		wd = 0
	}
	loopTimeout := a.o.LoopTimeout
	if loopTimeout <= 0 {
		loopTimeout = 60 * time.Second
		if wd > 0 {
			loopTimeout = wd
		}
	}
	sup := NewSupervisor(loopTimeout, a.o.TestHook)
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); a.watch(watchCtx, sup, st, wd) }()
	var stopping sync.Once
	notifyStopping := func() {
		stopping.Do(func() {
			a.update(func() { a.stopping = true })
			a.notify(daemon.SdNotifyStopping)
		})
	}
	var runErr error
	defer func() {
		notifyStopping()
		stopWatch()
		<-watchDone
		a.writeFinalState(st, sup, runErr)
	}()

	runErr = a.run(ctx, st, sup, notifyStopping)
	return runErr
}

func (a *Agent) run(ctx context.Context, st *store.Store, sup *Supervisor, notifyStopping func()) error {
	cfg := a.o.Config
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
		a.setPhase(PhaseProvisioning)
		err := sup.RunPhase(ctx, "provisioning", func(ctx context.Context, l *Loop) error {
			var err error
			id, err = a.provision(ctx, st, rootCA, l)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	case recovering:
		// A recovery was under way when the agent stopped: resume it
		// (it tries the current certificate first).
		a.setPhase(PhaseRecovering)
		var got store.Identity
		err := sup.RunPhase(ctx, "recovery", func(ctx context.Context, l *Loop) error {
			var err error
			got, err = a.recover(ctx, st, rootCA, id, l)
			return err
		})
		switch {
		case sup.Err() != nil:
			return sup.Err()
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
	a.update(func() { a.thing = id.ThingName })

	obLoop := sup.Register("outbox")
	ob, err := outbox.Open(st.Path(store.OutboxDir), outbox.Options{
		MaxMessages: cfg.Outbox.MaxMessages, MaxAttempts: cfg.Outbox.MaxAttempts,
		Retry:    backoff.Policy{Initial: cfg.MQTT.ReconnectMin.D(), Max: cfg.MQTT.ReconnectMax.D()},
		Logger:   log,
		Liveness: obLoop,
		AckWait:  2*cfg.MQTT.KeepAlive.D() + cfg.MQTT.ConnectTimeout.D(),
	})
	if err != nil {
		return err
	}
	det := newRefusalDetector(cfg.Provisioning.RecoverAfterRefusals, st, log)
	connLoop := sup.Register("connection")
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
		Liveness:       connLoop,
	})
	if err != nil {
		return err
	}
	a.update(func() { a.conn, a.phase = conn, PhaseRunning })
	rt := &Runtime{Identity: id, Store: st, Conn: conn, Outbox: ob, Config: cfg, Logger: log, sup: sup, setStatus: a.setPart}

	started := time.Now().UTC()
	conn.OnConnect(func(ctx context.Context) {
		a.update(func() {}) // the status file and STATUS= say so now
		a.publishStatus(ctx, rt, started)
	})

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var features []Feature
	stopFeatures := func() {
		for i := len(features) - 1; i >= 0; i-- {
			if s, ok := features[i].(Stopper); ok {
				s.Stop()
			}
		}
	}
	for _, mk := range a.o.Features {
		f, err := mk(rt)
		if err != nil {
			cancel()
			stopFeatures()
			return fmt.Errorf("agent: build feature: %w", err)
		}
		if err := f.Start(runCtx, rt); err != nil {
			cancel()
			stopFeatures()
			return fmt.Errorf("agent: start %s: %w", f.Name(), err)
		}
		log.Info("feature started", "feature", f.Name())
		features = append(features, f)
	}

	sup.Go(runCtx, obLoop, func(ctx context.Context) error { return ob.Run(ctx, conn) })
	sup.Go(runCtx, connLoop, func(ctx context.Context) error {
		return a.serve(ctx, st, rootCA, conn, det, id, log, connLoop)
	})
	readyDone := make(chan struct{})
	go func() {
		defer close(readyDone)
		if err := conn.WaitConnected(runCtx); err == nil {
			a.mu.Lock()
			a.rt = rt
			a.mu.Unlock()
			close(a.ready)
			a.notify(daemon.SdNotifyReady + "\nSTATUS=" + a.statusLine(nil))
			log.Info("fleet-agent ready")
		}
	}()

	var failure error
	select {
	case <-ctx.Done():
	case <-sup.Failed():
		failure = sup.Err()
		log.Error("fleet-agent failing: a supervised loop stopped", "err", failure)
	}
	log.Info("fleet-agent stopping")
	notifyStopping()
	cancel()
	<-readyDone
	if !sup.Wait(stopGrace) {
		// A hung loop never returns; Stop would wait for it too.
		log.Error("loops did not stop; exiting without them", "loops", sup.Overdue())
		return failure
	}
	stopFeatures()
	log.Info("fleet-agent stopped", "outboxPending", ob.Len())
	return failure
}

// serve keeps the connection up until ctx is done. When the broker keeps
// refusing the device certificate it stops the connection, recovers the
// identity (provision.Recover) and connects again with it. l is the
// connection's loop: conn.Run beats it, and a recovery announces each of
// its bounded waits on it.
func (a *Agent) serve(ctx context.Context, st *store.Store, rootCA []byte, conn *mqttconn.Client, det *refusalDetector, id store.Identity, log *slog.Logger, l *Loop) error {
	for {
		connCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = conn.Run(connCtx) }()
		select {
		case <-ctx.Done():
		case <-det.trigger:
		case <-done:
			stop()
			if ctx.Err() != nil {
				return nil
			}
			return errors.New("the MQTT connection loop exited")
		}
		stop()
		<-done
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("the broker keeps refusing the device certificate; checking it and recovering the identity by claim")
		a.setPhase(PhaseRecovering)
		got, err := a.recover(ctx, st, rootCA, id, l)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// Not a refusal or a denial (those are retried inside): a
			// problem on the device (serial unreadable, state directory
			// not writable). Wait long, then connect normally again.
			wait := a.o.Config.Provisioning.DeniedBackoff.D()
			log.Error("recovery failed; reconnecting with the current identity later", "err", err, "retryIn", wait)
			l.Busy(wait)
			if backoff.Sleep(ctx, wait) != nil {
				return nil
			}
			det.reset()
			a.setPhase(PhaseRunning)
			continue
		}
		if got.ThingName != id.ThingName {
			// Features subscribed with the old thing name: start over
			// (systemd restarts the agent).
			return fmt.Errorf("agent: the recovered identity is thing %q, not %q: restarting", got.ThingName, id.ThingName)
		}
		det.reset()
		a.setPhase(PhaseRunning)
	}
}

func (a *Agent) provision(ctx context.Context, st *store.Store, rootCA []byte, l *Loop) (store.Identity, error) {
	p, err := a.provisioner(st, rootCA, l)
	if err != nil {
		return store.Identity{}, err
	}
	return p.Run(ctx)
}

// recover runs provision.Recover for the identity cur.
func (a *Agent) recover(ctx context.Context, st *store.Store, rootCA []byte, cur store.Identity, l *Loop) (store.Identity, error) {
	p, err := a.provisioner(st, rootCA, l)
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

// provisioner builds the provisioner for a provisioning or recovery
// running on loop l (it announces each of its bounded waits there).
func (a *Agent) provisioner(st *store.Store, rootCA []byte, l *Loop) (*provision.Provisioner, error) {
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
		Liveness: l,
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

// statusPeriod bounds how late STATUS= and RunStateFile follow a change
// that nobody signals (a lost connection, a job step).
const statusPeriod = 5 * time.Second

// watch is the supervisor's eye: at half the watchdog interval (or a
// third of the loop timeout, or statusPeriod, if shorter) it pings the systemd watchdog if
// no loop is overdue, fails the agent when loops stay overdue for the hang
// limit (the watchdog interval; without a watchdog, the loop timeout), and
// keeps STATUS= and RunStateFile current.
func (a *Agent) watch(ctx context.Context, sup *Supervisor, st *store.Store, wd time.Duration) {
	period := min(sup.timeout/3, statusPeriod)
	hangLimit := sup.timeout
	if wd > 0 {
		period = min(period, wd/2)
		hangLimit = wd
	}
	t := time.NewTicker(period)
	defer t.Stop()
	pid := os.Getpid()
	pstart, err := procStart(pid)
	if err != nil {
		a.log.Warn("own process start time unreadable; fleet-agent status may not tell a reused pid", "err", err)
	}
	rs := RunState{PID: pid, ProcStart: pstart, Version: a.o.Version, StartedAt: time.Now().UTC()}
	var last RunState
	lastStatus := ""
	var unhealthySince time.Time
	for {
		over := sup.Overdue()
		switch {
		case len(over) == 0:
			if !unhealthySince.IsZero() {
				a.log.Info("every loop beats again; pinging the systemd watchdog")
				unhealthySince = time.Time{}
			}
			if wd > 0 {
				a.notify(daemon.SdNotifyWatchdog)
			}
		case unhealthySince.IsZero():
			unhealthySince = time.Now()
			a.log.Error("loops stopped beating; the systemd watchdog is no longer pinged", "loops", over)
		case time.Since(unhealthySince) >= hangLimit && !a.isStopping():
			sup.Fail(fmt.Errorf("%w: %s", errHung, strings.Join(over, ", ")))
		}
		if line := a.statusLine(sup.overdueNames()); line != lastStatus {
			lastStatus = line
			a.notify("STATUS=" + line)
		}
		a.fillRunState(&rs, sup)
		if !sameState(rs, last) {
			rs.UpdatedAt = time.Now().UTC()
			if err := st.WriteJSON(RunStateFile, rs); err != nil {
				a.log.Warn("cannot write the agent's status file", "file", RunStateFile, "err", err)
			} else {
				last = rs
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.changed:
		}
	}
}

func (a *Agent) isStopping() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopping
}

// fillRunState brings rs up to date (UpdatedAt aside).
func (a *Agent) fillRunState(rs *RunState, sup *Supervisor) {
	a.mu.Lock()
	rs.Phase, rs.ThingName, rs.Status = a.phase, a.thing, maps.Clone(a.parts)
	conn := a.conn
	a.mu.Unlock()
	if conn != nil {
		up := conn.IsConnected()
		if up != rs.Connected || (up && rs.ConnectedAt == nil) {
			now := time.Now().UTC()
			if up {
				rs.ConnectedAt = &now
			} else if rs.ConnectedAt != nil {
				rs.DisconnectedAt = &now
			}
		}
		rs.Connected, rs.Connections = up, conn.Connections()
	}
	rs.Loops = rs.Loops[:0]
	for _, l := range sup.States() {
		rs.Loops = append(rs.Loops, LoopHealth{Name: l.Name, Overdue: l.Overdue > 0})
	}
}

// statusLine is systemd's STATUS=: the phase or connection, each part's
// status (the current job step), and the loops that stopped beating.
func (a *Agent) statusLine(overdue []string) string {
	a.mu.Lock()
	phase, thing, conn, stopping := a.phase, a.thing, a.conn, a.stopping
	parts := maps.Clone(a.parts)
	a.mu.Unlock()
	var line []string
	switch {
	case stopping:
		line = append(line, "stopping")
	case phase == PhaseProvisioning:
		line = append(line, "provisioning by claim")
	case phase == PhaseRecovering:
		line = append(line, "recovering: the device certificate is refused")
	case conn != nil && conn.IsConnected():
		line = append(line, "connected as "+thing)
	case conn != nil:
		line = append(line, "disconnected, reconnecting as "+thing)
	default:
		line = append(line, phase)
	}
	for _, k := range slices.Sorted(maps.Keys(parts)) {
		line = append(line, k+": "+parts[k])
	}
	if len(overdue) > 0 {
		line = append(line, "UNHEALTHY, not beating: "+strings.Join(overdue, ", "))
	}
	return strings.Join(line, "; ")
}

// writeFinalState records how the agent ended in RunStateFile.
func (a *Agent) writeFinalState(st *store.Store, sup *Supervisor, runErr error) {
	var rs RunState
	if _, err := st.ReadJSON(RunStateFile, &rs); err != nil {
		rs = RunState{PID: os.Getpid()}
	}
	a.fillRunState(&rs, sup)
	rs.Connected = false
	rs.Phase = PhaseStopped
	if runErr != nil {
		rs.Phase, rs.Error = PhaseFailed, runErr.Error()
	}
	rs.UpdatedAt = time.Now().UTC()
	if err := st.WriteJSON(RunStateFile, rs); err != nil {
		a.log.Warn("cannot write the agent's status file", "file", RunStateFile, "err", err)
	}
}
