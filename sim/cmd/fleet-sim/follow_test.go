package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// simProcess is a running fleet-sim serve.
type simProcess struct {
	dir, allowlist, api string
	iot                 *iot.Client
	rootPEM             []byte
	endpoint            string
	cmd                 *exec.Cmd
	stderr              *testenv.LogBuffer
}

func startSim(t *testing.T, ctx context.Context, allowlist string) *simProcess {
	t.Helper()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "fleet-sim")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, string(out))
	p := &simProcess{dir: filepath.Join(tmp, "sim"), allowlist: filepath.Join(tmp, "allowlist.txt"), stderr: &testenv.LogBuffer{}}
	require.NoError(t, os.WriteFile(p.allowlist, []byte(allowlist), 0o644))
	p.cmd = exec.CommandContext(ctx, bin, "serve", "--dir", p.dir, "--allowlist", p.allowlist, "--alpn-listen", "off")
	p.cmd.Stderr = p.stderr
	require.NoError(t, p.cmd.Start())
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM) // the process this test started, by PID
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
		}
	})
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(filepath.Join(p.dir, "endpoint"))
		p.endpoint = strings.TrimSpace(string(b))
		return err == nil && p.endpoint != ""
	}, 60*time.Second, 20*time.Millisecond, "endpoint file; stderr: %s", p.stderr)
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(p.dir, name))
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	}
	p.api = "http://" + read("api")
	p.rootPEM = []byte(read("root-ca.pem"))
	p.iot = iot.New(iot.Options{BaseEndpoint: aws.String(read("control-plane")), Region: "local-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDLOCAL", "secret", ""), RetryMaxAttempts: 1})
	return p
}

func (p *simProcess) writeAllowlist(t *testing.T, content string) {
	t.Helper()
	require.NoError(t, os.WriteFile(p.allowlist, []byte(content), 0o644))
}

func (p *simProcess) mqtt(t *testing.T, certPEM, keyPEM []byte, clientID string, onLost func()) (paho.Client, error) {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(p.rootPEM))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	opts := paho.NewClientOptions().AddBroker("tls://" + p.endpoint).SetClientID(clientID).SetProtocolVersion(4).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true)
	if onLost != nil {
		opts.SetConnectionLostHandler(func(paho.Client, error) { onLost() })
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(15*time.Second))
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

// provision runs fleet provisioning by claim for serial; it returns the
// device's certificate id, certificate and key, and whether RegisterThing
// accepted it.
func (p *simProcess) provision(t *testing.T, serial string) (string, []byte, []byte, bool) {
	t.Helper()
	claimPEM, err := os.ReadFile(filepath.Join(p.dir, "claim.pem"))
	require.NoError(t, err)
	claimKey, err := os.ReadFile(filepath.Join(p.dir, "claim.key"))
	require.NoError(t, err)
	msgs := make(chan paho.Message, 8)
	cl, err := p.mqtt(t, claimPEM, claimKey, protocol.ClaimClientID(serial), nil)
	require.NoError(t, err)
	defer cl.Disconnect(0)
	tmpl := "iot-fleet-local"
	for _, f := range []string{protocol.CreateCertFromCSRTopic + "/+", protocol.RegisterThingTopic(tmpl) + "/+"} {
		tok := cl.Subscribe(f, 1, func(_ paho.Client, m paho.Message) { msgs <- m })
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error())
	}
	await := func() paho.Message {
		select {
		case m := <-msgs:
			return m
		case <-time.After(15 * time.Second):
			t.Fatal("no provisioning answer")
			return nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}}, key)
	require.NoError(t, err)
	publish := func(topic string, v any) {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		tok := cl.Publish(topic, 1, false, b)
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error())
	}
	publish(protocol.CreateCertFromCSRTopic, protocol.CreateCertFromCSRRequest{CertificateSigningRequest: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	m := await()
	require.Equal(t, protocol.CreateCertFromCSRAcceptedTopic, m.Topic(), string(m.Payload()))
	var cert protocol.CreateCertResponse
	require.NoError(t, json.Unmarshal(m.Payload(), &cert))
	publish(protocol.RegisterThingTopic(tmpl), protocol.RegisterThingRequest{
		CertificateOwnershipToken: cert.CertificateOwnershipToken, Parameters: map[string]string{protocol.ParamSerialNumber: serial},
	})
	m = await()
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return cert.CertificateID, []byte(cert.CertificatePEM), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		m.Topic() == protocol.RegisterThingAcceptedTopic(tmpl)
}

// state is serial's registry state, from the operator API ("" if none).
func (p *simProcess) state(t *testing.T, serial string) string {
	t.Helper()
	resp, err := http.Get(p.api + "/devices/" + serial)
	require.NoError(t, err)
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return ""
	}
	var rec map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rec))
	s, _ := rec["State"].(string)
	return s
}

