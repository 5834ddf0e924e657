// Package ssm is the agent side of "AWS Systems Manager on demand"
// (docs/ssm.md): an agent feature that listens on cmd/fleet/<thing>/ssm.
//
// On "activate" it installs the SSM agent if its binary is missing (a
// configurable command), stops the service, registers it with the hybrid
// activation (`amazon-ssm-agent -register -code CODE -id ID -region REGION
// -y`), starts the service and reports "registered" with the managed
// instance id read from the agent's registration file. On "deactivate" it
// stops and disables the service, clears the registration and optionally
// uninstalls the agent. Every step reports on dt/fleet/<thing>/ssm/status
// through the outbox.
//
// The activation code is a secret: it is passed only in the argv of the
// register process, never logged (it is redacted from any command output
// or error text) and never written to disk; the persisted state
// (<stateDir>/ssm-state.json) holds the last request id and outcome only.
// A command with the request id already handled is not run again; its
// status is re-sent.
package ssm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// StateFile is the feature's file in the state directory.
const StateFile = "ssm-state.json"

// Redacted replaces the activation code in any text the feature emits.
const Redacted = "[REDACTED]"

// maxOutput bounds the command output kept for an error message.
const maxOutput = 2048

// State is what the feature persists (never the activation code).
type State struct {
	LastRequestID     string    `json:"lastRequestId,omitempty"`
	LastAction        string    `json:"lastAction,omitempty"`
	State             string    `json:"state,omitempty"`
	ActivationID      string    `json:"activationId,omitempty"`
	ManagedInstanceID string    `json:"managedInstanceId,omitempty"`
	Reason            string    `json:"reason,omitempty"`
	UpdatedAt         time.Time `json:"updatedAt"`
}

// Options configure a Handler.
type Options struct {
	Config    config.SSM
	ThingName string
	Publisher agent.Publisher
	Store     *store.Store
	Logger    *slog.Logger
	Now       func() time.Time
}

// Handler runs SSM commands for one device. Handle is not safe for
// concurrent use; the feature calls it from one goroutine.
type Handler struct {
	o     Options
	topic string
	mu    sync.Mutex
}

// New validates o.
func New(o Options) (*Handler, error) {
	if o.ThingName == "" || o.Publisher == nil || o.Store == nil {
		return nil, errors.New("ssm: ThingName, Publisher and Store are required")
	}
	if o.Config.AgentPath == "" || len(o.Config.StartCommand) == 0 || len(o.Config.StopCommand) == 0 {
		return nil, errors.New("ssm: agentPath, startCommand and stopCommand are required")
	}
	if o.Config.CommandTimeout <= 0 {
		o.Config.CommandTimeout = config.Duration(10 * time.Minute)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Handler{o: o, topic: protocol.DataTopic(o.ThingName, protocol.KindSSMStatus)}, nil
}

// LoadState returns the persisted state (zero if none).
func (h *Handler) LoadState() (State, error) {
	var st State
	if _, err := h.o.Store.ReadJSON(StateFile, &st); err != nil {
		return State{}, fmt.Errorf("ssm: %w", err)
	}
	return st, nil
}

func (h *Handler) report(ctx context.Context, st protocol.SSMStatus) error {
	st.Timestamp = h.o.Now().Unix()
	payload, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("ssm: encode status: %w", err)
	}
	if err := h.o.Publisher.Publish(ctx, h.topic, payload); err != nil {
		return fmt.Errorf("ssm: queue status: %w", err)
	}
	return nil
}

