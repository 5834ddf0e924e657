package core

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/broker"
	"github.com/iot-fleet/iot-fleet/sim/faults"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

const (
	allowedSerial = "10000000a1b2c3d4"
	deniedSerial  = "ffffffffffffffff"
)

func startCore(t testing.TB, opts Options) *Core {
	t.Helper()
	if opts.AllowedSerials == nil && opts.PreProvisioningHook == nil {
		opts.AllowedSerials = []string{allowedSerial, "10000000a1b2c3d5", "10000000a1b2c3d6"}
	}
	c, err := Start(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestProvisioningByClaimEndToEnd(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)

	creds, answer := provisionOverMQTT(t, c, claim, allowedSerial)
	require.Equal(t, protocol.RegisterThingAcceptedTopic("iot-fleet-dev"), answer.Topic, string(answer.Payload))
	resp := decode[protocol.RegisterThingResponse](t, answer)
	assert.Equal(t, "dev-"+allowedSerial, resp.ThingName)
	assert.Equal(t, "iot-fleet-dev", resp.DeviceConfiguration["thingGroup"])

	members, err := c.Registry().ThingsInGroup("iot-fleet-dev")
	require.NoError(t, err)
	assert.Equal(t, []string{"dev-" + allowedSerial}, members)
	cert, err := c.Registry().Certificate(creds.CertificateID)
	require.NoError(t, err)
	assert.Equal(t, registry.CertActive, cert.Status)
	assert.Equal(t, []string{"iot-fleet-dev-device"}, cert.Policies)
	// The real pre-provisioning hook recorded the admission.
	rec, err := c.DeviceRegistry().Get(context.Background(), allowedSerial)
	require.NoError(t, err)
	assert.Equal(t, creds.CertificateID, rec.CertificateID)
	assert.EqualValues(t, "provisioned", rec.State)

	// The new identity connects as its thing and uses its own topics.
	dev := mustConnect(t, c, creds, resp.ThingName)
	dev.mustSubscribe(protocol.JobsNotifyNextTopic(resp.ThingName), "cmd/fleet/"+resp.ThingName+"/#")
	dev.mustPublish(protocol.DataTopic(resp.ThingName, protocol.KindStatus), `{"version":"test"}`)
	c.Publish(protocol.CommandTopic(resp.ThingName, protocol.KindSSM), []byte(`{"on":true}`))
	m := dev.await(protocol.CommandTopic(resp.ThingName, protocol.KindSSM))
	assert.JSONEq(t, `{"on":true}`, string(m.Payload))

	// ... but only with its thing name as client id.
	requireClosedAfterConnect(t, c, creds, "dev-10000000a1b2c3d5", "another thing's client id")
	requireClosedAfterConnect(t, c, creds, "provision-"+allowedSerial, "device certificate has no claim policy")
}

func TestCertificateIsUnusableUntilRegisterThing(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	cl := mustConnect(t, c, claim, protocol.ClaimClientID(allowedSerial))
	cl.mustSubscribe(protocol.CreateCertFromCSRTopic + "/+")
	csr, key := newCSR(t)
	cl.mustPublish(protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csr})
	cert := decode[protocol.CreateCertResponse](t, cl.await(protocol.CreateCertFromCSRAcceptedTopic))
	creds := Credentials{CertificateID: cert.CertificateID, CertPEM: []byte(cert.CertificatePEM), KeyPEM: keyPEM(t, key)}
	requireClosedAfterConnect(t, c, creds, "dev-"+allowedSerial, "PENDING_ACTIVATION certificate must not connect")
}

func TestDeniedSerialIsRejectedWithAWSErrorShape(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	_, answer := provisionOverMQTT(t, c, claim, deniedSerial)
	require.Equal(t, protocol.RegisterThingRejectedTopic("iot-fleet-dev"), answer.Topic)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(answer.Payload, &raw))
	assert.EqualValues(t, 403, raw["statusCode"])
	assert.Equal(t, protocol.ErrCodeAccessDenied, raw["errorCode"])
	assert.NotEmpty(t, raw["errorMessage"])
	_, err = c.Registry().Thing("dev-" + deniedSerial)
	require.ErrorIs(t, err, registry.ErrNotFound)
}

