package stack

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmexpire"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmregistered"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle/ssmfake"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

// SSMOptions configure SSM on demand in the local stack.
type SSMOptions struct {
	// ActivationTTL is the hybrid activations' lifetime (the stack's
	// ssmActivationExpiryHours); default ssmtoggle.DefaultActivationTTL.
	ActivationTTL time.Duration
	// Now is the clock of the fake Systems Manager, the SSM state and the
	// Lambdas; default time.Now.
	Now func() time.Time
}

// ManagedInstanceRoleName is the managed-instance role the Pulumi program
// declares for env (infra/components/ssm.go), passed to CreateActivation.
func ManagedInstanceRoleName(env string) string { return "iot-fleet-" + env + "-ssm-managed-instance" }

// SSM is the cloud side of SSM on demand (docs/ssm.md), wired as the
// Pulumi program wires it in AWS: the real toggle, registered and expiry
// Lambda handlers over a faithful fake of Systems Manager
// (lambdas/ssmtoggle/ssmfake), the local IoT Core's data plane (the
// toggle's Publish, with its real client, reaches the devices through the
// broker) and control plane (thing-group listing), and the SSM state kept
// in the device
// registry's items (internal/ssmstate, same serial keys).
type SSM struct {
	// Service is the fake Systems Manager: activations and managed
	// instances.
	Service *ssmfake.SSM
	// State is the SSM state of the registry's devices.
	State *ssmstate.Memory
	// Data is the IoT data plane the toggle publishes with.
	Data *DataPlane

	stack      *Stack
	toggle     *ssmtoggle.Handler
	registered *ssmregistered.Handler
	expire     *ssmexpire.Handler
	now        func() time.Time
}

