// Package core assembles the local IoT Core: the CA, the registry, the
// policies and provisioning template the stack declares, the MQTT broker
// with policy enforcement, fleet provisioning, Jobs, the Device Shadow
// service and fault injection.
// Tests embed it with Start; the fleet-sim command serves it.
package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/policy"
	"github.com/iot-fleet/iot-fleet/internal/provtemplate"
	devreg "github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/preprovision"
	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/iot-fleet/iot-fleet/sim/broker"
	"github.com/iot-fleet/iot-fleet/sim/ca"
	"github.com/iot-fleet/iot-fleet/sim/controlplane"
	"github.com/iot-fleet/iot-fleet/sim/faults"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
	"github.com/iot-fleet/iot-fleet/sim/provisioning"
	"github.com/iot-fleet/iot-fleet/sim/registry"
	"github.com/iot-fleet/iot-fleet/sim/rules"
	"github.com/iot-fleet/iot-fleet/sim/shadow"
)

// Simulated account coordinates.
const (
	Partition = "aws"
	Region    = "local-1"
	AccountID = "000000000000"
)

// Options configure the local IoT Core. The zero value serves env "dev" on
// 127.0.0.1 with a free port.
type Options struct {
	// Env is the stack environment ("dev" or "prod"); names follow it.
	Env string
	// Addr is the MQTT/TLS listen address; default 127.0.0.1:0.
	Addr string
	// ALPNAddr, when set, also serves MQTT/TLS to clients that negotiate
	// ALPN x-amzn-mqtt-ca, as AWS IoT Core does on port 443.
	ALPNAddr string
	Logger   *slog.Logger
	// PreProvisioningHook overrides the pre-provisioning hook. By default
	// RegisterThing calls the stack's real hook (lambdas/preprovision)
	// backed by an in-memory device registry (internal/registry) holding
	// AllowedSerials in state "allowed" (see DeviceRegistry), retiring a
	// re-provisioned device's previous certificate through the local IoT
	// control plane (see IoT).
	PreProvisioningHook provisioning.Hook
	// AllowedSerials are the serials on the allowlist (none: every
	// device is denied by the default hook).
	AllowedSerials []string
	// SerialPattern is the hook's serial pattern; default
	// allowlist.DefaultSerialPattern.
	SerialPattern string
	// JobMinute is how long a Jobs "minute" lasts (step and in-progress
	// timeouts); default time.Minute. Tests shorten it.
	JobMinute time.Duration
	// TokenTTL is the certificateOwnershipToken lifetime; default 1h.
	TokenTTL time.Duration
	// DeviceCertValidity limits issued certificates' lifetime; default
	// until 2049 like AWS.
	DeviceCertValidity time.Duration
	// Now is the clock for registry timestamps and token expiry.
	Now func() time.Time
	// ControlPlaneEndpoint is the URL the caller serves ControlPlaneHandler
	// on (e.g. http://127.0.0.1:PORT); GET /status advertises it as
	// controlPlaneEndpoint. Empty: not advertised.
	ControlPlaneEndpoint string
	// ServerNames are extra names (DNS names or IP addresses) the MQTT
	// server certificate carries besides 127.0.0.1, ::1 and localhost, for
	// clients that reach the broker under another name: the virtual
	// Raspberry Pi verifies it as iot.vm.internal (docs/virtual-pi.md).
	ServerNames []string
}

// Names are the resource names the stack declares for Env.
type Names struct {
	Env             string
	ThingGroup      string
	TemplateName    string
	ClaimPolicy     string
	DevicePolicy    string
	ThingNamePrefix string
	PolicyParams    policy.Params
}

// NamesFor returns the names of environment env.
func NamesFor(env string) Names {
	base := "iot-fleet-" + env
	return Names{
		Env: env, ThingGroup: base, TemplateName: base, ClaimPolicy: base + "-claim", DevicePolicy: base + "-device",
		ThingNamePrefix: env + "-",
		PolicyParams:    policy.Params{Partition: Partition, Region: Region, AccountID: AccountID, TemplateName: base},
	}
}

