package image_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/image/inject"
	"github.com/iot-fleet/iot-fleet/device/image/inject/injecttest"
)

func goTool(t *testing.T) string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	require.FileExists(t, p)
	return p
}

func sha256File(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// build-image.sh is what `make image` and the build-image workflow run: here
// it turns a small real disk image (standing in for Raspberry Pi OS Lite,
// xz-compressed like the published one) into an iot-fleet image, offline:
// stack outputs and claim secret come from files, as in the workflow.
func TestBuildImageScript(t *testing.T) {
	injecttest.Require(t)
	requireTool(t, "xz", "xz-utils")
	agentUnitPath(t) // the script installs device/systemd/fleet-agent.service
	dir := t.TempDir()

	base := injecttest.NewImage(t, injecttest.Options{})
	out, err := exec.Command("xz", "-0", "-T1", "-k", base).CombinedOutput()
	require.NoError(t, err, string(out))
	baseXZ := base + ".xz"

	agent := filepath.Join(dir, "fleet-agent")
	require.NoError(t, os.WriteFile(agent, injecttest.ELFHeader(183), 0o755))
	outputs := filepath.Join(dir, "outputs.json")
	require.NoError(t, os.WriteFile(outputs, []byte(`{"iotDataEndpoint":"x-ats.iot.eu-west-1.amazonaws.com","provisioningTemplate":"iot-fleet-prod","artifactsBucket":"iot-fleet-prod-artifacts","region":"eu-west-1"}`), 0o600))
	verifyKey := filepath.Join(dir, "artifact-verify-key.pem")
	require.NoError(t, os.WriteFile(verifyKey, publicKeyPEM(t), 0o644))
	cert, key := claimPair(t)
	secret, err := json.Marshal(map[string]string{"certificatePem": string(cert), "privateKey": string(key)})
	require.NoError(t, err)
	claim := filepath.Join(dir, "claim.json")
	require.NoError(t, os.WriteFile(claim, secret, 0o600))

	outDir := filepath.Join(dir, "out")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "build-image.sh")
	cmd.Env = append(os.Environ(),
		"IMAGE_ENV=prod", "RASPIOS_URL="+baseXZ, "RASPIOS_SHA256="+sha256File(t, baseXZ),
		"STACK_OUTPUTS="+outputs, "CLAIM_SECRET="+claim, "AGENT_BIN="+agent, "ARTIFACT_VERIFY_KEY="+verifyKey,
		"OUT_DIR="+outDir, "CACHE_DIR="+filepath.Join(dir, "cache"), "VERSION=t1",
		"GO="+goTool(t), "XZ_OPT=-0")
	outb, err := cmd.CombinedOutput()
	require.NoError(t, err, string(outb))
	assert.True(t, strings.HasSuffix(strings.TrimSpace(string(outb)), filepath.Join(outDir, "iot-fleet-prod-t1.img.xz")), string(outb))

	img := filepath.Join(outDir, "iot-fleet-prod-t1.img.xz")
	st, err := os.Stat(img)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the image holds the claim key")
	sum, err := os.ReadFile(img + ".sha256")
	require.NoError(t, err)
	assert.Equal(t, sha256File(t, img)+"  iot-fleet-prod-t1.img.xz\n", string(sum))

	raw := filepath.Join(dir, "check.img")
	f, err := os.Create(raw)
	require.NoError(t, err)
	unxz := exec.Command("xz", "-dc", img)
	unxz.Stdout = f
	require.NoError(t, unxz.Run())
	require.NoError(t, f.Close())
	tools, err := inject.FindTools()
	require.NoError(t, err)
	l, err := inject.ReadLayout(raw)
	require.NoError(t, err)
	root, err := inject.NewRoot(raw, l.Root, tools)
	require.NoError(t, err)
	b, err := root.ReadFile(ctx, "/etc/fleet-agent/config.json")
	require.NoError(t, err)
	cfg, err := config.Parse(b)
	require.NoError(t, err)
	assert.Equal(t, "iot-fleet-prod", cfg.Provisioning.TemplateName)
	k, err := root.ReadFile(ctx, "/etc/fleet-agent/claim/claim.key")
	require.NoError(t, err)
	assert.Equal(t, key, k)
	vk, err := root.ReadFile(ctx, "/etc/mender/artifact-verify-key.pem")
	require.NoError(t, err)
	want, err := os.ReadFile(verifyKey)
	require.NoError(t, err)
	assert.Equal(t, want, vk)
	assert.Contains(t, cfg.OTA.AllowedHosts, "iot-fleet-prod-artifacts.s3.eu-west-1.amazonaws.com")

	// Without the verify key there is no image: mender would accept
	// unsigned artifacts.
	nokey := exec.CommandContext(ctx, "bash", "build-image.sh")
	nokey.Env = append(cmd.Env, "ARTIFACT_VERIFY_KEY=")
	outb, err = nokey.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(outb), "ARTIFACT_VERIFY_KEY is required")

	// A base image that does not match its checksum is refused.
	bad := exec.CommandContext(ctx, "bash", "build-image.sh")
	bad.Env = append(cmd.Env, "RASPIOS_SHA256="+strings.Repeat("0", 64), "CACHE_DIR="+filepath.Join(dir, "cache2"))
	outb, err = bad.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(outb), "does not match RASPIOS_SHA256")
}

func publicKeyPEM(t *testing.T) []byte {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}
