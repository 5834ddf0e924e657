// Package harness runs a local fleet: the cloud side (the local IoT Core with
// the real Lambda handlers, package sim/stack) and real fleet-agent
// processes talking to it over MQTT with mutual TLS. The end-to-end tests and
// the demo (cmd/fleet-demo) both drive it.
package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/core"
	"github.com/iot-fleet/iot-fleet/sim/rules"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// RepoRoot finds the module root (the directory holding go.mod) from the
// working directory up.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repo root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repo root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// BuildAgent builds fleet-agent for this machine into dir and returns its
// path. It uses the same flags as the release build.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "fleet-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=e2e", "-o", out, "./device/cmd/fleet-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build fleet-agent: %w\n%s", err, b)
	}
	return out, nil
}

// Options configure a Fleet.
type Options struct {
	// Dir holds every file of the fleet (certificates, agent state, logs).
	Dir string
	// AgentBin is the fleet-agent binary (see BuildAgent).
	AgentBin string
	// Allowlist is deployed before Start returns (the allowlist.txt content).
	Allowlist string
	// JobMinute shortens the Jobs service's minute (step timeouts).
	JobMinute time.Duration
	// Logger receives the cloud side's log lines.
	Logger *slog.Logger
	// ServerNames are extra names on the local IoT Core's server
	// certificate (core.Options.ServerNames), e.g. iot.vm.internal for the
	// virtual Raspberry Pi.
	ServerNames []string
}

// Fleet is the local cloud side plus the files agents need to reach it.
type Fleet struct {
	Stack *stack.Stack
	Dir   string

	agentBin  string
	rootCA    string
	claimCert string
	claimKey  string
	log       *slog.Logger

	// statusMu guards started: per thing, the latest startedAt of the
	// agent status messages (dt/fleet/<thing>/status) the cloud received.
	statusMu sync.Mutex
	started  map[string]time.Time
}

// Start starts the local stack, deploys the allowlist, mints the claim
// certificate and writes the files agents read.
func Start(ctx context.Context, opts Options) (*Fleet, error) {
	if opts.Dir == "" || opts.AgentBin == "" {
		return nil, errors.New("harness: Dir and AgentBin are required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := stack.Start(ctx, stack.Options{Core: core.Options{JobMinute: opts.JobMinute, ALPNAddr: "127.0.0.1:0", Logger: log, ServerNames: opts.ServerNames}, Logger: log})
	if err != nil {
		return nil, err
	}
	f := &Fleet{Stack: st, Dir: opts.Dir, agentBin: opts.AgentBin, log: log, started: map[string]time.Time{}}
	if err := f.setup(ctx, opts.Allowlist); err != nil {
		st.Close()
		return nil, err
	}
	return f, nil
}

// StatusRuleName is the name of the topic rule through which the harness
// observes the agents' status messages.
const StatusRuleName = "harness-status"

func (f *Fleet) setup(ctx context.Context, allowlistText string) error {
	// An agent publishes its status after each (re)connect, once the broker
	// acknowledged every subscription it makes (mqttconn.OnConnectFunc):
	// seeing it tells that commands sent to the device now reach it.
	if err := f.Stack.Core.Rules().Add(rules.Rule{
		Name:   StatusRuleName,
		SQL:    "SELECT startedAt, topic(3) AS thing FROM '" + protocol.DataTopic("+", protocol.KindStatus) + "'",
		Action: f.recordStatus,
	}); err != nil {
		return fmt.Errorf("harness: status rule: %w", err)
	}
	if _, err := f.Stack.DeployAllowlist(ctx, []byte(allowlistText)); err != nil {
		return fmt.Errorf("harness: deploy allowlist: %w", err)
	}
	claim, err := f.Stack.Core.IssueClaimCertificate()
	if err != nil {
		return fmt.Errorf("harness: claim certificate: %w", err)
	}
	shared := filepath.Join(f.Dir, "shared")
	if err := os.MkdirAll(shared, 0o700); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	f.rootCA = filepath.Join(shared, "root-ca.pem")
	f.claimCert = filepath.Join(shared, "claim.crt")
	f.claimKey = filepath.Join(shared, "claim.key")
	for _, w := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{f.rootCA, f.Stack.Core.RootCAPEM(), 0o644},
		{f.claimCert, claim.CertPEM, 0o644},
		{f.claimKey, claim.KeyPEM, 0o600},
	} {
		if err := atomicfile.WriteFile(w.path, w.data, w.mode); err != nil {
			return fmt.Errorf("harness: %w", err)
		}
	}
	return nil
}

// TrustFiles are the files a device image gets: the local IoT Core's root
// CA, and the provisioning claim certificate and key (0600).
func (f *Fleet) TrustFiles() (rootCA, claimCert, claimKey string) {
	return f.rootCA, f.claimCert, f.claimKey
}

// recordStatus is the status rule's action.
func (f *Fleet) recordStatus(_ context.Context, event []byte) error {
	var ev struct {
		Thing     string    `json:"thing"`
		StartedAt time.Time `json:"startedAt"`
	}
	if err := json.Unmarshal(event, &ev); err != nil {
		return fmt.Errorf("harness: status event: %w", err)
	}
	f.statusMu.Lock()
	defer f.statusMu.Unlock()
	if ev.StartedAt.After(f.started[ev.Thing]) {
		f.started[ev.Thing] = ev.StartedAt
	}
	return nil
}

// StatusSince reports whether thing's agent published a status message
// from a process started at or after t: that process has connected and
// made its subscriptions.
func (f *Fleet) StatusSince(thing string, t time.Time) bool {
	f.statusMu.Lock()
	defer f.statusMu.Unlock()
	s, ok := f.started[thing]
	return ok && !s.Before(t)
}

// Close stops the local stack. Agents must be stopped by their owner.
func (f *Fleet) Close() error { return f.Stack.Close() }

// ThingName is the thing name the template gives serial.
func (f *Fleet) ThingName(serial string) string {
	return f.Stack.Core.Names().ThingNamePrefix + serial
}

// Connected reports whether an MQTT client with clientID is connected.
func (f *Fleet) Connected(clientID string) bool {
	for _, c := range f.Stack.Core.Clients() {
		if c.ClientID == clientID {
			return true
		}
	}
	return false
}

// Poll calls cond every interval until it returns true or ctx ends; what
// describes the awaited condition in the error.
func Poll(ctx context.Context, what string, cond func() bool) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func endpointParts(endpoint string) (host, port string) {
	i := strings.LastIndex(endpoint, ":")
	return endpoint[:i], endpoint[i+1:]
}
