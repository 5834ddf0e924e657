package stack_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmregistered"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

const serial = "10000000000000a1"

// device is a device's MQTT connection (its own certificate, the device
// policy) recording the SSM commands it receives.
type device struct {
	thing  string
	client *mqttconn.Client
	cmds   chan protocol.SSMCommand
}

func startStack(t *testing.T) *stack.Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := stack.Start(ctx, stack.Options{SSM: stack.SSMOptions{ActivationTTL: time.Hour}})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	_, err = s.DeployAllowlist(ctx, []byte(serial+"\n"))
	require.NoError(t, err)
	return s
}

// connectDevice registers serial's thing and certificate, records it as
// provisioned (what the hook does) and connects it.
func connectDevice(t *testing.T, ctx context.Context, s *stack.Stack) *device {
	t.Helper()
	thing, creds, err := s.Core.RegisterDevice(serial)
	require.NoError(t, err)
	_, err = s.Registry.MarkProvisioned(ctx, serial, creds.CertificateID, thing)
	require.NoError(t, err)
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	require.NoError(t, err)
	tlsCfg, err := mqttconn.NewTLSConfig(s.Core.RootCAPEM(), cert, "127.0.0.1", false)
	require.NoError(t, err)
	c, err := mqttconn.New(mqttconn.Options{
		Address: s.Core.Endpoint(), ClientID: thing, CleanSession: true,
		TLSConfig: func() (*tls.Config, error) { return tlsCfg.Clone(), nil },
		Backoff:   backoff.Policy{Initial: 50 * time.Millisecond, Max: time.Second},
	})
	require.NoError(t, err)
	d := &device{thing: thing, client: c, cmds: make(chan protocol.SSMCommand, 8)}
	require.NoError(t, c.Subscribe(ctx, protocol.CommandTopic(thing, protocol.KindSSM), 1, func(_ string, payload []byte) {
		var cmd protocol.SSMCommand
		if json.Unmarshal(payload, &cmd) == nil {
			d.cmds <- cmd
		}
	}))
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	require.NoError(t, c.WaitConnected(ctx))
	return d
}

func (d *device) next(t *testing.T, ctx context.Context) protocol.SSMCommand {
	t.Helper()
	select {
	case c := <-d.cmds:
		return c
	case <-ctx.Done():
		t.Fatalf("no ssm command for %s: %v", d.thing, ctx.Err())
		return protocol.SSMCommand{}
	}
}

func (d *device) report(t *testing.T, ctx context.Context, st protocol.SSMStatus) {
	t.Helper()
	b, err := json.Marshal(st)
	require.NoError(t, err)
	require.NoError(t, d.client.Publish(ctx, protocol.DataTopic(d.thing, protocol.KindSSMStatus), 1, b))
}

func TestSSMToggleRegisterDeactivateThroughTheBroker(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dev := connectDevice(t, ctx, s)
	w, err := s.WatchSSMStatus(ctx)
	require.NoError(t, err)
	defer w.Close()

	// Activate: the real toggle creates the activation and its publish
	// reaches the device over MQTT.
	resp, err := s.SSMToggle(ctx, ssmtoggle.Request{DeviceID: serial, Action: ssmtoggle.ActionActivate})
	require.NoError(t, err)
	require.Equal(t, 1, resp.Succeeded, "%+v", resp)
	res := resp.Results[0]
	assert.Equal(t, ssmstate.StateActivating, res.State)
	cmd := dev.next(t, ctx)
	assert.Equal(t, protocol.SSMActivate, cmd.Action)
	assert.Equal(t, res.ActivationID, cmd.ActivationID)
	assert.Equal(t, res.RequestID, cmd.RequestID)
	assert.Equal(t, "local-1", cmd.Region)
	acts := s.SSM.Service.Activations()
	require.Len(t, acts, 1)
	assert.Equal(t, acts[0].Code, cmd.ActivationCode, "the device got the activation's code")
	assert.Equal(t, int32(1), acts[0].Limit)
	assert.Equal(t, stack.ManagedInstanceRoleName("dev"), acts[0].IamRole)
	assert.WithinDuration(t, time.Now().Add(time.Hour), acts[0].Expiry, time.Minute, "the configured activation TTL")
	msgs := s.SSM.Data.Messages()
	require.Len(t, msgs, 1)
	assert.Equal(t, protocol.CommandTopic(dev.thing, protocol.KindSSM), msgs[0].Topic)
	assert.Equal(t, int32(1), msgs[0].QoS)

	// A wrong code is refused by Systems Manager: no instance, no event.
	_, err = s.SSM.Register(ctx, cmd.ActivationID, "not-the-code")
	require.Error(t, err)
	assert.Empty(t, s.SSM.Service.Instances())

	// The agent registers: instance created, event to the real registered
	// Lambda, registry record active, used activation deleted.
	reg, err := s.SSM.Register(ctx, cmd.ActivationID, cmd.ActivationCode)
	require.NoError(t, err)
	assert.Regexp(t, `^mi-[0-9a-f]{17}$`, reg.InstanceID)
	assert.Equal(t, ssmregistered.Recorded, reg.Outcome.Result, "%+v", reg.Outcome)
	rec, err := s.SSM.State.Get(ctx, serial)
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateActive, rec.State)
	assert.Equal(t, reg.InstanceID, rec.InstanceID)
	assert.Empty(t, s.SSM.Service.Activations())

	// The device's status reaches the operator's watcher over MQTT.
	dev.report(t, ctx, protocol.SSMStatus{RequestID: cmd.RequestID, State: protocol.SSMStateRegistered, ManagedInstanceID: reg.InstanceID, Timestamp: time.Now().Unix()})
	got, err := w.Wait(ctx, dev.thing, func(st protocol.SSMStatus) bool { return st.State == protocol.SSMStateRegistered })
	require.NoError(t, err)
	assert.Equal(t, reg.InstanceID, got.ManagedInstanceID)

	// Deactivate: command to the device, instance deregistered, state reset.
	resp, err = s.SSMToggle(ctx, ssmtoggle.Request{DeviceID: dev.thing, Action: ssmtoggle.ActionDeactivate})
	require.NoError(t, err)
	require.Equal(t, 1, resp.Succeeded, "%+v", resp)
	assert.Equal(t, protocol.SSMDeactivate, dev.next(t, ctx).Action)
	assert.Empty(t, s.SSM.Service.Instances())
	rec, err = s.SSM.State.Get(ctx, serial)
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateInactive, rec.State)
	assert.Empty(t, rec.InstanceID)
}