func newSSM(s *Stack, opts SSMOptions, pattern *regexp.Regexp, log *slog.Logger) (*SSM, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	names := s.Core.Names()
	role := ManagedInstanceRoleName(names.Env)
	var err error
	m := &SSM{
		Service: ssmfake.NewSSM(now),
		State:   ssmstate.NewMemory(s.Registry, ssmstate.Clock(now)),
		Data:    newDataPlane(s),
		stack:   s,
		now:     now,
	}
	if m.toggle, err = ssmtoggle.New(ssmtoggle.Config{
		Registry: s.Registry, State: m.State, SSM: m.Service, IoT: s.IoTClient, Data: m.Data.Client,
		ManagedInstanceRole: role, Region: core.Region, Environment: names.Env,
		ThingNamePrefix: names.ThingNamePrefix, SerialPattern: pattern,
		ActivationTTL: opts.ActivationTTL, Now: now, Logger: log.With("lambda", "ssmtoggle"),
	}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	if m.registered, err = ssmregistered.New(ssmregistered.Config{
		Registry: s.Registry, State: m.State, SSM: m.Service, Environment: names.Env,
		ThingNamePrefix: names.ThingNamePrefix, Logger: log.With("lambda", "ssmregistered"),
	}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	if m.expire, err = ssmexpire.New(ssmexpire.Config{
		State: m.State, SSM: m.Service, ManagedInstanceRole: role, Environment: names.Env,
		ThingNamePrefix: names.ThingNamePrefix, Now: now, Logger: log.With("lambda", "ssmexpire"),
	}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	return m, nil
}

// Toggle invokes the toggle Lambda (payload as in docs/ssm.md).
func (m *SSM) Toggle(ctx context.Context, req ssmtoggle.Request) (ssmtoggle.Response, error) {
	return m.toggle.Handle(ctx, req)
}

// SSMToggle invokes the SSM toggle Lambda of the local stack.
func (s *Stack) SSMToggle(ctx context.Context, req ssmtoggle.Request) (ssmtoggle.Response, error) {
	return s.SSM.Toggle(ctx, req)
}

// Registration is what registering a managed instance produced.
type Registration struct {
	// InstanceID is the managed instance id (mi-...) Systems Manager
	// assigned; the device's amazon-ssm-agent stores it.
	InstanceID string
	// Event is the EventBridge event delivered to the registered Lambda.
	Event events.CloudWatchEvent
	// Outcome is the registered Lambda's answer.
	Outcome ssmregistered.Outcome
}

// Register does what AWS does when a device's amazon-ssm-agent registers
// with activationID and code (`amazon-ssm-agent -register -code ... -id
// ...`): Systems Manager checks the code, the expiry and the registration
// limit and creates the managed instance with the activation's tags, then
// EventBridge delivers "SSM Managed Instance Registration" to the
// registered Lambda (the rule's target), here synchronously. A refused
// registration (wrong code, expired, limit reached) is an error and
// delivers no event. The Lambda's own error (AWS would retry the async
// invocation) is returned with the Registration.
func (m *SSM) Register(ctx context.Context, activationID, code string) (Registration, error) {
	id, err := m.Service.Register(activationID, code)
	if err != nil {
		return Registration{}, fmt.Errorf("stack: ssm register: %w", err)
	}
	reg := Registration{InstanceID: id, Event: m.registrationEvent(id, activationID)}
	reg.Outcome, err = m.registered.Handle(ctx, reg.Event)
	if err != nil {
		return reg, fmt.Errorf("stack: ssm registered lambda: %w", err)
	}
	return reg, nil
}

// registrationEvent is the EventBridge event Systems Manager emits when a
// hybrid node registers (see lambdas/ssmregistered/testdata).
func (m *SSM) registrationEvent(instanceID, activationID string) events.CloudWatchEvent {
	detail, _ := json.Marshal(map[string]string{"instance-id": instanceID, "activation-id": activationID}) // strings only: cannot fail
	return events.CloudWatchEvent{
		Version:    "0",
		ID:         newEventID(),
		DetailType: ssmregistered.DetailTypeRegistration,
		Source:     ssmregistered.Source,
		AccountID:  core.AccountID,
		Time:       m.now().UTC().Truncate(time.Second),
		Region:     core.Region,
		Resources:  []string{fmt.Sprintf("arn:%s:ssm:%s:%s:managed-instance/%s", core.Partition, core.Region, core.AccountID, instanceID)},
		Detail:     detail,
	}
}

// newEventID returns a random UUID-shaped event id.
func newEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Sweep runs the scheduled expiry Lambda once (the hourly EventBridge
// Scheduler schedule in AWS).
func (m *SSM) Sweep(ctx context.Context) (ssmexpire.Summary, error) {
	return m.expire.Handle(ctx, json.RawMessage(`{}`))
}

// DataPlane is the in-sim Lambdas' IoT data plane: Client, a real
// aws-sdk-go-v2 *iotdataplane.Client against the stack's local AWS
// endpoint, which serves AWS IoT's data plane (LocalAWS: AWS's topic and
// QoS validation, then the broker at the QoS asked and the topic rules).
// Messages reads what the endpoint published; Redeliver delivers one
// again.
type DataPlane struct {
	// Client is the data-plane client the stack's Lambdas publish with.
	Client *iotdataplane.Client

	aws  *LocalAWS
	core *core.Core
}

func newDataPlane(s *Stack) *DataPlane {
	return &DataPlane{Client: newDataClient(s.AWS.URL), aws: s.AWS, core: s.Core}
}

// Message is one message the data plane published.
type Message struct {
	Topic   string
	Payload []byte
	QoS     int32
}

// Publish publishes with Client, as the Lambdas do.
func (d *DataPlane) Publish(ctx context.Context, in *iotdataplane.PublishInput, optFns ...func(*iotdataplane.Options)) (*iotdataplane.PublishOutput, error) {
	return d.Client.Publish(ctx, in, optFns...)
}

// Messages returns the messages the endpoint's data plane published so
// far (the Lambdas' and any other client's), in order.
func (d *DataPlane) Messages() []Message { return d.aws.published() }

// Redeliver publishes an already published message again (what QoS 1
// redelivery does after a lost PUBACK).
func (d *DataPlane) Redeliver(m Message) { d.core.PublishQoS(m.Topic, m.Payload, byte(m.QoS)) }

// StatusWatcher is an operator's MQTT client subscribed to every device's
// SSM status (dt/fleet/+/ssm/status), connected to the local IoT Core with
// its own certificate and an IoT policy allowing only that (the way an
// operator's monitoring client or a topic rule reads device data in AWS).
type StatusWatcher struct {
	client *mqttconn.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	changed chan struct{}
	seen    []ObservedStatus
}

// ObservedStatus is one SSM status message a device published.
type ObservedStatus struct {
	ThingName string
	Status    protocol.SSMStatus
}

// observerPolicy lets client id clientID subscribe to and receive the
// devices' SSM statuses, nothing else.
func observerPolicy(p policy.Params, clientID string) policy.Document {
	filter := protocol.DataTopic("+", protocol.KindSSMStatus)
	return policy.Document{Version: "2012-10-17", Statement: []policy.Statement{
		{Effect: "Allow", Action: []string{"iot:Connect"}, Resource: []string{p.ARN("client", clientID)}},
		{Effect: "Allow", Action: []string{"iot:Subscribe"}, Resource: []string{p.ARN("topicfilter", filter)}},
		{Effect: "Allow", Action: []string{"iot:Receive"}, Resource: []string{p.ARN("topic", protocol.DataTopic("*", protocol.KindSSMStatus))}},
	}}
}

// WatchSSMStatus connects a StatusWatcher; it stops when ctx ends or on
// Close.
func (s *Stack) WatchSSMStatus(ctx context.Context) (*StatusWatcher, error) {
	names := s.Core.Names()
	suffix := newEventID()[:8]
	clientID := "iot-fleet-" + names.Env + "-ssm-observer-" + suffix
	policyName := clientID
	creds, err := s.Core.IssueClaimCertificate()
	if err != nil {
		return nil, fmt.Errorf("stack: ssm watcher: %w", err)
	}
	reg := s.Core.Registry()
	if err := reg.DetachPolicy(names.ClaimPolicy, creds.CertificateID); err != nil {
		return nil, fmt.Errorf("stack: ssm watcher: %w", err)
	}
	if err := reg.CreatePolicy(policyName, observerPolicy(names.PolicyParams, clientID)); err != nil {
		return nil, fmt.Errorf("stack: ssm watcher: %w", err)
	}
	if err := reg.AttachPolicy(policyName, creds.CertificateID); err != nil {
		return nil, fmt.Errorf("stack: ssm watcher: %w", err)
	}
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("stack: ssm watcher: %w", err)
	}
	endpoint := s.Core.Endpoint()
	host := endpoint[:strings.LastIndex(endpoint, ":")]
	tlsCfg, err := mqttconn.NewTLSConfig(s.Core.RootCAPEM(), cert, host, false)
	if err != nil {
		return nil, fmt.Errorf("stack: ssm watcher: %w", err)
	}
	client, err := mqttconn.New(mqttconn.Options{
		Address: endpoint, ClientID: clientID, CleanSession: true,
		TLSConfig:      func() (*tls.Config, error) { return tlsCfg.Clone(), nil },
		ConnectTimeout: 5 * time.Second,
		Backoff:        backoff.Policy{Initial: 50 * time.Millisecond, Max: time.Second},
		Logger:         s.log.With("component", "ssm-watcher"),
	})
	if err != nil {
		return nil, fmt.Errorf("stack: ssm watcher: %w", err)
	}
	w := &StatusWatcher{client: client, done: make(chan struct{}), changed: make(chan struct{})}
	if err := client.Subscribe(ctx, protocol.DataTopic("+", protocol.KindSSMStatus), 1, w.receive); err != nil {
		return nil, fmt.Errorf("stack: ssm watcher: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.cancel = cancel
	stop := context.AfterFunc(ctx, cancel)
	go func() {
		defer close(w.done)
		defer stop()
		_ = client.Run(runCtx)
	}()
	if err := client.WaitConnected(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("stack: ssm watcher: %w", err)
	}
	return w, nil
}

func (w *StatusWatcher) receive(topic string, payload []byte) {
	parts := strings.Split(topic, "/")
	var st protocol.SSMStatus
	if len(parts) < 3 || json.Unmarshal(payload, &st) != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen = append(w.seen, ObservedStatus{ThingName: parts[2], Status: st})
	close(w.changed)
	w.changed = make(chan struct{})
}

// Statuses returns what thing reported so far, in arrival order.
func (w *StatusWatcher) Statuses(thing string) []protocol.SSMStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []protocol.SSMStatus
	for _, o := range w.seen {
		if o.ThingName == thing {
			out = append(out, o.Status)
		}
	}
	return out
}

// Wait returns the first status of thing (in arrival order) for which
// match is true, waiting for it until ctx ends.
func (w *StatusWatcher) Wait(ctx context.Context, thing string, match func(protocol.SSMStatus) bool) (protocol.SSMStatus, error) {
	for {
		w.mu.Lock()
		changed := w.changed
		for _, o := range w.seen {
			if o.ThingName == thing && match(o.Status) {
				w.mu.Unlock()
				return o.Status, nil
			}
		}
		w.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return protocol.SSMStatus{}, fmt.Errorf("waiting for an ssm status of %s: %w (seen: %+v)", thing, ctx.Err(), w.Statuses(thing))
		}
	}
}

// Close disconnects the watcher.
func (w *StatusWatcher) Close() {
	w.cancel()
	<-w.done
}