func TestThrottledProvisioningOverMQTT(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	c.Faults().ThrottleProvisioning(1)
	cl := mustConnect(t, c, claim, protocol.ClaimClientID(allowedSerial))
	cl.mustSubscribe(protocol.CreateCertFromCSRTopic + "/+")
	csr, _ := newCSR(t)
	cl.mustPublish(protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csr})
	m := cl.next()
	require.Equal(t, protocol.CreateCertFromCSRRejectedTopic, m.Topic)
	e := decode[protocol.ErrorResponse](t, m)
	assert.Equal(t, protocol.ErrCodeThrottling, e.ErrorCode)
	assert.Equal(t, 429, e.StatusCode)
	cl.mustPublish(protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csr})
	assert.Equal(t, protocol.CreateCertFromCSRAcceptedTopic, cl.next().Topic, "retry succeeds")
}

func TestProvisioningAnswersGoOnlyToTheRequester(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	a := mustConnect(t, c, claim, protocol.ClaimClientID("a"))
	b := mustConnect(t, c, claim, protocol.ClaimClientID("b"))
	a.mustSubscribe(protocol.CreateCertFromCSRTopic + "/+")
	b.mustSubscribe(protocol.CreateCertFromCSRTopic + "/+")
	csrA, _ := newCSR(t)
	a.mustPublish(protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csrA})
	certA := decode[protocol.CreateCertResponse](t, a.await(protocol.CreateCertFromCSRAcceptedTopic))
	// b asks after a got its answer: if a's answer had reached b, it
	// would come first on b's connection.
	csrB, _ := newCSR(t)
	b.mustPublish(protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: csrB})
	certB := decode[protocol.CreateCertResponse](t, b.await(protocol.CreateCertFromCSRAcceptedTopic))
	assert.NotEqual(t, certA.CertificateID, certB.CertificateID)
}

func TestClaimCertificateIsLimitedToProvisioning(t *testing.T) {
	c := startCore(t, Options{})
	claim, err := c.IssueClaimCertificate()
	require.NoError(t, err)
	thing, _, err := c.RegisterDevice(allowedSerial)
	require.NoError(t, err)

	requireClosedAfterConnect(t, c, claim, thing, "claim policy only allows provision-* client ids")

	cl := mustConnect(t, c, claim, protocol.ClaimClientID("x"))
	require.Error(t, cl.subscribe(protocol.JobsNotifyNextTopic(thing)))
	cl.waitLost()

	cl = mustConnect(t, c, claim, protocol.ClaimClientID("y"))
	_ = cl.publish(protocol.DataTopic(thing, protocol.KindStatus), `{}`)
	require.Error(t, cl.waitLost(), "unauthorized publish closes the connection")

	cl = mustConnect(t, c, claim, protocol.ClaimClientID("z"))
	_ = cl.publish(protocol.CreateKeysAndCertTopic, ``)
	cl.waitLost()
}

func TestCrossDeviceAccessIsDenied(t *testing.T) {
	c := startCore(t, Options{})
	thingA, credsA, err := c.RegisterDevice("aaaaaaaaaaaaaaaa")
	require.NoError(t, err)
	thingB, credsB, err := c.RegisterDevice("bbbbbbbbbbbbbbbb")
	require.NoError(t, err)
	_, err = c.CreateJob(context.Background(), jobs.CreateJobInput{JobID: "j1", Document: json.RawMessage(`{"operation":"x"}`), Things: []string{thingB}})
	require.NoError(t, err)

	requireClosedAfterConnect(t, c, credsA, thingB, "A's certificate cannot connect as B")

	a := mustConnect(t, c, credsA, thingA)
	require.Error(t, a.subscribe(protocol.JobsNotifyNextTopic(thingB)))
	a.waitLost()

	a = mustConnect(t, c, credsA, thingA)
	require.Error(t, a.subscribe("cmd/fleet/+/ssm"))
	a.waitLost()

	a = mustConnect(t, c, credsA, thingA)
	_ = a.publish(protocol.JobsUpdateTopic(thingB, "j1"), protocol.UpdateJobRequest{Status: protocol.JobSucceeded})
	a.waitLost()
	e, err := c.Jobs().Execution("j1", thingB)
	require.NoError(t, err)
	assert.Equal(t, protocol.JobQueued, e.Status, "A's forged update had no effect")

	// B itself is fine, and A still works on its own topics.
	b := mustConnect(t, c, credsB, thingB)
	b.mustSubscribe(protocol.JobsNotifyNextTopic(thingB))
	a = mustConnect(t, c, credsA, thingA)
	a.mustSubscribe(protocol.JobsNotifyNextTopic(thingA), "cmd/fleet/"+thingA+"/#")
	a.mustPublish(protocol.DataTopic(thingA, protocol.KindStatus), `{}`)
}

