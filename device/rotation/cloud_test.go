package rotation_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/internal/testbroker"
	"github.com/iot-fleet/iot-fleet/device/rotation"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate/certrotatetest"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
)

const (
	serial = "10000000cafe0001"
	thing  = "dev-" + serial
	policy = "iot-fleet-dev-device"
	group  = "iot-fleet-dev"
)

// cloud is the cloud side of rotation around the test broker: the real
// rotation and scan Lambda handlers over a faithful fake AWS IoT whose
// certificates are mirrored into the broker (so the broker accepts or
// refuses connections as AWS IoT would), a topic rule that invokes the
// rotation handler with the rule's projection, and the registry.
type cloud struct {
	t    *testing.T
	ctx  context.Context
	b    *testbroker.Broker
	iot  *certrotatetest.IoT
	reg  *registry.Memory
	rot  *certrotate.Handler
	scan *certscan.Handler

	// refuseNew makes the broker refuse every certificate issued by
	// rotation (as if the new certificate did not work).
	refuseNew atomic.Bool
	// dropCerts loses every RotateCert message.
	dropCerts atomic.Bool

	provisioned func(certID string)

	mu      sync.Mutex
	results []certrotate.Result
	events  []certrotate.Event
}

func newCloud(t *testing.T) *cloud {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	c := &cloud{t: t, ctx: ctx, b: testbroker.Start(t, testbroker.Options{}), reg: registry.NewMemory()}
	c.iot = certrotatetest.New(policy, func(csr *x509.CertificateRequest) ([]byte, error) {
		pemCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})
		certPEM, _, err := c.b.PKI.SignCSR(pemCSR)
		return certPEM, err
	})
	var provisioned sync.Map // certificate ids issued by provisioning
	c.iot.OnChange(func(cert certrotatetest.Cert, th string) {
		if cert.Status == "" {
			c.b.DeleteCert(cert.ID)
			return
		}
		status := string(cert.Status)
		if _, orig := provisioned.Load(cert.ID); !orig && c.refuseNew.Load() {
			status = "INACTIVE"
		}
		c.b.SetCert(cert.ID, status, th)
	})
	c.iot.OnPublish(func(m certrotatetest.Message) {
		if c.dropCerts.Load() && strings.HasSuffix(m.Topic, "/"+protocol.KindRotateCert) {
			return
		}
		if err := c.b.Publish(m.Topic, m.Payload); err != nil {
			t.Logf("cloud publish %s: %v", m.Topic, err)
		}
	})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var err error
	c.rot, err = certrotate.New(certrotate.Config{IoT: c.iot, Data: c.iot, Registry: c.reg, DevicePolicy: policy,
		ThingNamePrefix: "dev-", RetryDelay: time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	c.scan, err = certscan.New(certscan.Config{IoT: c.iot, Data: c.iot, Registry: c.reg, ThingNamePrefix: "dev-", Logger: quiet})
	require.NoError(t, err)
	c.b.Serve(t, "dt/fleet/+/rotate/+", func(from, topic string, payload []byte) {
		ev, err := ruleEvent(topic, from, c.b.PrincipalOf(from), payload)
		if err != nil {
			t.Logf("rule: %v", err)
			return
		}
		// Lambda's asynchronous invocation retries a failed event.
		var res certrotate.Result
		for attempt := 0; attempt < 3; attempt++ {
			if res, err = c.rot.Handle(ctx, ev); err == nil {
				break
			}
		}
		c.mu.Lock()
		c.events = append(c.events, ev)
		c.results = append(c.results, res)
		c.mu.Unlock()
	})
	c.provisioned = func(id string) { provisioned.Store(id, true) }
	return c
}

// ruleEvent computes the topic rule's projection (certrotate.RuleSQL) of a
// message: the payload's rotation fields, topic(3) as thingName, topic(5)
// as kind, clientid() and principal().
func ruleEvent(topic, clientID, principal string, payload []byte) (certrotate.Event, error) {
	var fields struct {
		RotationID    string `json:"rotationId"`
		CSR           string `json:"csr"`
		CertificateID string `json:"certificateId"`
		Status        string `json:"status"`
		Reason        string `json:"reason"`
		Timestamp     int64  `json:"ts"`
	}
	if err := json.Unmarshal(payload, &fields); err != nil {
		return certrotate.Event{}, fmt.Errorf("payload of %s: %w", topic, err)
	}
	levels := strings.Split(topic, "/")
	if len(levels) != 5 {
		return certrotate.Event{}, fmt.Errorf("topic %s", topic)
	}
	return certrotate.Event{ThingName: levels[2], Kind: levels[4], ClientID: clientID, Principal: principal,
		RotationID: fields.RotationID, CSR: fields.CSR, CertificateID: fields.CertificateID,
		Status: fields.Status, Reason: fields.Reason, Timestamp: fields.Timestamp}, nil
}

// register records the provisioned device in the cloud as fleet
// provisioning and the hook leave it.
func (c *cloud) register(id store.Identity, st *store.Store) {
	c.t.Helper()
	certPEM, err := os.ReadFile(st.Path(id.CertFile))
	require.NoError(c.t, err)
	c.provisioned(id.CertificateID)
	require.Equal(c.t, id.CertificateID, c.iot.AddDevice(thing, group, policy, string(certPEM)))
	require.NoError(c.t, c.reg.PutAllowed(c.ctx, serial))
	_, err = c.reg.RecordProvisioned(c.ctx, serial, thing, registry.Certificate{ID: id.CertificateID, NotAfter: time.Now().Add(24 * time.Hour)})
	require.NoError(c.t, err)
}

// request asks the device to rotate, as an operator would.
func (c *cloud) request() string {
	c.t.Helper()
	rep, err := c.scan.Handle(c.ctx, certscan.Request{ThingName: thing})
	require.NoError(c.t, err)
	require.Contains(c.t, rep.Requested, thing)
	return rep.Requested[thing]
}

// waitFinished waits until the registry records the end of rotation id.
func (c *cloud) waitFinished(id string) registry.Device {
	c.t.Helper()
	var d registry.Device
	require.Eventually(c.t, func() bool {
		var err error
		d, err = c.reg.Get(c.ctx, serial)
		require.NoError(c.t, err)
		return d.LastRotationID == id && d.RotationID == ""
	}, 90*time.Second, 20*time.Millisecond, "rotation %s did not finish: %+v", id, d)
	return d
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
	host, port, err := net.SplitHostPort(c.b.Addr)
	require.NoError(t, err)
	cfg, err := config.Parse([]byte(`{
		"endpoint": "` + host + `", "port": ` + port + `,
		"rootCAFile": "` + c.b.CAFile + `", "stateDir": "` + filepath.Join(dir, "state") + `",
		"provisioning": {
			"claimCertFile": "` + c.b.Claim.CertFile + `", "claimKeyFile": "` + c.b.Claim.KeyFile + `",
			"templateName": "` + c.b.TemplateName() + `", "serialFiles": ["` + serialFile + `"],
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
	require.Eventually(c.t, func() bool { return c.b.PrincipalOf(thing) == id && c.lastAccepted() == id },
		30*time.Second, 20*time.Millisecond, "device not connected with %s", id)
}

// lastAccepted is the certificate of the device's last accepted connection.
func (c *cloud) lastAccepted() string {
	recs := c.b.Connects()
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].ClientID == thing && recs[i].Accepted {
			return recs[i].CertID
		}
	}
	return ""
}

func (c *cloud) outcomes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for i, r := range c.results {
		out = append(out, c.events[i].Kind+":"+r.Outcome)
	}
	return out
}
