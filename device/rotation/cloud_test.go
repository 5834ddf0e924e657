package rotation_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/device/rotation"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/sim/broker"
	"github.com/iot-fleet/iot-fleet/sim/core"
	"github.com/iot-fleet/iot-fleet/sim/faults"
	simregistry "github.com/iot-fleet/iot-fleet/sim/registry"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

const (
	serial = "10000000cafe0001"
	thing  = "dev-" + serial
)

// cloud is the cloud side of rotation: the local IoT Core with the
// stack's real Lambdas (sim/stack), as in AWS: the topic rule invokes the
// rotation Lambda, the scan Lambda asks devices to rotate, both reach the
// control plane with their real AWS SDK client, and the device provisions
// by claim through the real hook (its serial is on the allowlist).
type cloud struct {
	t     *testing.T
	ctx   context.Context
	s     *stack.Stack
	claim core.Credentials
	dir   string // root CA and claim files

	// refuseNew makes every certificate issued by rotation unusable (as
	// if the new certificate did not work).
	refuseNew atomic.Bool
	// statusAtUpdate records a certificate's status after each
	// UpdateCertificate of it.
	mu             sync.Mutex
	statusAtUpdate map[string][]string
	// attempts are the device's CONNECTs, in order (under mu).
	attempts []connect
}

func newCloud(t *testing.T) *cloud {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	c := &cloud{t: t, ctx: ctx, dir: t.TempDir(), statusAtUpdate: map[string][]string{}}
	s, err := stack.Start(ctx, stack.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	c.s = s
	t.Cleanup(s.Core.ObserveConnects(func(a broker.ConnectAttempt) {
		if a.ClientID != thing {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.attempts = append(c.attempts, connect{CertID: a.CertificateID, Accepted: a.Accepted})
	}))
	_, err = s.DeployAllowlist(ctx, []byte(serial+"\n"))
	require.NoError(t, err)
	c.claim = devicetest.WriteClaimFiles(t, s.Core, c.dir)
	s.Rotation.OnIssue(func(id string) {
		if c.refuseNew.Load() {
			require.NoError(t, s.Core.SetCertificateStatus(id, simregistry.CertInactive))
		}
	})
	s.IoT.AfterEach(func(op, key string) {
		if op != "UpdateCertificate" {
			return
		}
		if cert, err := s.Core.Registry().Certificate(key); err == nil {
			c.mu.Lock()
			c.statusAtUpdate[key] = append(c.statusAtUpdate[key], string(cert.Status))
			c.mu.Unlock()
		}
	})
	return c
}

// dropCerts loses every RotateCert message to the device (a fault rule of
// the local IoT Core).
func (c *cloud) dropCerts() {
	c.t.Helper()
	_, err := c.s.Core.Faults().Add(faults.Rule{Topic: protocol.CommandTopic(thing, protocol.KindRotateCert), Direction: faults.Outbound, Drop: true})
	require.NoError(c.t, err)
}

// request asks the device to rotate, as an operator would.
func (c *cloud) request() string {
	c.t.Helper()
	rep, err := c.s.RequestRotation(c.ctx, certscan.Request{ThingName: thing})
	require.NoError(c.t, err)
	require.Contains(c.t, rep.Requested, thing)
	return rep.Requested[thing]
}

// waitFinished waits until the registry records the end of rotation id.
func (c *cloud) waitFinished(id string) registry.Device {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, 90*time.Second)
	defer cancel()
	d, err := c.s.WaitRotation(ctx, serial, id)
	require.NoError(c.t, err)
	return d
}

// deviceCerts returns the ids of the certificates the local IoT Core
// holds besides the claim certificate.
func (c *cloud) deviceCerts() []string {
	var ids []string
	for _, cert := range c.s.Core.Registry().Certificates() {
		if cert.ID != c.claim.CertificateID {
			ids = append(ids, cert.ID)
		}
	}
	return ids
}

// settled waits until the rotation Lambda has retired the certificates it
// retires after recording the outcome (it writes the registry first):
// the device's only certificate is then id, attached to its thing.
func (c *cloud) settled(id string) {
	c.t.Helper()
	require.Eventually(c.t, func() bool {
		return slices.Equal(c.deviceCerts(), []string{id}) && slices.Equal(c.principals(), []string{id})
	}, 30*time.Second, 20*time.Millisecond, "the cloud keeps only %s: certificates %v, principals %v", id, c.deviceCerts(), c.principals())
}

// cert returns certificate id (false: it does not exist).
func (c *cloud) cert(id string) (simregistry.Certificate, bool) {
	cert, err := c.s.Core.Registry().Certificate(id)
	return cert, err == nil
}

// principals returns the certificates attached to the device's thing.
func (c *cloud) principals() []string {
	th, err := c.s.Core.Registry().Thing(thing)
	if err != nil {
		return nil
	}
	return th.Principals
}

// connects returns the device's connection attempts, as the local IoT
// Core's broker decided them: the certificate of each, and whether it was
// accepted.
func (c *cloud) connects() []connect {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.attempts)
}