func TestRevokedCertificateIsDisconnectedAndRefused(t *testing.T) {
	logs := &testenv.LogBuffer{}
	c := startCore(t, Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	var mu sync.Mutex
	var attempts []broker.ConnectAttempt
	stop := c.ObserveConnects(func(a broker.ConnectAttempt) {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, a)
	})
	defer stop()
	thing, creds, err := c.RegisterDevice(allowedSerial)
	require.NoError(t, err)
	dev := mustConnect(t, c, creds, thing)
	dev.mustSubscribe(protocol.JobsNotifyNextTopic(thing))

	revoked, err := c.RevokeThing(thing)
	require.NoError(t, err)
	assert.Equal(t, []string{creds.CertificateID}, revoked)
	dev.waitLost()
	requireClosedAfterConnect(t, c, creds, thing, "revoked certificate refused at connect")
	// One log line per refused connection (the raw CONNECT and the MQTT
	// client's): the e2e tests count them.
	assert.Equal(t, 2, logs.CountJSON("connect refused: certificate not active",
		map[string]string{"client": thing, "certificate": creds.CertificateID, "status": string(registry.CertRevoked)}))
	require.Error(t, c.SetCertificateStatus(creds.CertificateID, registry.CertActive), "revocation is final")
	mu.Lock()
	assert.Equal(t, []broker.ConnectAttempt{
		{ClientID: thing, CertificateID: creds.CertificateID, ThingName: thing, Accepted: true},
		{ClientID: thing, CertificateID: creds.CertificateID, Reason: "certificate " + creds.CertificateID + " is REVOKED"},
		{ClientID: thing, CertificateID: creds.CertificateID, Reason: "certificate " + creds.CertificateID + " is REVOKED"},
	}, attempts, "the observer sees each CONNECT, accepted or refused, with the reason")
	mu.Unlock()
	stop()

	thing2, creds2, err := c.RegisterDevice("10000000a1b2c3d5")
	require.NoError(t, err)
	require.NoError(t, c.SetCertificateStatus(creds2.CertificateID, registry.CertInactive))
	requireClosedAfterConnect(t, c, creds2, thing2, "inactive certificate refused")
	assert.Equal(t, 2, logs.CountJSON("connect refused: certificate not active",
		map[string]string{"client": thing2, "certificate": creds2.CertificateID, "status": string(registry.CertInactive)}))
	require.NoError(t, c.SetCertificateStatus(creds2.CertificateID, registry.CertActive))
	requireConnackAccepted(t, c, creds2, thing2)
	mustConnect(t, c, creds2, thing2)
}

// A refused CONNECT with a connected device's client id (a cloned or
// stolen identity that is not ACTIVE, or another device's certificate)
// does not take over the connected device's session.
func TestRefusedConnectDoesNotTakeOverTheSession(t *testing.T) {
	c := startCore(t, Options{})
	_, credsA, err := c.RegisterDevice("aaaaaaaaaaaaaaaa")
	require.NoError(t, err)
	thingB, credsB, err := c.RegisterDevice("bbbbbbbbbbbbbbbb")
	require.NoError(t, err)
	b := mustConnect(t, c, credsB, thingB)
	topic := protocol.CommandTopic(thingB, protocol.KindSSM)
	b.mustSubscribe(topic)

	requireClosedAfterConnect(t, c, credsA, thingB, "A's certificate as B")
	_, creds, err := c.RegisterDevice("bbbbbbbbbbbbbbbb") // a second certificate for B...
	require.NoError(t, err)
	require.NoError(t, c.SetCertificateStatus(creds.CertificateID, registry.CertInactive)) // ... not active
	requireClosedAfterConnect(t, c, creds, thingB, "B's inactive certificate")

	// B's connection and subscription are still the ones in use.
	c.Publish(topic, []byte(`{"still":"here"}`))
	assert.JSONEq(t, `{"still":"here"}`, string(b.await(topic).Payload))
	b.mustPublish(protocol.DataTopic(thingB, protocol.KindStatus), `{}`)
	assert.Equal(t, []string{thingB}, clientIDs(c.Clients()))
}