// Handle runs one command message. It returns an error only when the
// outcome could not be persisted or reported; a failed command is reported
// as state "failed" with a reason.
func (h *Handler) Handle(ctx context.Context, payload []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var cmd protocol.SSMCommand
	if err := json.Unmarshal(payload, &cmd); err != nil {
		h.o.Logger.Warn("ssm command ignored: not JSON", "err", err.Error())
		return nil
	}
	// From here on nothing may carry the code unredacted.
	code := cmd.ActivationCode
	redact := func(s string) string {
		if code == "" {
			return s
		}
		return strings.ReplaceAll(s, code, Redacted)
	}
	log := h.o.Logger.With("requestId", cmd.RequestID, "action", cmd.Action, "activationId", cmd.ActivationID)
	if cmd.RequestID == "" {
		log.Warn("ssm command ignored: no requestId")
		return nil
	}
	st, err := h.LoadState()
	if err != nil {
		return err
	}
	if st.LastRequestID == cmd.RequestID {
		log.Info("ssm command already handled; status re-sent", "state", st.State)
		return h.report(ctx, protocol.SSMStatus{RequestID: st.LastRequestID, State: st.State, ManagedInstanceID: st.ManagedInstanceID, Reason: st.Reason})
	}
	log.Info("ssm command received")

	var res State
	switch cmd.Action {
	case protocol.SSMActivate:
		res = h.activate(ctx, cmd, st, log)
	case protocol.SSMDeactivate:
		res = h.deactivate(ctx, st, log)
	default:
		res = State{State: protocol.SSMStateFailed, Reason: fmt.Sprintf("unknown action %q", cmd.Action)}
	}
	res.Reason = redact(res.Reason)
	res.LastRequestID, res.LastAction, res.UpdatedAt = cmd.RequestID, cmd.Action, h.o.Now().UTC()
	if res.State == protocol.SSMStateFailed {
		log.Warn("ssm command failed", "reason", res.Reason)
	} else {
		log.Info("ssm command done", "state", res.State, "managedInstanceId", res.ManagedInstanceID)
	}
	if err := h.o.Store.WriteJSON(StateFile, res); err != nil {
		return fmt.Errorf("ssm: %w", err)
	}
	return h.report(ctx, protocol.SSMStatus{RequestID: cmd.RequestID, State: res.State, ManagedInstanceID: res.ManagedInstanceID, Reason: res.Reason})
}

func failed(format string, args ...any) State {
	return State{State: protocol.SSMStateFailed, Reason: fmt.Sprintf(format, args...)}
}

func (h *Handler) activate(ctx context.Context, cmd protocol.SSMCommand, prev State, log *slog.Logger) State {
	switch {
	case cmd.ActivationID == "" || cmd.ActivationCode == "" || cmd.Region == "":
		return failed("activate needs activationId, activationCode and region")
	case strings.HasPrefix(cmd.ActivationCode, "-") || strings.HasPrefix(cmd.ActivationID, "-") || strings.HasPrefix(cmd.Region, "-"):
		return failed("activate: activationId, activationCode and region must not start with '-'")
	case cmd.ExpiresAt != 0 && h.o.Now().Unix() >= cmd.ExpiresAt:
		return failed("activation %s expired at %s", cmd.ActivationID, time.Unix(cmd.ExpiresAt, 0).UTC().Format(time.RFC3339))
	}
	c := h.o.Config
	if err := h.report(ctx, protocol.SSMStatus{RequestID: cmd.RequestID, State: protocol.SSMStateInstalling}); err != nil {
		log.Warn("ssm progress not queued", "err", err)
	}
	if _, err := os.Stat(c.AgentPath); err != nil {
		if len(c.InstallCommand) == 0 {
			return failed("SSM agent %s missing and no installCommand configured", c.AgentPath)
		}
		log.Info("installing the SSM agent", "command", c.InstallCommand)
		if err := h.run(ctx, c.InstallCommand, ""); err != nil {
			return failed("install: %v", err)
		}
		if _, err := os.Stat(c.AgentPath); err != nil {
			return failed("install: %s still missing after installCommand", c.AgentPath)
		}
	}
	// The service must not run while the registration changes.
	if err := h.run(ctx, c.StopCommand, ""); err != nil {
		log.Info("stopping the SSM agent before registration failed (continuing)", "err", err)
	}
	register := []string{c.AgentPath, "-register", "-code", cmd.ActivationCode, "-id", cmd.ActivationID, "-region", cmd.Region, "-y"}
	if err := h.run(ctx, register, cmd.ActivationCode); err != nil {
		return failed("register: %v", err)
	}
	if err := h.run(ctx, c.StartCommand, ""); err != nil {
		return failed("start: %v", err)
	}
	return State{State: protocol.SSMStateRegistered, ActivationID: cmd.ActivationID, ManagedInstanceID: h.instanceID(log)}
}

// instanceID reads the managed instance id the agent stored
// ({"ManagedInstanceID": "mi-...", "Region": "..."}).
func (h *Handler) instanceID(log *slog.Logger) string {
	if h.o.Config.RegistrationFile == "" {
		return ""
	}
	data, err := os.ReadFile(h.o.Config.RegistrationFile)
	if err != nil {
		log.Info("SSM registration file unreadable", "err", err)
		return ""
	}
	var reg struct {
		ManagedInstanceID string `json:"ManagedInstanceID"`
	}
	if err := json.Unmarshal(data, &reg); err != nil {
		log.Info("SSM registration file malformed", "err", err)
		return ""
	}
	return reg.ManagedInstanceID
}

