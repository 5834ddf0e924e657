package ssm_test

import (
	"context"
	"encoding/json"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/ssm"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

const (
	thing        = "dev-00000000000000d1"
	code         = "Zq8cR2pL9vX4mN7tK1wY"
	activationID = "6f2ad1c4-1b9e-4a57-8d2e-0c3b5a7e9f10"
	instanceID   = "mi-0123456789abcdef0"
)

// fakeHost is a directory with shell scripts standing in for the package
// manager, systemctl and amazon-ssm-agent. Each records its argv in
// argv.log; the agent script writes the registration file on -register
// and removes it on -register -clear.
type fakeHost struct {
	dir, argvLog, agent, regFile, failRegister string
	cfg                                        config.SSM
}

func script(t *testing.T, path, body string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755))
}

func newFakeHost(t *testing.T, installed bool) *fakeHost {
	t.Helper()
	dir := t.TempDir()
	h := &fakeHost{dir: dir, argvLog: filepath.Join(dir, "argv.log"), agent: filepath.Join(dir, "bin", "amazon-ssm-agent"),
		regFile: filepath.Join(dir, "var", "registration"), failRegister: filepath.Join(dir, "fail-register")}
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "var"), 0o755))
	agentBody := `echo "amazon-ssm-agent $*" >> '` + h.argvLog + `'
if [ "$1" = "-register" ] && [ "$2" = "-clear" ]; then rm -f '` + h.regFile + `'; exit 0; fi
if [ "$1" = "-register" ]; then
  if [ -f '` + h.failRegister + `' ]; then echo "Registration failed due to error registering instance with code $3: InvalidActivation" >&2; exit 1; fi
  printf '{"ManagedInstanceID":"` + instanceID + `","Region":"%s"}' "$7" > '` + h.regFile + `'
fi
`
	template := filepath.Join(dir, "agent.template")
	script(t, template, agentBody)
	if installed {
		script(t, h.agent, agentBody)
	}
	install := filepath.Join(dir, "install")
	script(t, install, `echo "install $*" >> '`+h.argvLog+`'
cp '`+template+`' '`+h.agent+`' && chmod 755 '`+h.agent+`'
`)
	systemctl := filepath.Join(dir, "systemctl")
	script(t, systemctl, `echo "systemctl $*" >> '`+h.argvLog+`'`+"\n")
	uninstall := filepath.Join(dir, "uninstall")
	script(t, uninstall, `echo "uninstall $*" >> '`+h.argvLog+`'
rm -f '`+h.agent+`'
`)
	h.cfg = config.SSM{
		Enabled: true, AgentPath: h.agent,
		InstallCommand:   []string{install, "amazon-ssm-agent"},
		StartCommand:     []string{systemctl, "enable", "--now", "amazon-ssm-agent"},
		StopCommand:      []string{systemctl, "disable", "--now", "amazon-ssm-agent"},
		ClearCommand:     []string{h.agent, "-register", "-clear"},
		UninstallCommand: []string{uninstall, "amazon-ssm-agent"},
		RegistrationFile: h.regFile, CommandTimeout: config.Duration(30 * time.Second),
	}
	return h
}

func (h *fakeHost) argv(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(h.argvLog)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

// recorder is a Publisher recording what the feature queues.
type recorder struct {
	mu   sync.Mutex
	msgs []protocol.SSMStatus
	raw  []string
}

func (r *recorder) Publish(_ context.Context, topic string, payload []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if topic != protocol.DataTopic(thing, protocol.KindSSMStatus) {
		return nil
	}
	var s protocol.SSMStatus
	if err := json.Unmarshal(payload, &s); err != nil {
		return err
	}
	r.msgs = append(r.msgs, s)
	r.raw = append(r.raw, string(payload))
	return nil
}

func (r *recorder) states() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.msgs {
		out = append(out, m.RequestID+":"+m.State)
	}
	return out
}

func (r *recorder) last() protocol.SSMStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msgs[len(r.msgs)-1]
}

type rig struct {
	host  *fakeHost
	pub   *recorder
	logs  *testenv.LogBuffer
	state string
	h     *ssm.Handler
	ctx   context.Context
}

