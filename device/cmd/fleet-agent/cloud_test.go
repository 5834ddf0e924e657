package main

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/internal/devicetest"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	simjobs "github.com/iot-fleet/iot-fleet/sim/jobs"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// localCloud is the local IoT Core with the stack's real Lambdas
// (sim/stack), the cloud the agent binary talks to over MQTT with mutual
// TLS: serials are on its allowlist, and dir holds its root CA and a claim
// certificate for the agents' configuration.
type localCloud struct {
	*stack.Stack
	dir string
}

func startLocalCloud(t *testing.T, serials ...string) *localCloud {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	_, err = st.DeployAllowlist(ctx, []byte(strings.Join(serials, "\n")+"\n"))
	require.NoError(t, err)
	c := &localCloud{Stack: st, dir: t.TempDir()}
	devicetest.WriteClaimFiles(t, st.Core, c.dir)
	return c
}

// agentConfig writes a configuration for serial against c (the serial
// read from a cpuinfo file) in a new directory.
func (c *localCloud) agentConfig(t *testing.T, serial string) (cfgFile, stateDir string) {
	t.Helper()
	dir := t.TempDir()
	return c.writeAgentConfig(t, dir, serial, nil), filepath.Join(dir, "state")
}

// writeAgentConfig writes dir/config.json for serial against c: the
// serial is read from dir/cpuinfo, the state is in dir/state, and extra
// adds top-level sections (e.g. "ota").
func (c *localCloud) writeAgentConfig(t *testing.T, dir, serial string, extra map[string]any) (cfgFile string) {
	t.Helper()
	serialFile := filepath.Join(dir, "cpuinfo")
	require.NoError(t, os.WriteFile(serialFile, []byte("Hardware\t: BCM2835\nSerial\t\t: "+serial+"\n"), 0o444))
	host, port, err := net.SplitHostPort(c.Core.Endpoint())
	require.NoError(t, err)
	portNum, err := strconv.Atoi(port)
	require.NoError(t, err)
	cfg := map[string]any{
		"endpoint": host, "port": portNum, "rootCAFile": filepath.Join(c.dir, "root-ca.pem"),
		"stateDir": filepath.Join(dir, "state"), "logLevel": "debug",
		"provisioning": map[string]any{
			"claimCertFile": filepath.Join(c.dir, "claim.pem"), "claimKeyFile": filepath.Join(c.dir, "claim.key"),
			"templateName": c.Core.Names().TemplateName, "serialFiles": []string{serialFile},
			"retryMin": "10ms", "retryMax": "100ms", "deniedBackoff": "1s",
		},
		"mqtt": map[string]any{"reconnectMin": "10ms", "reconnectMax": "200ms"},
	}
	maps.Copy(cfg, extra)
	data, err := json.Marshal(cfg)
	require.NoError(t, err)
	cfgFile = filepath.Join(dir, "config.json")
	require.NoError(t, os.WriteFile(cfgFile, data, 0o600))
	return cfgFile
}

// groupJob creates a continuous job with doc for the thing group devices
// join when they provision: a device provisioned later gets it as its
// next job.
func (c *localCloud) groupJob(t *testing.T, jobID string, doc any) {
	t.Helper()
	raw, err := json.Marshal(doc)
	require.NoError(t, err)
	_, err = c.Core.CreateJob(context.Background(), simjobs.CreateJobInput{JobID: jobID, Document: raw,
		Groups: []string{c.Core.Names().ThingGroup}, Continuous: true})
	require.NoError(t, err)
}

// execution returns thing's execution of jobID; found is false while the
// thing has none (it has not provisioned yet).
func (c *localCloud) execution(t *testing.T, jobID, thing string) (ex simjobs.Execution, found bool) {
	t.Helper()
	ex, err := c.Core.Jobs().Execution(jobID, thing)
	if errors.Is(err, simjobs.ErrNotFound) {
		return simjobs.Execution{}, false
	}
	require.NoError(t, err)
	return ex, true
}

// jobAnswers records, in order, the Jobs service's answers to one thing's
// start-next and update requests (sim/jobs Observe), accepted or not.
type jobAnswers struct {
	mu  sync.Mutex
	all []simjobs.Answer
}

// observeJobs records thing's answers from now until the test ends.
func (c *localCloud) observeJobs(t *testing.T, thing string) *jobAnswers {
	a := &jobAnswers{}
	stop := c.Core.Jobs().Observe(func(ans simjobs.Answer) {
		if ans.Thing != thing {
			return
		}
		a.mu.Lock()
		a.all = append(a.all, ans)
		a.mu.Unlock()
	})
	t.Cleanup(stop)
	return a
}

// answers returns every answer so far.
func (a *jobAnswers) answers() []simjobs.Answer {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]simjobs.Answer(nil), a.all...)
}

// updates returns the accepted updates, in the order the service
// accepted them.
func (a *jobAnswers) updates() []simjobs.Answer {
	var out []simjobs.Answer
	for _, ans := range a.answers() {
		if ans.Op == "update" && ans.Accepted {
			out = append(out, ans)
		}
	}
	return out
}

// invalid returns the requests the service rejected as invalid (e.g.
// statusDetails beyond AWS's constraints).
func (a *jobAnswers) invalid() []simjobs.Answer {
	var out []simjobs.Answer
	for _, ans := range a.answers() {
		if !ans.Accepted && ans.Code == protocol.ErrCodeInvalidRequest {
			out = append(out, ans)
		}
	}
	return out
}