// Credentials are a certificate and its private key.
type Credentials struct {
	CertificateID string
	CertPEM       []byte
	KeyPEM        []byte
}

// Core is a running local IoT Core.
type Core struct {
	opts    Options
	names   Names
	log     *slog.Logger
	ca      *ca.CA
	reg     *registry.Registry
	iot     *awsiot.Client
	devices *devreg.Memory
	faults  *faults.Set
	prov    *provisioning.Service
	jobs    *jobs.Service
	broker  *broker.Broker
	rules   *rules.Engine
	shadows *shadow.Service
	watches watchers

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// Start builds and starts the local IoT Core. ctx bounds the background
// housekeeping; Close stops everything.
func Start(ctx context.Context, opts Options) (*Core, error) {
	if opts.Env == "" {
		opts.Env = "dev"
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = time.Hour
	}
	if err := checkServerNames(opts.ServerNames); err != nil {
		return nil, err
	}
	names := NamesFor(opts.Env)
	c := &Core{opts: opts, names: names, log: opts.Logger.With("component", "iot-core"), faults: faults.New()}

	var err error
	if c.ca, err = ca.New(ca.Options{Now: opts.Now, DeviceCertValidity: opts.DeviceCertValidity}); err != nil {
		return nil, err
	}
	c.reg = registry.New(opts.Now)
	c.iot = awsiot.New(c.reg, Partition, Region, AccountID)
	claimDoc, err := policy.Claim(names.PolicyParams)
	if err != nil {
		return nil, fmt.Errorf("core: claim policy: %w", err)
	}
	deviceDoc, err := policy.Device(names.PolicyParams)
	if err != nil {
		return nil, fmt.Errorf("core: device policy: %w", err)
	}
	if err := c.reg.CreatePolicy(names.ClaimPolicy, claimDoc); err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	if err := c.reg.CreatePolicy(names.DevicePolicy, deviceDoc); err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	if err := c.reg.CreateThingGroup(names.ThingGroup); err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	body, err := provtemplate.Body(provtemplate.Params{ThingNamePrefix: names.ThingNamePrefix, ThingGroup: names.ThingGroup, DevicePolicy: names.DevicePolicy})
	if err != nil {
		return nil, fmt.Errorf("core: template: %w", err)
	}
	if opts.SerialPattern == "" {
		opts.SerialPattern = allowlist.DefaultSerialPattern
	}
	pattern, err := allowlist.CompilePattern(opts.SerialPattern)
	if err != nil {
		return nil, fmt.Errorf("core: serial pattern: %w", err)
	}
	c.devices = devreg.NewMemory(devreg.WithClock(opts.Now))
	for _, serial := range opts.AllowedSerials {
		if err := c.devices.PutAllowed(ctx, serial); err != nil {
			return nil, fmt.Errorf("core: allow serial %q: %w", serial, err)
		}
	}
	realHook, err := preprovision.New(preprovision.Config{
		Registry: c.devices, IoT: c.iot, DevicePolicy: names.DevicePolicy,
		SerialPattern: pattern, ThingNamePrefix: names.ThingNamePrefix, Logger: opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("core: pre-provisioning hook: %w", err)
	}
	hook := opts.PreProvisioningHook
	if hook == nil {
		hook = realHook.Handle
	}
	c.prov, err = provisioning.New(provisioning.Options{
		CA: c.ca, Registry: c.reg, TemplateName: names.TemplateName,
		TemplateARN:  fmt.Sprintf("arn:%s:iot:%s:%s:provisioningtemplate/%s", Partition, Region, AccountID, names.TemplateName),
		TemplateBody: body, Hook: hook, Faults: c.faults, Now: opts.Now, TokenTTL: opts.TokenTTL, Logger: opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	c.jobs = jobs.New(jobs.Options{
		Registry: c.reg, Minute: opts.JobMinute, Now: opts.Now, Logger: opts.Logger,
		Publish: func(topic string, payload []byte) { c.broker.Publish(topic, payload) },
	})
	c.rules = rules.New(rules.Options{Now: opts.Now, Logger: opts.Logger})
	// Shadow answers go to every subscriber of their topic (as AWS
	// publishes them), each subject to its iot:Receive permission.
	c.shadows = shadow.New(shadow.Options{
		Now: opts.Now, Logger: opts.Logger,
		Publish: func(topic string, payload []byte) { c.broker.Publish(topic, payload) },
	})
	serverCert, err := c.ca.ServerCertificate(append([]string{"127.0.0.1", "::1", "localhost"}, opts.ServerNames...)...)
	if err != nil {
		return nil, err
	}
	c.broker, err = broker.New(broker.Options{
		Addr: opts.Addr, ALPNAddr: opts.ALPNAddr, ServerCert: serverCert, ClientCAs: c.ca.Pool(), Registry: c.reg,
		ARN: names.PolicyParams.ARN, Faults: c.faults, Logger: opts.Logger,
		Routes: c.withWatchers([]broker.Route{
			{Name: "provisioning", Match: c.prov.Match, Handle: func(ctx context.Context, r broker.Request) {
				if c.rejectInjected(r) {
					return
				}
				c.prov.Handle(ctx, r.ClientID, r.CertificateID, r.Topic, r.Payload, func(topic string, payload []byte) {
					if err := c.broker.Reply(r.ClientID, topic, payload, true); err != nil {
						c.log.Info("provisioning answer not delivered", "client", r.ClientID, "topic", topic, "error", err)
					}
				})
			}},
			{Name: "jobs", Match: c.jobs.Match, Handle: func(ctx context.Context, r broker.Request) {
				c.jobs.Handle(ctx, r.Topic, r.Payload, func(topic string, payload []byte) {
					if err := c.broker.Reply(r.ClientID, topic, payload, false); err != nil {
						c.log.Info("jobs answer not delivered", "client", r.ClientID, "topic", topic, "error", err)
					}
				})
			}},
			{Name: "shadow", Match: c.shadows.Match, Handle: func(ctx context.Context, r broker.Request) {
				c.shadows.Handle(ctx, r.Topic, r.Payload)
			}},
			// Topic rules see the message, which still goes to its
			// subscribers (see Rules).
			{Name: "rules", Match: c.rules.Match, Handle: func(_ context.Context, r broker.Request) {
				c.rules.Dispatch(rules.Message{Topic: r.Topic, ClientID: r.ClientID, Principal: r.CertificateID, Payload: r.Payload})
				c.broker.Publish(r.Topic, r.Payload)
			}},
		}),
	})
	if err != nil {
		c.jobs.Close()
		return nil, err
	}
	c.reg.Observe(func(ev registry.Event) {
		if (ev.Kind == registry.CertificateStatusChanged && ev.Status != registry.CertActive) || ev.Kind == registry.CertificateDeleted {
			if n := c.broker.DisconnectCertificate(ev.Certificate); n > 0 {
				c.log.Info("disconnected clients of deactivated certificate", "certificate", ev.Certificate, "clients", n)
			}
		}
	})
	if err := c.broker.Start(); err != nil {
		c.jobs.Close()
		return nil, err
	}
	hctx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	c.wg.Add(1)
	go c.housekeeping(hctx)
	c.log.Info("local IoT Core started", "endpoint", c.Endpoint(), "env", opts.Env)
	return c, nil
}

// checkServerNames refuses a server name a certificate cannot carry (an
// operator's typo would otherwise only show as a TLS failure on the
// device).
func checkServerNames(names []string) error {
	for _, n := range names {
		if net.ParseIP(n) != nil {
			continue
		}
		if !validDNSName(n) {
			return fmt.Errorf("core: server name %q: want a DNS name (letters, digits, '-', dot-separated labels of at most 63 characters) or an IP address", n)
		}
	}
	return nil
}

func validDNSName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

func (c *Core) housekeeping(ctx context.Context) {
	defer c.wg.Done()
	every := max(c.opts.TokenTTL/4, time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if ids := c.prov.CleanupExpired(); len(ids) > 0 {
				c.log.Info("deleted unclaimed certificates", "count", len(ids))
			}
		}
	}
}

// Close stops the broker and services.
func (c *Core) Close() error {
	c.once.Do(func() {
		c.cancel()
		c.wg.Wait()
		_ = c.broker.Close()
		c.rules.Close()
		c.jobs.Close()
	})
	return nil
}

// Endpoint is the MQTT/TLS host:port.
func (c *Core) Endpoint() string { return c.broker.Addr() }

// ALPNEndpoint is host:port of the listener that requires ALPN
// x-amzn-mqtt-ca (Options.ALPNAddr; "" without one).
func (c *Core) ALPNEndpoint() string { return c.broker.ALPNAddr() }

// RootCAPEM is the CA certificate clients must trust (it also signs
// device certificates).
func (c *Core) RootCAPEM() []byte { return c.ca.CertPEM() }

// Names returns the resource names in force.
func (c *Core) Names() Names { return c.names }

// Registry is the IoT registry.
func (c *Core) Registry() *registry.Registry { return c.reg }

// IoT is the IoT control plane (the aws-sdk-go-v2 *iot.Client calls the
// Lambdas make) over Registry.
func (c *Core) IoT() *awsiot.Client { return c.iot }

// ControlPlaneHandler serves AWS IoT's control-plane REST-JSON API (the
// AWS CLI's and SDKs' iot client) from IoT; see sim/controlplane.
func (c *Core) ControlPlaneHandler() http.Handler {
	return controlplane.New(c.iot, awsiot.NewJobs(c.jobs, c.iot), c.Endpoint, c.log.With("component", "control-plane"))
}

// Jobs is the Jobs service.
func (c *Core) Jobs() *jobs.Service { return c.jobs }

// Shadows is the Device Shadow service (named and classic shadows).
func (c *Core) Shadows() *shadow.Service { return c.shadows }

// Provisioning is the fleet provisioning service.
func (c *Core) Provisioning() *provisioning.Service { return c.prov }

// DeviceRegistry is the device registry (serial → state) the default
// pre-provisioning hook reads and updates; tests add or revoke serials
// on it as the allowlist sync Lambda would.
func (c *Core) DeviceRegistry() *devreg.Memory { return c.devices }

// Rules is the rules engine: topic rules added to it see every message a
// client publishes on a topic their statement selects (with clientid() and
// principal() from the connection) and run their action in the
// background; the message is delivered to its subscribers as well.
func (c *Core) Rules() *rules.Engine { return c.rules }

// CA is the certificate authority that signs device certificates (and
// the broker's), for services that issue certificates.
func (c *Core) CA() *ca.CA { return c.ca }

// Faults is the live fault configuration.
func (c *Core) Faults() *faults.Set { return c.faults }

// SetPreProvisioningHook replaces the pre-provisioning hook.
func (c *Core) SetPreProvisioningHook(h provisioning.Hook) { c.prov.SetHook(h) }

// IssueClaimCertificate mints a provisioning claim certificate with the
// claim policy attached.
func (c *Core) IssueClaimCertificate() (Credentials, error) {
	iss, key, err := c.ca.NewKeyAndCertificate()
	if err != nil {
		return Credentials{}, err
	}
	if err := c.reg.RegisterCertificate(iss.ID, iss.PEM, registry.CertActive, iss.Cert.NotAfter); err != nil {
		return Credentials{}, fmt.Errorf("core: claim certificate: %w", err)
	}
	if err := c.reg.AttachPolicy(c.names.ClaimPolicy, iss.ID); err != nil {
		return Credentials{}, fmt.Errorf("core: claim certificate: %w", err)
	}
	return Credentials{CertificateID: iss.ID, CertPEM: []byte(iss.PEM), KeyPEM: key}, nil
}

// RegisterDevice creates, without MQTT, what provisioning serial would:
// the thing in the fleet group, an ACTIVE certificate with the device
// policy attached to it. Tests use it to set up device identities.
func (c *Core) RegisterDevice(serial string) (thingName string, creds Credentials, err error) {
	thingName = c.names.ThingNamePrefix + serial
	iss, key, err := c.ca.NewKeyAndCertificate()
	if err != nil {
		return "", Credentials{}, err
	}
	steps := []func() error{
		func() error {
			return c.reg.RegisterCertificate(iss.ID, iss.PEM, registry.CertActive, iss.Cert.NotAfter)
		},
		func() error {
			_, err := c.reg.CreateThing(thingName, map[string]string{"serial": serial})
			return err
		},
		func() error { return c.reg.AttachPolicy(c.names.DevicePolicy, iss.ID) },
		func() error { return c.reg.AttachThingPrincipal(thingName, iss.ID) },
		func() error { return c.reg.AddThingToGroup(thingName, c.names.ThingGroup) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return "", Credentials{}, fmt.Errorf("core: register device %s: %w", serial, err)
		}
	}
	return thingName, Credentials{CertificateID: iss.ID, CertPEM: []byte(iss.PEM), KeyPEM: key}, nil
}

// CreateJob creates a job (see jobs.CreateJobInput).
func (c *Core) CreateJob(ctx context.Context, in jobs.CreateJobInput) (jobs.Job, error) {
	return c.jobs.CreateJob(ctx, in)
}

// WaitForExecutions waits until every execution of jobID is terminal.
func (c *Core) WaitForExecutions(ctx context.Context, jobID string) ([]jobs.Execution, error) {
	return c.jobs.WaitForExecutions(ctx, jobID)
}

// Revoke marks a certificate REVOKED; its connections are closed and it
// can no longer connect.
func (c *Core) Revoke(certificateID string) error {
	return c.reg.SetCertificateStatus(certificateID, registry.CertRevoked)
}

// RevokeThing revokes every certificate attached to thing and returns
// their ids.
func (c *Core) RevokeThing(thing string) ([]string, error) {
	th, err := c.reg.Thing(thing)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, id := range th.Principals {
		errs = append(errs, c.Revoke(id))
	}
	return th.Principals, errors.Join(errs...)
}

// SetCertificateStatus sets ACTIVE, INACTIVE or REVOKED.
func (c *Core) SetCertificateStatus(certificateID string, status registry.CertStatus) error {
	return c.reg.SetCertificateStatus(certificateID, status)
}

// Clients lists connected clients.
func (c *Core) Clients() []broker.ClientInfo { return c.broker.Clients() }

// DisconnectClient drops a client's connection (fault injection).
func (c *Core) DisconnectClient(clientID string) bool { return c.broker.DisconnectClient(clientID) }

// ObserveConnects calls fn with every CONNECT the broker accepts or
// refuses, in order (see broker.ObserveConnects).
func (c *Core) ObserveConnects(fn func(broker.ConnectAttempt)) (stop func()) {
	return c.broker.ObserveConnects(fn)
}

// RestartBroker stops the broker and starts it again on the same port;
// registries, jobs and certificates survive, MQTT sessions do not.
func (c *Core) RestartBroker() error { return c.broker.Restart() }

// StopBroker stops the broker until StartBroker (an outage).
func (c *Core) StopBroker() { c.broker.Stop() }

// StartBroker starts a stopped broker on the same port.
func (c *Core) StartBroker() error { return c.broker.Start() }

// Publish sends a cloud-originated message (e.g. a cmd/ topic) to its
// subscribers, subject to their iot:Receive permission.
func (c *Core) Publish(topic string, payload []byte) { c.broker.Publish(topic, payload) }

// PublishQoS is Publish at QoS 0 or 1 (the data plane's Publish).
func (c *Core) PublishQoS(topic string, payload []byte, qos byte) {
	c.broker.PublishQoS(topic, payload, qos)
}

// BrokerStats counts the messages dropped at the connections' limits.
func (c *Core) BrokerStats() broker.Stats { return c.broker.Stats() }

// DialPipe opens an in-memory connection to the broker (TLS still
// applies), for simulating more devices than file descriptors allow.
func (c *Core) DialPipe(ctx context.Context) (net.Conn, error) { return c.broker.DialPipe(ctx) }
