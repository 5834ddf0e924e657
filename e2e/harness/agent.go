package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/store"
)

// AgentOptions shape one agent's configuration.
type AgentOptions struct {
	// Serial is the device serial the agent provisions with.
	Serial string
	// Configure, when set, edits the configuration before it is written.
	Configure func(*config.Config)
}

// Agent is one fleet-agent process (restartable) with its own state dir.
type Agent struct {
	Serial     string
	Dir        string
	StateDir   string
	ConfigFile string
	LogFile    string

	fleet *Fleet
	bin   string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	// started is when the running process was started (before exec).
	started time.Time
}

// NewAgent prepares (but does not start) an agent for serial.
func (f *Fleet) NewAgent(name string, opts AgentOptions) (*Agent, error) {
	dir := filepath.Join(f.Dir, "agents", name)
	a := &Agent{
		Serial: opts.Serial, Dir: dir, StateDir: filepath.Join(dir, "state"),
		ConfigFile: filepath.Join(dir, "config.json"), LogFile: filepath.Join(dir, "agent.log"),
		fleet: f, bin: f.agentBin,
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent %s: %w", name, err)
	}
	cfg := f.AgentConfig(opts.Serial, a.StateDir)
	if opts.Configure != nil {
		opts.Configure(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent %s: %w", name, err)
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", name, err)
	}
	if err := os.WriteFile(a.ConfigFile, b, 0o600); err != nil {
		return nil, fmt.Errorf("agent %s: %w", name, err)
	}
	return a, nil
}

// UseALPN points cfg at the local IoT Core's listener that serves MQTT only
// with ALPN x-amzn-mqtt-ca, as AWS IoT Core does on port 443.
func (f *Fleet) UseALPN(cfg *config.Config) {
	host, port := endpointParts(f.Stack.Core.ALPNEndpoint())
	p, _ := strconv.Atoi(port)
	cfg.Endpoint, cfg.Port, cfg.ALPN = host, p, true
}

// AgentConfig is the configuration of an agent talking to this fleet, with
// timings shortened for a local run.
func (f *Fleet) AgentConfig(serial, stateDir string) config.Config {
	host, port := endpointParts(f.Stack.Core.Endpoint())
	p, _ := strconv.Atoi(port)
	cfg := config.Default()
	cfg.Endpoint = host
	cfg.Port = p
	cfg.RootCAFile = f.rootCA
	cfg.StateDir = stateDir
	cfg.LogLevel = "debug"
	cfg.Provisioning.ClaimCertFile = f.claimCert
	cfg.Provisioning.ClaimKeyFile = f.claimKey
	cfg.Provisioning.TemplateName = f.Stack.Core.Names().TemplateName
	cfg.Provisioning.Serial = serial
	cfg.Provisioning.ResponseTimeout = config.Duration(5 * time.Second)
	cfg.Provisioning.RetryMin = config.Duration(100 * time.Millisecond)
	cfg.Provisioning.RetryMax = config.Duration(time.Second)
	cfg.Provisioning.DeniedBackoff = config.Duration(2 * time.Second)
	cfg.MQTT.ReconnectMin = config.Duration(100 * time.Millisecond)
	cfg.MQTT.ReconnectMax = config.Duration(time.Second)
	cfg.MQTT.ConnectTimeout = config.Duration(5 * time.Second)
	cfg.Jobs.HandlerDir = filepath.Join(filepath.Dir(stateDir), "handlers")
	return cfg
}

// ThingName is the thing name this agent provisions as.
func (a *Agent) ThingName() string { return a.fleet.ThingName(a.Serial) }

// HandlerDir is where runHandler job handlers are looked up (mode 0700).
func (a *Agent) HandlerDir() string { return filepath.Join(a.Dir, "handlers") }

// InstallHandler writes an executable handler script (0700) into the
// handler directory, which is created 0700.
func (a *Agent) InstallHandler(name, script string) error {
	if err := os.MkdirAll(a.HandlerDir(), 0o700); err != nil {
		return fmt.Errorf("install handler: %w", err)
	}
	if err := os.Chmod(a.HandlerDir(), 0o700); err != nil {
		return fmt.Errorf("install handler: %w", err)
	}
	return os.WriteFile(filepath.Join(a.HandlerDir(), name), []byte(script), 0o700)
}

// Start starts the agent process; its output goes to LogFile (appended).
func (a *Agent) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return errors.New("agent already running")
	}
	logf, err := os.OpenFile(a.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("agent log: %w", err)
	}
	cmd := exec.Command(a.bin, "run", "--config", a.ConfigFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	started := time.Now()
	// Its own process group, as under systemd (KillMode=control-group):
	// a kill takes the agent's children with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start agent: %w", err)
	}
	done := make(chan struct{})
	a.cmd, a.done, a.started = cmd, done, started
	go func() {
		err := cmd.Wait()
		logf.Close()
		a.mu.Lock()
		a.err = err
		a.mu.Unlock()
		close(done)
	}()
	return nil
}

// Running reports whether the process is alive.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return false
	}
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL to the agent's process group (power loss, kill -9)
// and waits for it.
func (a *Agent) Kill() error { return a.signal(syscall.SIGKILL, 10*time.Second) }

// Stop sends SIGTERM (systemctl stop) and waits up to timeout; it returns
// the process's exit error, nil for a clean exit.
func (a *Agent) Stop(timeout time.Duration) error { return a.signal(syscall.SIGTERM, timeout) }

func (a *Agent) signal(sig syscall.Signal, timeout time.Duration) error {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(timeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("agent %s did not exit within %s after %s", a.Serial, timeout, sig)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.err
	a.cmd, a.done, a.err = nil, nil, nil
	if sig == syscall.SIGKILL {
		return nil
	}
	return err
}

// Identity is the identity the agent stored after provisioning.
func (a *Agent) Identity() (store.Identity, bool, error) {
	st, err := store.Open(a.StateDir)
	if err != nil {
		return store.Identity{}, false, err
	}
	return st.Identity()
}

// WaitConnected waits until the agent is connected as its thing and its
// subscriptions are in place: the running process has published its
// status, which the agent does only once the broker acknowledged every
// subscription. (The broker lists a client as soon as it accepted the
// CONNECT; a command published before the SUBACK would be lost.)
func (a *Agent) WaitConnected(ctx context.Context) error {
	a.mu.Lock()
	started := a.started
	a.mu.Unlock()
	return Poll(ctx, a.ThingName()+" connected and subscribed", func() bool {
		return a.fleet.Connected(a.ThingName()) && a.fleet.StatusSince(a.ThingName(), started)
	})
}

// Log returns the agent's output so far.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.LogFile)
	return string(b)
}

// WaitLog waits until the agent's output contains substr.
func (a *Agent) WaitLog(ctx context.Context, substr string) error {
	return Poll(ctx, fmt.Sprintf("%q in %s's log", substr, a.Serial), func() bool {
		b, _ := os.ReadFile(a.LogFile)
		return bytes.Contains(b, []byte(substr))
	})
}

// LogTail returns the last n lines of the agent's output (for failures).
func (a *Agent) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(a.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