func clientIDs(cs []broker.ClientInfo) []string {
	var ids []string
	for _, ci := range cs {
		ids = append(ids, ci.ClientID)
	}
	return ids
}

func TestUnknownCertificateIsRefused(t *testing.T) {
	c := startCore(t, Options{})
	other := startCore(t, Options{})
	_, creds, err := other.RegisterDevice(allowedSerial)
	require.NoError(t, err)
	// Signed by another CA: the TLS handshake fails.
	_, err = connect(t, c, creds, "dev-"+allowedSerial)
	require.Error(t, err)
	// Signed by this CA but never registered: refused at CONNECT.
	iss, key, err := c.ca.NewKeyAndCertificate()
	require.NoError(t, err)
	requireClosedAfterConnect(t, c, Credentials{CertPEM: []byte(iss.PEM), KeyPEM: key}, "dev-"+allowedSerial, "unregistered certificate")
	// TLS below 1.2 is refused.
	cfg, err := tlsConfig(c.RootCAPEM(), Credentials{CertPEM: []byte(iss.PEM), KeyPEM: key})
	require.NoError(t, err)
	cfg.MaxVersion = tls.VersionTLS11
	conn, err := tls.Dial("tcp", c.Endpoint(), cfg)
	if err == nil {
		conn.Close()
	}
	require.Error(t, err)
}

// jobDevice is a scripted device speaking the Jobs MQTT API.
type jobDevice struct {
	*testClient
	thing string
}

func newJobDevice(t *testing.T, c *Core, serial string) *jobDevice {
	thing, creds, err := c.RegisterDevice(serial)
	require.NoError(t, err)
	d := &jobDevice{testClient: mustConnect(t, c, creds, thing), thing: thing}
	d.mustSubscribe("$aws/things/" + thing + "/jobs/#")
	return d
}

