package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestServeWritesFilesAndServesMQTTAndAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "fleet-sim")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	dir := filepath.Join(tmp, "sim")
	allow := filepath.Join(tmp, "allowlist.txt")
	require.NoError(t, os.WriteFile(allow, []byte("# test\n10000000a1b2c3d4\n"), 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "serve", "--dir", dir, "--allowlist", allow, "--alpn-listen", "127.0.0.1:0")
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})

	var endpoint string
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "endpoint"))
		endpoint = strings.TrimSpace(string(b))
		return err == nil && endpoint != ""
	}, 30*time.Second, 20*time.Millisecond, "endpoint file; stderr: %s", &stderr)

	st, err := os.Stat(filepath.Join(dir, "claim.key"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	rootPEM, err := os.ReadFile(filepath.Join(dir, "root-ca.pem"))
	require.NoError(t, err)
	apiAddr, err := os.ReadFile(filepath.Join(dir, "api"))
	require.NoError(t, err)
	api := "http://" + strings.TrimSpace(string(apiAddr))

	// The claim certificate connects with a provisioning client id.
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(rootPEM))
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "claim.pem"), filepath.Join(dir, "claim.key"))
	require.NoError(t, err)
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tls://" + endpoint).SetClientID("provision-10000000a1b2c3d4").
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}).SetAutoReconnect(false))
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	cl.Disconnect(0)

	// So does it on the ALPN listener (AWS IoT Core's 443), with ALPN
	// x-amzn-mqtt-ca.
	alpnEndpoint, err := os.ReadFile(filepath.Join(dir, "endpoint-alpn"))
	require.NoError(t, err)
	cl = paho.NewClient(paho.NewClientOptions().AddBroker("tls://" + strings.TrimSpace(string(alpnEndpoint))).SetClientID("provision-10000000a1b2c3d4").
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", NextProtos: []string{"x-amzn-mqtt-ca"}}).SetAutoReconnect(false))
	tok = cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	cl.Disconnect(0)

	resp, err := http.Get(api + "/status")
	require.NoError(t, err)
	var status map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&status))
	resp.Body.Close()
	assert.Equal(t, endpoint, status["endpoint"])
	assert.Equal(t, "iot-fleet-local", status["thingGroup"])

	// The AWS IoT control-plane API, at the URL in DIR/control-plane and
	// /status, answers the real SDK client.
	cpURL, err := os.ReadFile(filepath.Join(dir, "control-plane"))
	require.NoError(t, err)
	controlPlane := strings.TrimSpace(string(cpURL))
	require.True(t, strings.HasPrefix(controlPlane, "http://127.0.0.1:"), controlPlane)
	assert.Equal(t, controlPlane, status["controlPlaneEndpoint"])
	assert.Equal(t, map[string]any{"droppedQueueFull": float64(0), "droppedInflightFull": float64(0), "droppedQoS0": float64(0)}, status["broker"], "drop counters")

	// DIR/outputs.json: the stack outputs, with the endpoint and files.
	var outputs map[string]any
	raw, err := os.ReadFile(filepath.Join(dir, "outputs.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &outputs))
	assert.Equal(t, controlPlane, outputs["localEndpoint"])
	assert.Equal(t, filepath.Join(dir, "claim.key"), outputs["claimKeyFile"])
	assert.Equal(t, "iot-fleet-local-ssmtoggle", outputs["ssmToggleLambda"])
	_, port, _ := strings.Cut(endpoint, ":")
	assert.Equal(t, port, fmt.Sprint(outputs["iotDataPort"]))
	// DIR/agent.json: an agent configuration for this endpoint.
	raw, err = os.ReadFile(filepath.Join(dir, "agent.json"))
	require.NoError(t, err)
	var agent map[string]any
	require.NoError(t, json.Unmarshal(raw, &agent))
	assert.Equal(t, "127.0.0.1", agent["endpoint"])
	assert.Equal(t, port, fmt.Sprint(agent["port"]))
	iotc := iot.New(iot.Options{BaseEndpoint: aws.String(controlPlane), Region: "local-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDLOCAL", "secret", "")})
	groups, err := iotc.ListThingGroups(ctx, &iot.ListThingGroupsInput{})
	require.NoError(t, err)
	require.Len(t, groups.ThingGroups, 1)
	assert.Equal(t, "iot-fleet-local", aws.ToString(groups.ThingGroups[0].GroupName))
	ep, err := iotc.DescribeEndpoint(ctx, &iot.DescribeEndpointInput{EndpointType: aws.String("iot:Data-ATS")})
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", aws.ToString(ep.EndpointAddress))

	post := func(path, body string) int {
		resp, err := http.Post(api+path, "application/json", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusNotFound, post("/jobs", `{"jobId":"j1","document":{"operation":"x"},"things":["dev-nope"]}`))
	assert.Equal(t, http.StatusBadRequest, post("/jobs", `{"jobId":"j1","document":{},"bogus":1}`))
	assert.Equal(t, http.StatusCreated, post("/faults", `{"topic":"$aws/things/+/jobs/#","direction":"outbound","delay":"10ms","count":1}`))
	assert.Equal(t, http.StatusBadRequest, post("/faults", `{"topic":"a/#/b","direction":"outbound","drop":true}`))
	assert.Equal(t, http.StatusOK, post("/faults/provisioning", `{"throttle":2}`))
	assert.Equal(t, http.StatusOK, post("/broker/restart", ``))
	assert.Equal(t, http.StatusNotFound, post("/clients/nobody/disconnect", ``))
	assert.Equal(t, http.StatusNotFound, post(fmt.Sprintf("/certificates/%s/revoke", strings.Repeat("0", 64)), ``))
	// Re-admission through the operator API, recorded in the device registry.
	assert.Equal(t, http.StatusOK, post("/devices/10000000a1b2c3d4/readmit", `{"token":"INC-1","by":"ops"}`))
	assert.Equal(t, http.StatusBadRequest, post("/devices/10000000a1b2c3d4/readmit", `{"token":"no spaces allowed"}`))
	assert.Equal(t, http.StatusNotFound, post("/devices/10000000ffffffff/readmit", `{"token":"INC-1"}`))
	resp, err = http.Get(api + "/devices/10000000a1b2c3d4")
	require.NoError(t, err)
	var rec map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rec))
	resp.Body.Close()
	assert.Equal(t, "INC-1", rec["ReadmitToken"])
	assert.Equal(t, "ops", rec["ReadmittedBy"])

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-done:
		require.NoError(t, err, "clean exit; stderr: %s", &stderr)
	case <-ctx.Done():
		t.Fatal("fleet-sim did not exit on SIGTERM")
	}
	_, err = os.Stat(filepath.Join(dir, "endpoint"))
	assert.True(t, os.IsNotExist(err), "endpoint removed on exit")
}