func (h *Handler) deactivate(ctx context.Context, prev State, log *slog.Logger) State {
	if prev.State == protocol.SSMStateDeactivated || (prev.State == "" && !h.agentPresent()) {
		log.Info("SSM already off; nothing to do")
		return State{State: protocol.SSMStateDeactivated}
	}
	c := h.o.Config
	var errs []string
	if err := h.run(ctx, c.StopCommand, ""); err != nil {
		errs = append(errs, "stop: "+err.Error())
	}
	if len(c.ClearCommand) > 0 && h.agentPresent() {
		if err := h.run(ctx, c.ClearCommand, ""); err != nil {
			errs = append(errs, "clear registration: "+err.Error())
		}
	}
	if len(c.UninstallCommand) > 0 && h.agentPresent() {
		if err := h.run(ctx, c.UninstallCommand, ""); err != nil {
			errs = append(errs, "uninstall: "+err.Error())
		}
	}
	if len(errs) > 0 {
		return failed("deactivate: %s", strings.Join(errs, "; "))
	}
	return State{State: protocol.SSMStateDeactivated}
}

func (h *Handler) agentPresent() bool {
	_, err := os.Stat(h.o.Config.AgentPath)
	return err == nil
}

// run executes argv with the command timeout. secret, if not empty, is
// redacted from the error (which includes the tail of the output).
func (h *Handler) run(ctx context.Context, argv []string, secret string) error {
	ctx, cancel := context.WithTimeout(ctx, h.o.Config.CommandTimeout.D())
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err == nil {
		return nil
	}
	text := strings.TrimSpace(out.String())
	if len(text) > maxOutput {
		text = "..." + text[len(text)-maxOutput:]
	}
	msg := fmt.Sprintf("%s: %v", argv[0], err)
	if text != "" {
		msg += ": " + text
	}
	if secret != "" {
		msg = strings.ReplaceAll(msg, secret, Redacted)
	}
	return errors.New(msg)
}

// Feature returns the agent feature; it reads the "ssm" section of the
// agent configuration.
func Feature() agent.FeatureFactory {
	return func(rt *agent.Runtime) (agent.Feature, error) {
		h, err := New(Options{
			Config: rt.Config.SSM, ThingName: rt.Identity.ThingName, Publisher: rt.Outbox,
			Store: rt.Store, Logger: rt.Logger.With("feature", "ssm"),
		})
		if err != nil {
			return nil, err
		}
		return &feature{h: h, queue: make(chan []byte, 16)}, nil
	}
}

type feature struct {
	h     *Handler
	queue chan []byte
	wg    sync.WaitGroup
}

func (f *feature) Name() string { return "ssm" }

// Start subscribes to the command topic. Commands run one at a time on the
// feature's goroutine (installing a package takes long; the connection's
// dispatch goroutine must not wait for it).
func (f *feature) Start(ctx context.Context, rt *agent.Runtime) error {
	topic := protocol.CommandTopic(rt.Identity.ThingName, protocol.KindSSM)
	err := rt.Conn.Subscribe(ctx, topic, 1, func(_ string, payload []byte) {
		select {
		case f.queue <- append([]byte(nil), payload...):
		case <-ctx.Done():
		}
	})
	if err != nil {
		return fmt.Errorf("ssm: subscribe %s: %w", topic, err)
	}
	// A command runs at most four commands (install, stop, register,
	// start), each bounded by commandTimeout plus the 5s kill delay: the
	// agent's supervisor allows that long without a beat (with a minute
	// for reporting).
	bound := 4*(f.h.o.Config.CommandTimeout.D()+5*time.Second) + time.Minute
	f.wg.Add(1)
	rt.Go(ctx, "ssm", func(ctx context.Context, l *agent.Loop) error {
		defer f.wg.Done()
		tick := time.NewTicker(l.Interval())
		defer tick.Stop()
		for {
			l.Beat()
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			case p := <-f.queue:
				l.Busy(bound)
				if err := f.h.Handle(ctx, p); err != nil && ctx.Err() == nil {
					rt.Logger.Error("ssm command not recorded", "err", err)
				}
			}
		}
	})
	return nil
}

// Stop waits for the running command (its context is already canceled).
func (f *feature) Stop() { f.wg.Wait() }
