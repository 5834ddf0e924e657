package core

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// benchDevice is a lightweight simulated device: one paho client that
// provisions by claim (CSR + RegisterThing over MQTT/TLS) and then runs
// jobs by start-next + update.
type benchDevice struct {
	serial string
	thing  string
	creds  Credentials
	client paho.Client
	done   atomic.Bool
}

func benchConnect(c *Core, creds Credentials, clientID string, pipe bool, onMsg paho.MessageHandler) (paho.Client, error) {
	cfg, err := tlsConfig(c.RootCAPEM(), creds)
	if err != nil {
		return nil, err
	}
	opts := paho.NewClientOptions().AddBroker("tls://" + c.Endpoint()).SetClientID(clientID).SetTLSConfig(cfg).
		SetCleanSession(true).SetAutoReconnect(false).SetKeepAlive(5 * time.Minute).SetConnectTimeout(60 * time.Second).
		SetWriteTimeout(60 * time.Second).SetOrderMatters(false).SetDefaultPublishHandler(onMsg)
	if pipe {
		opts.SetCustomOpenConnectionFn(func(_ *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			raw, err := c.DialPipe(ctx)
			if err != nil {
				return nil, err
			}
			conn := tls.Client(raw, cfg)
			if err := conn.HandshakeContext(ctx); err != nil {
				_ = raw.Close()
				return nil, err
			}
			return conn, nil
		})
	}
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(60 * time.Second) {
		return nil, errors.New("connect timeout")
	}
	return cl, tok.Error()
}

func waitTok(t paho.Token) error {
	if !t.WaitTimeout(60 * time.Second) {
		return errors.New("timeout")
	}
	return t.Error()
}

// provision runs the claim flow for d and leaves it connected with its
// own identity, subscribed to its jobs topics.
func (d *benchDevice) provision(tb testing.TB, c *Core, claim Credentials, pipe bool) error {
	tmpl := c.Names().TemplateName
	answers := make(chan paho.Message, 4)
	cl, err := benchConnect(c, claim, protocol.ClaimClientID(d.serial), pipe, func(_ paho.Client, m paho.Message) { answers <- m })
	if err != nil {
		return fmt.Errorf("claim connect: %w", err)
	}
	defer cl.Disconnect(0)
	if err := waitTok(cl.SubscribeMultiple(map[string]byte{protocol.CreateCertFromCSRTopic + "/+": 1, protocol.RegisterThingTopic(tmpl) + "/+": 1}, nil)); err != nil {
		return fmt.Errorf("claim subscribe: %w", err)
	}
	csr, key := newCSR(tb)
	b, _ := json.Marshal(protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csr})
	if err := waitTok(cl.Publish(protocol.CreateCertFromCSRTopic, 1, false, b)); err != nil {
		return fmt.Errorf("csr publish: %w", err)
	}
	recv := func() (paho.Message, error) {
		select {
		case m := <-answers:
			return m, nil
		case <-time.After(60 * time.Second):
			return nil, errors.New("no answer")
		}
	}
	m, err := recv()
	if err != nil || m.Topic() != protocol.CreateCertFromCSRAcceptedTopic {
		return fmt.Errorf("csr answer: %v %v", err, m)
	}
	var cert protocol.CreateCertResponse
	if err := json.Unmarshal(m.Payload(), &cert); err != nil {
		return err
	}
	b, _ = json.Marshal(protocol.RegisterThingRequest{CertificateOwnershipToken: cert.CertificateOwnershipToken, Parameters: map[string]string{protocol.ParamSerialNumber: d.serial}})
	if err := waitTok(cl.Publish(protocol.RegisterThingTopic(tmpl), 1, false, b)); err != nil {
		return fmt.Errorf("register publish: %w", err)
	}
	if m, err = recv(); err != nil || m.Topic() != protocol.RegisterThingAcceptedTopic(tmpl) {
		return fmt.Errorf("register answer: %v %s", err, m.Payload())
	}
	var reg protocol.RegisterThingResponse
	if err := json.Unmarshal(m.Payload(), &reg); err != nil {
		return err
	}
	cl.Disconnect(0)
	d.thing = reg.ThingName
	d.creds = Credentials{CertificateID: cert.CertificateID, CertPEM: []byte(cert.CertificatePEM), KeyPEM: keyPEM(tb, key)}

	d.client, err = benchConnect(c, d.creds, d.thing, pipe, d.onJobMessage)
	if err != nil {
		return fmt.Errorf("device connect: %w", err)
	}
	return waitTok(d.client.Subscribe("$aws/things/"+d.thing+"/jobs/#", 1, nil))
}