func TestServeRejectsBadFlagsAndAllowlist(t *testing.T) {
	var buf bytes.Buffer
	assert.ErrorContains(t, run(nil, &buf), "usage")
	assert.ErrorContains(t, run([]string{"serve"}, &buf), "--dir and --allowlist are required")
	tmp := t.TempDir()
	bad := filepath.Join(tmp, "allow.txt")
	require.NoError(t, os.WriteFile(bad, []byte("10000000a1b2c3d4\nNOT-A-SERIAL\n"), 0o644))
	err := run([]string{"serve", "--dir", tmp, "--allowlist", bad}, &buf)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "line 2")
	err = run([]string{"serve", "--dir", tmp, "--allowlist", filepath.Join(tmp, "missing")}, &buf)
	assert.ErrorContains(t, err, "--allowlist")
	for _, bad := range []string{"ftp://x", "http://", "http://x/path", "artifacts.vm.internal"} {
		err = run([]string{"serve", "--dir", tmp, "--allowlist", bad + ".txt", "--artifacts-url", bad}, &buf)
		assert.ErrorContains(t, err, "--artifacts-url", bad)
	}
}

func TestALPNListenAddr(t *testing.T) {
	assert.Equal(t, "", alpnListenAddr("off"))
	assert.Equal(t, "127.0.0.1:8443", alpnListenAddr("127.0.0.1:8443"))
	auto := alpnListenAddr("auto")
	if os.Geteuid() != 0 {
		assert.Equal(t, "127.0.0.1:0", auto, "a free port when not root")
	} else {
		assert.Contains(t, []string{"127.0.0.1:443", "127.0.0.1:0"}, auto, "443 when root and free, else a free port")
	}
}

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"serve", "--help"}} {
		var buf bytes.Buffer
		require.NoError(t, run(args, &buf), "%v", args)
		assert.Contains(t, buf.String(), "fleet-sim serve --dir DIR --allowlist FILE", "%v", args)
	}
	var buf bytes.Buffer
	require.NoError(t, run([]string{"serve", "--help"}, &buf))
	for _, flag := range []string{"-alpn-listen", "-control-plane", "-allowlist", "-job-minute"} {
		assert.Contains(t, buf.String(), flag)
	}
	err := run([]string{"nope"}, &buf)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "fleet-sim --help")
}

// TestAgentRunsWithAgentJSON: a real fleet-agent process provisions
// against fleet-sim serve with DIR/agent.json as it is (its serial and
// state directory given by flags).
func TestAgentRunsWithAgentJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs fleet-sim and fleet-agent")
	}
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sim, agentBin := filepath.Join(tmp, "fleet-sim"), filepath.Join(tmp, "fleet-agent")
	for bin, pkg := range map[string]string{sim: ".", agentBin: "../../../device/cmd/fleet-agent"} {
		out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg).CombinedOutput()
		require.NoError(t, err, string(out))
	}
	dir := filepath.Join(tmp, "sim")
	allow := filepath.Join(tmp, "allowlist.txt")
	require.NoError(t, os.WriteFile(allow, []byte("10000000a1b2c3d4\n"), 0o644))
	var simLog, agentLog bytes.Buffer
	srv := exec.CommandContext(ctx, sim, "serve", "--dir", dir, "--allowlist", allow, "--alpn-listen", "off")
	srv.Stderr = &simLog
	require.NoError(t, srv.Start())
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	require.Eventually(t, func() bool {
		_, err := os.Stat(filepath.Join(dir, "endpoint"))
		return err == nil
	}, 60*time.Second, 20*time.Millisecond, "fleet-sim ready; log: %s", &simLog)

	agent := exec.CommandContext(ctx, agentBin, "run", "--config", filepath.Join(dir, "agent.json"),
		"--serial", "10000000a1b2c3d4", "--state-dir", filepath.Join(tmp, "agent-state"))
	agent.Stdout, agent.Stderr = &agentLog, &agentLog
	require.NoError(t, agent.Start())
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })

	cpURL, err := os.ReadFile(filepath.Join(dir, "control-plane"))
	require.NoError(t, err)
	iotc := iot.New(iot.Options{BaseEndpoint: aws.String(strings.TrimSpace(string(cpURL))), Region: "local-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDLOCAL", "secret", "")})
	require.Eventually(t, func() bool {
		out, err := iotc.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String("local-10000000a1b2c3d4")})
		return err == nil && len(out.Principals) == 1
	}, 90*time.Second, 100*time.Millisecond, "the agent provisioned; agent log: %s", &agentLog)
	require.NoError(t, agent.Process.Signal(syscall.SIGTERM))
}