func newRig(t *testing.T, installed bool, mod func(*config.SSM)) *rig {
	t.Helper()
	r := &rig{host: newFakeHost(t, installed), pub: &recorder{}, logs: &testenv.LogBuffer{}, state: t.TempDir()}
	if mod != nil {
		mod(&r.host.cfg)
	}
	st, err := store.Open(r.state)
	require.NoError(t, err)
	r.h, err = ssm.New(ssm.Options{Config: r.host.cfg, ThingName: thing, Publisher: r.pub, Store: st,
		Logger: slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	r.ctx = ctx
	return r
}

func (r *rig) send(t *testing.T, c protocol.SSMCommand) {
	t.Helper()
	payload, err := json.Marshal(c)
	require.NoError(t, err)
	require.NoError(t, r.h.Handle(r.ctx, payload))
}

func activate(req string) protocol.SSMCommand {
	return protocol.SSMCommand{RequestID: req, Action: protocol.SSMActivate, ActivationID: activationID,
		ActivationCode: code, Region: "eu-central-1", ExpiresAt: time.Now().Add(time.Hour).Unix(), Timestamp: time.Now().Unix()}
}

func deactivate(req string) protocol.SSMCommand {
	return protocol.SSMCommand{RequestID: req, Action: protocol.SSMDeactivate, Timestamp: time.Now().Unix()}
}

// assertCodeNowhere checks that the code is in no log line, no file under
// dirs and no published status.
func assertCodeNowhere(t *testing.T, logs string, published []string, dirs ...string) {
	t.Helper()
	assert.NotContains(t, logs, code)
	for _, p := range published {
		assert.NotContains(t, p, code)
	}
	for _, d := range dirs {
		require.NoError(t, filepath.WalkDir(d, func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			assert.NotContains(t, string(data), code, "file %s holds the code", path)
			return nil
		}))
	}
}

func TestActivateInstallsRegistersAndStarts(t *testing.T) {
	r := newRig(t, false, nil)
	r.send(t, activate("req-1"))

	assert.Equal(t, []string{
		"install amazon-ssm-agent",
		"systemctl disable --now amazon-ssm-agent",
		"amazon-ssm-agent -register -code " + code + " -id " + activationID + " -region eu-central-1 -y",
		"systemctl enable --now amazon-ssm-agent",
	}, r.host.argv(t))
	assert.Equal(t, []string{"req-1:installing", "req-1:registered"}, r.pub.states())
	assert.Equal(t, instanceID, r.pub.last().ManagedInstanceID)

	st, err := r.h.LoadState()
	require.NoError(t, err)
	assert.Equal(t, "req-1", st.LastRequestID)
	assert.Equal(t, protocol.SSMStateRegistered, st.State)
	assert.Equal(t, instanceID, st.ManagedInstanceID)
	assert.Equal(t, activationID, st.ActivationID)
	info, err := os.Stat(filepath.Join(r.state, ssm.StateFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	// The code went to the register process's argv and nowhere else.
	assert.Equal(t, 1, strings.Count(strings.Join(r.host.argv(t), "\n"), code))
	assertCodeNowhere(t, r.logs.String(), r.pub.raw, r.state)

	// A redelivered command (same requestId) runs nothing.
	r.send(t, activate("req-1"))
	assert.Len(t, r.host.argv(t), 4)
	assert.Equal(t, []string{"req-1:installing", "req-1:registered", "req-1:registered"}, r.pub.states())
}

func TestActivateWithAgentInstalledSkipsInstall(t *testing.T) {
	r := newRig(t, true, nil)
	r.send(t, activate("req-1"))
	for _, l := range r.host.argv(t) {
		assert.NotContains(t, l, "install ")
	}
	assert.Equal(t, protocol.SSMStateRegistered, r.pub.last().State)
}

func TestDeactivateStopsClearsAndUninstalls(t *testing.T) {
	r := newRig(t, false, nil)
	r.send(t, activate("req-1"))
	_, err := os.Stat(r.host.regFile)
	require.NoError(t, err)
	r.send(t, deactivate("req-2"))
	argv := r.host.argv(t)
	assert.Equal(t, []string{
		"systemctl disable --now amazon-ssm-agent",
		"amazon-ssm-agent -register -clear",
		"uninstall amazon-ssm-agent",
	}, argv[4:])
	assert.Equal(t, "req-2:deactivated", r.pub.states()[2])
	_, err = os.Stat(r.host.regFile)
	assert.True(t, os.IsNotExist(err), "registration cleared")
	_, err = os.Stat(r.host.agent)
	assert.True(t, os.IsNotExist(err), "agent uninstalled")

	// A duplicate deactivate (new request id) is harmless.
	r.send(t, deactivate("req-3"))
	assert.Len(t, r.host.argv(t), 7, "no commands")
	assert.Equal(t, "req-3:deactivated", r.pub.states()[3])

	// Activating again installs again.
	r.send(t, activate("req-4"))
	assert.Equal(t, protocol.SSMStateRegistered, r.pub.last().State)
	assert.Equal(t, "install amazon-ssm-agent", r.host.argv(t)[7])
	assertCodeNowhere(t, r.logs.String(), r.pub.raw, r.state)
}

func TestDeactivateWithoutUninstallLeavesAgentDisabled(t *testing.T) {
	r := newRig(t, true, func(c *config.SSM) { c.UninstallCommand = nil })
	r.send(t, activate("a"))
	r.send(t, deactivate("d"))
	_, err := os.Stat(r.host.agent)
	require.NoError(t, err, "still installed")
	assert.Equal(t, protocol.SSMStateDeactivated, r.pub.last().State)
}

func TestRegisterFailureRedactsCode(t *testing.T) {
	r := newRig(t, true, nil)
	require.NoError(t, os.WriteFile(r.host.failRegister, nil, 0o644))
	r.send(t, activate("req-1"))
	last := r.pub.last()
	assert.Equal(t, protocol.SSMStateFailed, last.State)
	assert.Contains(t, last.Reason, "register")
	assert.Contains(t, last.Reason, "InvalidActivation", "the agent's output is reported")
	assert.Contains(t, last.Reason, ssm.Redacted, "the code in the output was redacted")
	assertCodeNowhere(t, r.logs.String(), r.pub.raw, r.state)
	for _, l := range r.host.argv(t) {
		assert.NotContains(t, l, "enable --now", "not started after a failed registration")
	}

	// A new activation (new request id) is tried again.
	require.NoError(t, os.Remove(r.host.failRegister))
	r.send(t, activate("req-2"))
	assert.Equal(t, protocol.SSMStateRegistered, r.pub.last().State)
}

func TestInvalidOrExpiredCommandsRunNothing(t *testing.T) {
	r := newRig(t, true, nil)
	expired := activate("req-1")
	expired.ExpiresAt = time.Now().Add(-time.Minute).Unix()
	r.send(t, expired)
	assert.Contains(t, r.pub.last().Reason, "expired")

	noCode := activate("req-2")
	noCode.ActivationCode = ""
	r.send(t, noCode)
	assert.Equal(t, protocol.SSMStateFailed, r.pub.last().State)

	dash := activate("req-3")
	dash.Region = "--help"
	r.send(t, dash)
	assert.Equal(t, protocol.SSMStateFailed, r.pub.last().State)

	r.send(t, protocol.SSMCommand{RequestID: "req-4", Action: "reboot"})
	assert.Contains(t, r.pub.last().Reason, "unknown action")

	require.NoError(t, r.h.Handle(r.ctx, []byte("{not json")))
	r.send(t, protocol.SSMCommand{Action: protocol.SSMDeactivate})
	assert.Len(t, r.pub.states(), 4, "malformed commands and commands without requestId are ignored")
	assert.Empty(t, r.host.argv(t))
}

func TestMissingAgentWithoutInstallCommandFails(t *testing.T) {
	r := newRig(t, false, func(c *config.SSM) { c.InstallCommand = nil })
	r.send(t, activate("req-1"))
	assert.Equal(t, protocol.SSMStateFailed, r.pub.last().State)
	assert.Contains(t, r.pub.last().Reason, "no installCommand")
}