func serialN(n int) string { return fmt.Sprintf("10000000%08x", n) }

// fleet-sim follows its --allowlist file as production follows the S3
// object: an edit runs the real allowlist sync (a new serial provisions,
// a removed one is revoked: certificate REVOKED, connection closed, thing
// deleted), a bad file changes nothing and is reported with its line
// numbers, the revocation limit applies, and SIGHUP deploys again.
func TestServeFollowsAllowlist(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, b := serialN(0xa), serialN(0xb)
	p := startSim(t, ctx, "# test\n"+a+"\n")

	certA, pemA, keyA, ok := p.provision(t, a)
	require.True(t, ok, "listed serial provisions; stderr: %s", p.stderr)
	lost := make(chan struct{})
	var once sync.Once
	_, err := p.mqtt(t, pemA, keyA, "local-"+a, func() { once.Do(func() { close(lost) }) })
	require.NoError(t, err)
	_, _, _, ok = p.provision(t, b)
	require.False(t, ok, "an unlisted serial is denied")

	// Edit: a removed, b added.
	p.writeAllowlist(t, "# test\n"+b+"\n")
	require.Eventually(t, func() bool {
		out, err := p.iot.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(certA)})
		return err == nil && out.CertificateDescription.Status == types.CertificateStatusRevoked
	}, 30*time.Second, 50*time.Millisecond, "a's certificate is revoked; stderr: %s", p.stderr)
	select {
	case <-lost:
	case <-time.After(15 * time.Second):
		t.Fatal("a's connection was not closed")
	}
	_, err = p.iot.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("local-" + a)})
	var nf *types.ResourceNotFoundException
	require.True(t, errors.As(err, &nf), "a's thing is deleted: %v", err)
	assert.Equal(t, "revoked", p.state(t, a))
	_, err = p.mqtt(t, pemA, keyA, "local-"+a, nil)
	require.Error(t, err, "a's certificate is refused")
	_, _, _, ok = p.provision(t, b)
	require.True(t, ok, "the added serial provisions")

	// A bad file: reported with its line number, nothing changes.
	p.writeAllowlist(t, b+"\nNOT-A-SERIAL\n")
	require.Eventually(t, func() bool { return strings.Contains(p.stderr.String(), "line 2") }, 30*time.Second, 50*time.Millisecond,
		"the bad line is reported; stderr: %s", p.stderr)
	assert.Equal(t, "provisioned", p.state(t, b))

	// The revocation limit: six allowed serials listed, then all removed
	// at once (over the default limit of 5): refused, nothing changes.
	var six []string
	for i := range 6 {
		six = append(six, serialN(0x100+i))
	}
	p.writeAllowlist(t, b+"\n"+strings.Join(six, "\n")+"\n")
	require.Eventually(t, func() bool { return p.state(t, six[5]) == "allowed" }, 30*time.Second, 50*time.Millisecond, "stderr: %s", p.stderr)
	p.writeAllowlist(t, b+"\n")
	require.Eventually(t, func() bool { return strings.Contains(p.stderr.String(), "limit of 5") }, 30*time.Second, 50*time.Millisecond,
		"the refusal is reported; stderr: %s", p.stderr)
	for _, s := range six {
		assert.Equal(t, "allowed", p.state(t, s), "refused: %s unchanged", s)
	}

	// SIGHUP deploys the file again, unchanged.
	before := strings.Count(p.stderr.String(), "allowlist sync refused")
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		out := p.stderr.String()
		return strings.Contains(out, "allowlist reload requested") && strings.Count(out, "allowlist sync refused") > before
	}, 30*time.Second, 50*time.Millisecond, "stderr: %s", p.stderr)
}