func TestJobExecutedByScriptedClientWithVersionConflicts(t *testing.T) {
	c := startCore(t, Options{})
	d1 := newJobDevice(t, c, "1111111111111111")
	d2 := newJobDevice(t, c, "2222222222222222")
	doc := json.RawMessage(`{"version":"1.0","steps":[{"action":{"name":"hi","type":"runHandler","input":{"handler":"hi.sh"}}}]}`)
	_, err := c.CreateJob(context.Background(), jobs.CreateJobInput{JobID: "upgrade-1", Document: doc, Groups: []string{"iot-fleet-dev"}})
	require.NoError(t, err)

	for _, d := range []*jobDevice{d1, d2} {
		next := decode[protocol.NextJobMessage](t, d.await(protocol.JobsNotifyNextTopic(d.thing)))
		require.NotNil(t, next.Execution)
		assert.Equal(t, "upgrade-1", next.Execution.JobID)

		d.mustPublish(protocol.JobsStartNextTopic(d.thing), protocol.StartNextRequest{ClientToken: "s1", StepTimeoutInMinutes: 5})
		started := decode[protocol.NextJobMessage](t, d.await(protocol.Accepted(protocol.JobsStartNextTopic(d.thing))))
		require.NotNil(t, started.Execution)
		assert.Equal(t, "s1", started.ClientToken)
		assert.Equal(t, protocol.JobInProgress, started.Execution.Status)
		assert.JSONEq(t, string(doc), string(started.Execution.JobDocument))
		v := started.Execution.VersionNumber

		upd := protocol.JobsUpdateTopic(d.thing, "upgrade-1")
		d.mustPublish(upd, protocol.UpdateJobRequest{Status: protocol.JobInProgress, ExpectedVersion: v + 5, ClientToken: "u1"})
		rej := d.await(protocol.Rejected(upd))
		var e map[string]any
		require.NoError(t, json.Unmarshal(rej.Payload, &e))
		assert.Equal(t, protocol.ErrCodeVersionMismatch, e["code"])
		assert.Equal(t, "u1", e["clientToken"])
		state := e["executionState"].(map[string]any)
		assert.EqualValues(t, v, state["versionNumber"])

		d.mustPublish(upd, protocol.UpdateJobRequest{Status: protocol.JobInProgress, ExpectedVersion: v, StatusDetails: map[string]string{"step": "1/1"}})
		d.await(protocol.Accepted(upd))
		final := protocol.JobSucceeded
		if d == d2 {
			final = protocol.JobFailed
		}
		d.mustPublish(upd, protocol.UpdateJobRequest{Status: final, ExpectedVersion: v + 1, IncludeJobExecutionState: true, StatusDetails: map[string]string{"exitCode": "0"}})
		acc := decode[protocol.UpdateJobAccepted](t, d.await(protocol.Accepted(upd)))
		require.NotNil(t, acc.ExecutionState)
		assert.Equal(t, final, acc.ExecutionState.Status)

		empty := decode[protocol.NextJobMessage](t, d.await(protocol.JobsNotifyNextTopic(d.thing)))
		assert.Nil(t, empty.Execution, "no more jobs")

		d.mustPublish(upd, protocol.UpdateJobRequest{Status: protocol.JobSucceeded})
		e = nil
		require.NoError(t, json.Unmarshal(d.await(protocol.Rejected(upd)).Payload, &e))
		assert.Equal(t, protocol.ErrCodeInvalidStateTransition, e["code"])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	execs, err := c.WaitForExecutions(ctx, "upgrade-1")
	require.NoError(t, err)
	require.Len(t, execs, 2)
	assert.Equal(t, protocol.JobSucceeded, execs[0].Status)
	assert.Equal(t, protocol.JobFailed, execs[1].Status)
}

func TestJobsAnswersReachRequesterWithoutSubscription(t *testing.T) {
	c := startCore(t, Options{})
	thing, creds, err := c.RegisterDevice(allowedSerial)
	require.NoError(t, err)
	dev := mustConnect(t, c, creds, thing)
	dev.mustPublish(protocol.JobsGetPendingTopic(thing), `{"clientToken":"x"}`)
	m := dev.await(protocol.Accepted(protocol.JobsGetPendingTopic(thing)))
	resp := decode[jobs.PendingResponse](t, m)
	assert.Equal(t, "x", resp.ClientToken)
	assert.Empty(t, resp.QueuedJobs)
}

func TestBrokerRestartKeepsRegistryAndJobs(t *testing.T) {
	c := startCore(t, Options{})
	thing, creds, err := c.RegisterDevice(allowedSerial)
	require.NoError(t, err)
	dev := mustConnect(t, c, creds, thing)
	dev.mustSubscribe("$aws/things/" + thing + "/jobs/#")
	_, err = c.CreateJob(context.Background(), jobs.CreateJobInput{JobID: "r1", Document: json.RawMessage(`{"operation":"reboot"}`), Things: []string{thing}})
	require.NoError(t, err)
	dev.mustPublish(protocol.JobsStartNextTopic(thing), `{}`)
	started := decode[protocol.NextJobMessage](t, dev.await(protocol.Accepted(protocol.JobsStartNextTopic(thing))))
	require.NotNil(t, started.Execution)

	endpoint := c.Endpoint()
	require.NoError(t, c.RestartBroker())
	dev.waitLost()
	assert.Equal(t, endpoint, c.Endpoint(), "same port after restart")

	dev = mustConnect(t, c, creds, thing)
	dev.mustSubscribe("$aws/things/" + thing + "/jobs/#")
	dev.mustPublish(protocol.JobsDescribeTopic(thing, "$next"), `{}`)
	next := decode[protocol.NextJobMessage](t, dev.await(protocol.Accepted(protocol.JobsDescribeTopic(thing, "$next"))))
	require.NotNil(t, next.Execution)
	assert.Equal(t, protocol.JobInProgress, next.Execution.Status, "execution state survived the restart")
	upd := protocol.JobsUpdateTopic(thing, "r1")
	dev.mustPublish(upd, protocol.UpdateJobRequest{Status: protocol.JobSucceeded, ExpectedVersion: next.Execution.VersionNumber})
	dev.await(protocol.Accepted(upd))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	execs, err := c.WaitForExecutions(ctx, "r1")
	require.NoError(t, err)
	assert.Equal(t, protocol.JobSucceeded, execs[0].Status)
}

func TestFaultsDropOutboundAndDisconnect(t *testing.T) {
	c := startCore(t, Options{})
	thing, creds, err := c.RegisterDevice(allowedSerial)
	require.NoError(t, err)
	dev := mustConnect(t, c, creds, thing)
	dev.mustSubscribe("$aws/things/" + thing + "/jobs/#")
	_, err = c.CreateJob(context.Background(), jobs.CreateJobInput{JobID: "f1", Document: json.RawMessage(`{"operation":"x"}`), Things: []string{thing}})
	require.NoError(t, err)
	dev.await(protocol.JobsNotifyNextTopic(thing))

	start := protocol.JobsStartNextTopic(thing)
	_, err = c.Faults().Add(faults.Rule{Topic: protocol.Accepted(start), Direction: faults.Outbound, Drop: true, Count: 1})
	require.NoError(t, err)
	dev.mustPublish(start, `{"clientToken":"lost"}`)
	get := protocol.JobsGetPendingTopic(thing)
	dev.mustPublish(get, `{}`)
	// The answers are written in request order, so the dropped one would
	// have arrived before this one.
	for {
		m := dev.next()
		require.NotEqual(t, protocol.Accepted(start), m.Topic, "dropped answer was delivered")
		if m.Topic == protocol.Accepted(get) {
			pending := decode[jobs.PendingResponse](t, m)
			require.Len(t, pending.InProgressJobs, 1, "the request itself was processed")
			break
		}
	}
	dev.mustPublish(start, `{"clientToken":"retry"}`)
	again := decode[protocol.NextJobMessage](t, dev.await(protocol.Accepted(start)))
	assert.Equal(t, "retry", again.ClientToken)
	require.NotNil(t, again.Execution)
	assert.Equal(t, protocol.JobInProgress, again.Execution.Status)

	// Inbound drop: the update never reaches the service.
	upd := protocol.JobsUpdateTopic(thing, "f1")
	_, err = c.Faults().Add(faults.Rule{Topic: upd, Direction: faults.Inbound, Drop: true, Count: 1, ClientID: thing})
	require.NoError(t, err)
	tok := dev.c.Publish(upd, 0, false, `{"status":"SUCCEEDED"}`)
	tok.Wait()
	dev.mustPublish(get, `{}`)
	pending := decode[jobs.PendingResponse](t, dev.await(protocol.Accepted(get)))
	assert.Len(t, pending.InProgressJobs, 1, "dropped update had no effect")

	assert.True(t, c.DisconnectClient(thing))
	dev.waitLost()
	assert.False(t, c.DisconnectClient("nobody"))
}

func TestServerNamesAreInTheServerCertificate(t *testing.T) {
	c := startCore(t, Options{ServerNames: []string{"iot.vm.internal", "10.0.2.100"}})
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(c.RootCAPEM()))
	handshake := func(serverName string) error {
		conn, err := tls.Dial("tcp", c.Endpoint(), &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12})
		if err != nil {
			return err
		}
		return conn.Close()
	}
	// The broker asks for a client certificate, but the server's is
	// verified by the client before that matters.
	for _, name := range []string{"iot.vm.internal", "10.0.2.100", "localhost", "127.0.0.1"} {
		err := handshake(name)
		var verr *tls.CertificateVerificationError
		require.False(t, errors.As(err, &verr), "%s: %v", name, err)
	}
	err := handshake("artifacts.vm.internal")
	var verr *tls.CertificateVerificationError
	require.ErrorAs(t, err, &verr)
	require.ErrorContains(t, err, "artifacts.vm.internal")

	// Without the option the name is not accepted.
	plain := startCore(t, Options{})
	conn, err := tls.Dial("tcp", plain.Endpoint(), &tls.Config{RootCAs: plain.ca.Pool(), ServerName: "iot.vm.internal", MinVersion: tls.VersionTLS12})
	if err == nil {
		conn.Close()
	}
	require.ErrorAs(t, err, &verr)
}

func TestServerNamesRefusesTypos(t *testing.T) {
	for _, name := range []string{"", "iot vm", "iot..vm", "-iot.vm", "iot_vm.internal", "iot.vm.internal/", strings.Repeat("a", 64) + ".vm"} {
		_, err := Start(context.Background(), Options{ServerNames: []string{name}})
		require.ErrorContains(t, err, fmt.Sprintf("core: server name %q: want a DNS name", name))
	}
}