type connect struct {
	CertID   string
	Accepted bool
}

// device runs agents for one state directory.
type device struct {
	t   *testing.T
	cfg config.Config
	c   *cloud
}

func newDevice(t *testing.T, c *cloud) *device {
	t.Helper()
	dir := t.TempDir()
	serialFile := filepath.Join(dir, "serial-number")
	require.NoError(t, os.WriteFile(serialFile, []byte(serial), 0o444))
	host, port, err := net.SplitHostPort(c.s.Core.Endpoint())
	require.NoError(t, err)
	cfg, err := config.Parse([]byte(`{
		"endpoint": "` + host + `", "port": ` + port + `,
		"rootCAFile": "` + filepath.Join(c.dir, "root-ca.pem") + `", "stateDir": "` + filepath.Join(dir, "state") + `",
		"provisioning": {
			"claimCertFile": "` + filepath.Join(c.dir, "claim.pem") + `", "claimKeyFile": "` + filepath.Join(c.dir, "claim.key") + `",
			"templateName": "` + c.s.Core.Names().TemplateName + `", "serialFiles": ["` + serialFile + `"],
			"responseTimeout": "5s", "retryMin": "5ms", "retryMax": "50ms", "deniedBackoff": "1s"
		},
		"mqtt": {"reconnectMin": "10ms", "reconnectMax": "100ms", "connectTimeout": "5s"}
	}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	return &device{t: t, cfg: cfg, c: c}
}

// running is one agent process (in-process).
type running struct {
	a    *agent.Agent
	stop func()
}

// start runs an agent with the rotation feature until stop (or the test's
// end). It waits until the agent is ready only when wait is set.
func (d *device) start(rc rotation.Config, wait bool) *running {
	d.t.Helper()
	a, err := agent.New(agent.Options{
		Config: d.cfg, Version: "test", Features: []agent.FeatureFactory{rotation.Feature(rc)},
		Notify: func(string) error { return nil }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		WatchdogInterval: func() (time.Duration, error) { return 0, nil },
	})
	require.NoError(d.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				require.NoError(d.t, err)
			case <-time.After(30 * time.Second):
				d.t.Error("agent did not stop")
			}
		})
	}
	d.t.Cleanup(stop)
	if wait {
		select {
		case <-a.Ready():
		case err := <-errc:
			d.t.Fatalf("agent stopped before ready: %v", err)
		case <-time.After(60 * time.Second):
			d.t.Fatal("agent not ready")
		}
	}
	return &running{a: a, stop: stop}
}

func (d *device) store() *store.Store {
	d.t.Helper()
	st, err := store.Open(d.cfg.StateDir)
	require.NoError(d.t, err)
	return st
}

func (d *device) identity() store.Identity {
	d.t.Helper()
	id, found, err := d.store().Identity()
	require.NoError(d.t, err)
	require.True(d.t, found)
	return id
}

func (d *device) state() rotation.State {
	d.t.Helper()
	var st rotation.State
	_, err := d.store().ReadJSON(rotation.StateFile, &st)
	require.NoError(d.t, err)
	return st
}

// waitIdle waits until the device finished rotation id.
func (d *device) waitIdle(id string) rotation.State {
	d.t.Helper()
	var st rotation.State
	require.Eventually(d.t, func() bool {
		st = d.state()
		return st.Step == rotation.StepIdle && st.LastID == id
	}, 90*time.Second, 20*time.Millisecond, "device did not finish rotation %s", id)
	return st
}

// connectedWith waits until the device is connected with certificate id.
func (c *cloud) connectedWith(id string) {
	c.t.Helper()
	require.Eventually(c.t, func() bool {
		for _, cl := range c.s.Core.Clients() {
			if cl.ClientID == thing && cl.CertificateID == id {
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "device not connected with %s", id)
}

// outcomes are the rotation Lambda's answers so far, as "kind:outcome".
func (c *cloud) outcomes() []string {
	var out []string
	for _, r := range c.s.Rotation.Records() {
		if r.Err == "" {
			out = append(out, r.Event.Kind+":"+r.Result.Outcome)
		}
	}
	return out
}