// onJobMessage: notify-next with an execution → start-next; start-next
// accepted with an execution → update SUCCEEDED with its version.
func (d *benchDevice) onJobMessage(cl paho.Client, m paho.Message) {
	var next protocol.NextJobMessage
	switch m.Topic() {
	case protocol.JobsNotifyNextTopic(d.thing):
		if json.Unmarshal(m.Payload(), &next) == nil && next.Execution != nil {
			cl.Publish(protocol.JobsStartNextTopic(d.thing), 1, false, []byte(`{}`))
		}
	case protocol.Accepted(protocol.JobsStartNextTopic(d.thing)):
		if json.Unmarshal(m.Payload(), &next) == nil && next.Execution != nil {
			b, _ := json.Marshal(protocol.UpdateJobRequest{Status: protocol.JobSucceeded, ExpectedVersion: next.Execution.VersionNumber})
			cl.Publish(protocol.JobsUpdateTopic(d.thing, next.Execution.JobID), 1, false, b)
		}
	case protocol.Accepted(protocol.JobsUpdateTopic(d.thing, "bench")):
		d.done.Store(true)
	}
}

func benchSizes() []int {
	sizes := []int{100, 1000}
	if v := os.Getenv("SIM_BENCH_DEVICES"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			sizes = []int{n}
		}
	}
	return sizes
}

// BenchmarkFleetProvisionAndJobFanOut provisions N devices over MQTT/TLS
// (CSR + RegisterThing through the pre-provisioning hook), keeps them
// connected, then creates one job for the fleet's thing group and waits
// until every execution SUCCEEDED. Metrics: provision_s, fanout_s.
// Sizes default to 100 and 1000; SIM_BENCH_DEVICES=10000 runs one size.
// Above 5000 devices connections use in-memory pipes (still TLS and
// MQTT) because two file descriptors per device exceed the usual limit.
func BenchmarkFleetProvisionAndJobFanOut(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			for range b.N {
				runFleet(b, n)
			}
		})
	}
}

func runFleet(b *testing.B, n int) {
	pipe := n > 5000
	serials := make([]string, n)
	for i := range serials {
		serials[i] = fmt.Sprintf("%016x", 0x1000000000000000+i)
	}
	c, err := Start(context.Background(), Options{AllowedSerials: serials})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	claim, err := c.IssueClaimCertificate()
	if err != nil {
		b.Fatal(err)
	}
	devs := make([]*benchDevice, n)
	for i := range devs {
		devs[i] = &benchDevice{serial: serials[i]}
	}
	defer func() {
		for _, d := range devs {
			if d.client != nil {
				d.client.Disconnect(0)
			}
		}
	}()

	workers := 128
	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan *benchDevice)
	var firstErr atomic.Value
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range work {
				if err := d.provision(b, c, claim, pipe); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", d.serial, err))
				}
			}
		}()
	}
	for _, d := range devs {
		work <- d
	}
	close(work)
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		b.Fatal(err)
	}
	provision := time.Since(start)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start = time.Now()
	if _, err := c.CreateJob(ctx, jobs.CreateJobInput{JobID: "bench", Document: json.RawMessage(`{"operation":"noop"}`), Groups: []string{c.Names().ThingGroup}}); err != nil {
		b.Fatal(err)
	}
	execs, err := c.WaitForExecutions(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	fanout := time.Since(start)
	for _, e := range execs {
		if e.Status != protocol.JobSucceeded {
			b.Fatalf("%s: %s", e.ThingName, e.Status)
		}
	}
	if len(execs) != n {
		b.Fatalf("%d executions, want %d", len(execs), n)
	}
	b.ReportMetric(provision.Seconds(), "provision_s")
	b.ReportMetric(fanout.Seconds(), "fanout_s")
	b.ReportMetric(0, "ns/op")
}
