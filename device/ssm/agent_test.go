package ssm_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/device/ssm"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/rules"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// TestAgentFeatureOverMQTT runs the whole agent (provisioning by claim
// through the stack's real hook, mutual TLS, outbox) with the SSM feature
// against the local IoT Core (sim/stack): the cloud's commands arrive on
// cmd/fleet/<thing>/ssm, the fake agent processes run, and the status
// comes back on dt/fleet/<thing>/ssm/status, where a topic rule of the
// local IoT Core sees it (as the cloud's rules do).
func TestAgentFeatureOverMQTT(t *testing.T) {
	const serial = "00000000000000d1" // the thing is dev-<serial>
	ctx0, cancel0 := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel0()
	st, err := stack.Start(ctx0, stack.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	_, err = st.DeployAllowlist(ctx0, []byte(serial+"\n"))
	require.NoError(t, err)
	host := newFakeHost(t, false)
	dir := t.TempDir()
	devicetest.WriteClaimFiles(t, st.Core, dir)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "serial-number"), []byte(serial), 0o600))
	statuses := make(chan []byte, 16)
	require.NoError(t, st.Core.Rules().Add(rules.Rule{Name: "ssm-status", SQL: "SELECT * FROM '" + protocol.DataTopic("+", protocol.KindSSMStatus) + "'",
		Action: func(_ context.Context, event []byte) error { statuses <- event; return nil }}))
	h, port, err := net.SplitHostPort(st.Core.Endpoint())
	require.NoError(t, err)
	cfg, err := config.Parse([]byte(`{
		"endpoint": "` + h + `", "port": ` + port + `, "rootCAFile": "` + filepath.Join(dir, "root-ca.pem") + `",
		"stateDir": "` + filepath.Join(dir, "state") + `", "logLevel": "debug",
		"provisioning": {"claimCertFile": "` + filepath.Join(dir, "claim.pem") + `", "claimKeyFile": "` + filepath.Join(dir, "claim.key") + `",
			"templateName": "` + st.Core.Names().TemplateName + `", "serialFiles": ["` + filepath.Join(dir, "serial-number") + `"],
			"responseTimeout": "5s", "retryMin": "5ms", "retryMax": "50ms", "deniedBackoff": "1s"},
		"mqtt": {"reconnectMin": "10ms", "reconnectMax": "100ms", "connectTimeout": "5s"},
		"jobs": {"enabled": false}
	}`))
	require.NoError(t, err)
	cfg.SSM = host.cfg
	require.NoError(t, cfg.Validate())

	logs := &testenv.LogBuffer{}
	a, err := agent.New(agent.Options{
		Config: cfg, Version: "test", Features: []agent.FeatureFactory{ssm.Feature()},
		Logger:           slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Notify:           func(string) error { return nil },
		WatchdogInterval: func() (time.Duration, error) { return 0, nil },
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop")
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
	require.Equal(t, thing, a.Runtime().Identity.ThingName)

	var published []string
	nextStatus := func() protocol.SSMStatus {
		t.Helper()
		select {
		case m := <-statuses:
			published = append(published, string(m))
			var s protocol.SSMStatus
			require.NoError(t, json.Unmarshal(m, &s))
			return s
		case <-time.After(20 * time.Second):
			t.Fatal("no ssm status")
			return protocol.SSMStatus{}
		}
	}
	send := func(c protocol.SSMCommand) {
		t.Helper()
		payload, err := json.Marshal(c)
		require.NoError(t, err)
		st.Core.Publish(protocol.CommandTopic(thing, protocol.KindSSM), payload)
	}

	send(activate("req-1"))
	assert.Equal(t, protocol.SSMStateInstalling, nextStatus().State)
	s := nextStatus()
	assert.Equal(t, protocol.SSMStateRegistered, s.State, s.Reason)
	assert.Equal(t, instanceID, s.ManagedInstanceID)
	assert.Equal(t, "req-1", s.RequestID)

	send(activate("req-1")) // QoS 1 redelivery
	s = nextStatus()
	assert.Equal(t, protocol.SSMStateRegistered, s.State)
	send(deactivate("req-2"))
	s = nextStatus()
	assert.Equal(t, protocol.SSMStateDeactivated, s.State, s.Reason)
	assert.Equal(t, "req-2", s.RequestID)

	assert.Equal(t, []string{
		"install amazon-ssm-agent",
		"systemctl disable --now amazon-ssm-agent",
		"amazon-ssm-agent -register -code " + code + " -id " + activationID + " -region eu-central-1 -y",
		"systemctl enable --now amazon-ssm-agent",
		"systemctl disable --now amazon-ssm-agent",
		"amazon-ssm-agent -register -clear",
		"uninstall amazon-ssm-agent",
	}, host.argv(t))
	assertCodeNowhere(t, logs.String(), published, cfg.StateDir)
}
