package vm_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/image/inject/injecttest"
)

// signingKey writes a release key pair (ECDSA P-256, as mender verifies)
// and returns the private key's path and the public key PEM.
func signingKey(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	p := filepath.Join(dir, "release.key")
	require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	require.NoError(t, err)
	return p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
}

func requireArtifactTools(t *testing.T) {
	t.Helper()
	injecttest.Require(t)
	for _, tool := range []string{"mender-artifact", "jq", "openssl", "resize2fs"} {
		if _, ok := injecttest.Look(tool); !ok {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing", tool)
			}
			t.Skipf("%s is missing (apt-get install mender-artifact jq openssl e2fsprogs)", tool)
		}
	}
}

func makeArtifacts(t *testing.T, disk, key, out string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b, err := exec.CommandContext(ctx, "bash", "make-artifacts.sh", disk, key, out).CombinedOutput()
	return string(b), err
}

// artifactCat reads a file of the root file system inside an artifact.
func artifactCat(t *testing.T, artifact, p string) string {
	t.Helper()
	out, err := exec.Command("mender-artifact", "cat", artifact+":"+p).Output()
	require.NoError(t, err, "mender-artifact cat %s:%s", artifact, p)
	return string(out)
}

// The test artifacts from an (here: small, synthetic) injected A/B disk:
// signed by the release key, named v2 and v3-bad, rootfs A changed only
// where each release differs.
func TestMakeArtifacts(t *testing.T) {
	requireArtifactTools(t)
	files := injecttest.DefaultRootFiles()
	files["etc/fstab"] = injecttest.ABFstab
	files["etc/iot-fleet-release"] = "v1\n"
	files["etc/mender/artifact_info"] = "artifact_name=v1\n"
	files["etc/fleet-agent/config.json"] = `{"endpoint": "iot.vm.internal", "provisioning": {"templateName": "t", "claimCertFile": "/c", "claimKeyFile": "/k"}, "ota": {"allowedHosts": ["artifacts.vm.internal"], "allowHTTP": true}}`
	// No /usr/local/lib/fleet-agent yet: v3-bad's health check creates it.
	disk := injecttest.NewImage(t, injecttest.Options{AB: true, RootFiles: files})
	before, err := os.ReadFile(disk)
	require.NoError(t, err)
	dir := t.TempDir()
	key, pub := signingKey(t, dir)
	pubFile := filepath.Join(dir, "verify.pem")
	require.NoError(t, os.WriteFile(pubFile, pub, 0o644))
	out := filepath.Join(dir, "artifacts")

	log, err := makeArtifacts(t, disk, key, out)
	require.NoError(t, err, log)
	after, err := os.ReadFile(disk)
	require.NoError(t, err)
	assert.Equal(t, before, after, "the disk is not modified")

	for name, want := range map[string]string{"v2.mender": "v2", "v3-bad.mender": "v3-bad"} {
		a := filepath.Join(out, name)
		// Signed by the release key: verifies with its public half only.
		b, err := exec.Command("mender-artifact", "validate", "-k", pubFile, a).CombinedOutput()
		require.NoError(t, err, "%s", b)
		_, otherPub := signingKey(t, t.TempDir())
		other := filepath.Join(t.TempDir(), "other.pem")
		require.NoError(t, os.WriteFile(other, otherPub, 0o644))
		_, err = exec.Command("mender-artifact", "validate", "-k", other, a).CombinedOutput()
		assert.Error(t, err, "%s must not verify with another key", name)

		info, err := exec.Command("mender-artifact", "read", a).Output()
		require.NoError(t, err)
		assert.Contains(t, string(info), "Name: "+want)
		assert.Contains(t, string(info), "qemu-arm64")
		assert.Contains(t, string(info), "rootfs-image")

		assert.Equal(t, want+"\n", artifactCat(t, a, "/etc/iot-fleet-release"))
		assert.Equal(t, "artifact_name="+want+"\n", artifactCat(t, a, "/etc/mender/artifact_info"))
		assert.Equal(t, injecttest.ABFstab, artifactCat(t, a, "/etc/fstab"), "everything else is rootfs A's")
	}

	// v2 keeps the configuration; v3-bad adds the failing health check.
	v2 := filepath.Join(out, "v2.mender")
	v3 := filepath.Join(out, "v3-bad.mender")
	assert.Equal(t, files["etc/fleet-agent/config.json"], artifactCat(t, v2, "/etc/fleet-agent/config.json"))
	var cfg config.Config
	raw := artifactCat(t, v3, "/etc/fleet-agent/config.json")
	cfg, err = config.Parse([]byte(raw))
	require.NoError(t, err)
	require.Len(t, cfg.OTA.HealthChecks, 1)
	assert.Equal(t, "release", cfg.OTA.HealthChecks[0].Name)
	assert.Equal(t, []string{"/usr/local/lib/fleet-agent/release-health-check"}, cfg.OTA.HealthChecks[0].Command)
	var doc map[string]any
	require.NoError(t, json.Unmarshal([]byte(raw), &doc))
	assert.Equal(t, "iot.vm.internal", doc["endpoint"], "the rest of the configuration is kept")
	check := artifactCat(t, v3, "/usr/local/lib/fleet-agent/release-health-check")
	assert.Contains(t, check, "exit 1")
	script := filepath.Join(t.TempDir(), "check")
	require.NoError(t, os.WriteFile(script, []byte(check), 0o755))
	assert.Error(t, exec.Command(script).Run(), "the v3-bad health check fails")
	_, err = exec.Command("mender-artifact", "cat", v2+":/usr/local/lib/fleet-agent/release-health-check").Output()
	assert.Error(t, err, "v2 has no failing health check")

	sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	require.NoError(t, err)
	assert.Contains(t, string(sums), " v2.mender\n")
	assert.Contains(t, string(sums), " v3-bad.mender\n")
}

func TestMakeArtifactsRefusals(t *testing.T) {
	requireArtifactTools(t)
	dir := t.TempDir()
	key, _ := signingKey(t, dir)
	loose := filepath.Join(dir, "loose.key")
	b, err := os.ReadFile(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(loose, b, 0o644))

	files := injecttest.DefaultRootFiles()
	files["etc/fstab"] = injecttest.ABFstab
	noConfig := injecttest.NewImage(t, injecttest.Options{AB: true, RootFiles: files})
	pi := injecttest.NewImage(t, injecttest.Options{})

	for name, c := range map[string]struct {
		disk, key, want string
	}{
		"world-readable key": {noConfig, loose, "must be private to its owner"},
		"not A/B":            {pi, key, "does not have the A/B layout"},
		"not injected":       {noConfig, key, "make the artifacts from an injected disk"},
		"no disk":            {filepath.Join(dir, "nope.img"), key, "is not a file"},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := makeArtifacts(t, c.disk, c.key, filepath.Join(t.TempDir(), "out"))
			require.Error(t, err)
			assert.Contains(t, out, c.want)
			assert.False(t, strings.Contains(out, "wrote "), out)
		})
	}
}