// The registration event has the shape of the one Systems Manager sends
// (lambdas/ssmregistered/testdata/registration.json).
func TestSSMRegistrationEventMatchesAWS(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connectDevice(t, ctx, s)
	resp, err := s.SSMToggle(ctx, ssmtoggle.Request{DeviceID: serial, Action: ssmtoggle.ActionActivate})
	require.NoError(t, err)
	id := resp.Results[0].ActivationID
	reg, err := s.SSM.Register(ctx, id, s.SSM.Service.Activations()[0].Code)
	require.NoError(t, err)

	keys := func(raw []byte) (top, detail []string) {
		var m map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &m))
		for k := range m {
			top = append(top, k)
		}
		var d map[string]any
		require.NoError(t, json.Unmarshal(m["detail"], &d))
		for k := range d {
			detail = append(detail, k)
		}
		sort.Strings(top)
		sort.Strings(detail)
		return top, detail
	}
	want, err := os.ReadFile(filepath.Join("..", "..", "lambdas", "ssmregistered", "testdata", "registration.json"))
	require.NoError(t, err)
	got, err := json.Marshal(reg.Event)
	require.NoError(t, err)
	wantTop, wantDetail := keys(want)
	gotTop, gotDetail := keys(got)
	assert.Equal(t, wantTop, gotTop)
	assert.Equal(t, wantDetail, gotDetail)
	assert.Equal(t, "SSM Managed Instance Registration", reg.Event.DetailType)
	assert.Equal(t, "aws.ssm", reg.Event.Source)
	assert.Equal(t, []string{"arn:aws:ssm:local-1:000000000000:managed-instance/" + reg.InstanceID}, reg.Event.Resources)
	assert.Contains(t, string(reg.Event.Detail), id)

	// The activation is spent: a second registration is refused.
	_, err = s.SSM.Register(ctx, id, "anything")
	require.Error(t, err)
}

func TestSSMExpirySweepRemovesUnusedActivation(t *testing.T) {
	t.Parallel()
	var offset atomic.Int64 // how far the clock was moved ahead
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := stack.Start(ctx, stack.Options{SSM: stack.SSMOptions{ActivationTTL: time.Hour, Now: clock}})
	require.NoError(t, err)
	defer s.Close()
	_, err = s.DeployAllowlist(ctx, []byte(serial+"\n"))
	require.NoError(t, err)
	connectDevice(t, ctx, s)
	_, err = s.SSMToggle(ctx, ssmtoggle.Request{DeviceID: serial, Action: ssmtoggle.ActionActivate})
	require.NoError(t, err)
	require.Len(t, s.SSM.Service.Activations(), 1)

	offset.Store(int64(2 * time.Hour))
	sum, err := s.SSM.Sweep(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, sum.ActivationsDeleted, "%+v", sum)
	assert.Empty(t, s.SSM.Service.Activations())
	rec, err := s.SSM.State.Get(ctx, serial)
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateInactive, rec.State)
}

func TestDataPlaneRejectsWhatAWSRejects(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx := context.Background()
	for _, in := range []*iotdataplane.PublishInput{
		{Topic: aws.String("cmd/fleet/+/ssm"), Qos: 1},
		{Topic: aws.String("cmd/#"), Qos: 1},
		{Topic: aws.String(""), Qos: 0},
		{Topic: aws.String(strings.Repeat("a", 257)), Qos: 0},
		{Topic: aws.String("cmd/fleet/x/ssm"), Qos: 2},
	} {
		_, err := s.SSM.Data.Publish(ctx, in)
		assert.Error(t, err, "%s qos %d", aws.ToString(in.Topic), in.Qos)
	}
	assert.Empty(t, s.SSM.Data.Messages())
}
