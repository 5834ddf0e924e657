package image_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/image"
	"github.com/iot-fleet/iot-fleet/device/image/inject"
	"github.com/iot-fleet/iot-fleet/device/image/inject/injecttest"
	"github.com/iot-fleet/iot-fleet/device/ota"
)

func manifest(t *testing.T) image.Manifest {
	t.Helper()
	m, err := image.LoadManifest()
	require.NoError(t, err)
	return m
}

func TestManifestCoversEveryRecipeFile(t *testing.T) {
	m := manifest(t)
	used := map[string]bool{}
	for _, e := range m.Entries {
		used[e.Source] = true
	}
	for _, dir := range []string{"rootfs", "boot", "certs"} {
		require.NoError(t, fs.WalkDir(image.Files(), dir, func(p string, d fs.DirEntry, err error) error {
			require.NoError(t, err)
			if !d.IsDir() {
				assert.True(t, used[p], "%s is in the recipe but manifest.txt does not install it", p)
			}
			return nil
		}))
	}
}

func TestManifestSecurityProperties(t *testing.T) {
	m := manifest(t)
	want := map[string]struct {
		kind image.EntryKind
		mode fs.FileMode
	}{
		"/etc/fleet-agent/claim":                      {image.KindDir, 0o700},
		"/etc/fleet-agent/claim/claim.key":            {image.KindFile, 0o600},
		"/var/lib/fleet-agent":                        {image.KindDir, 0o700},
		"/usr/bin/fleet-agent":                        {image.KindFile, 0o755},
		"/usr/local/lib/fleet-agent/firstboot.sh":     {image.KindFile, 0o755},
		"/etc/systemd/system/fleet-agent.service":     {image.KindFile, 0o644},
		"/etc/systemd/system/fleet-firstboot.service": {image.KindFile, 0o644},
		"/etc/mender/mender.conf":                     {image.KindFile, 0o600},
		"/etc/mender/artifact-verify-key.pem":         {image.KindFile, 0o644},
	}
	for p, w := range want {
		e, ok := m.Find(p)
		require.True(t, ok, p)
		assert.Equal(t, w.kind, e.Kind, p)
		assert.Equal(t, w.mode, e.Mode, p)
	}
	for _, e := range m.Entries {
		if e.Kind != image.KindBoot {
			assert.Equal(t, [2]uint32{0, 0}, [2]uint32{e.UID, e.GID}, "%s must be root-owned", e.Path)
		}
		if e.Kind == image.KindFile && e.Mode&0o022 != 0 {
			t.Errorf("%s is writable by group or others (%04o)", e.Path, e.Mode)
		}
	}
	// Both units are enabled the way systemctl enable does it.
	for _, unit := range []string{"fleet-agent.service", "fleet-firstboot.service"} {
		e, ok := m.Find("/etc/systemd/system/multi-user.target.wants/" + unit)
		require.True(t, ok, unit)
		assert.Equal(t, image.KindLink, e.Kind)
		assert.Equal(t, "/etc/systemd/system/"+unit, e.Source)
		_, ok = m.Find(e.Source)
		assert.True(t, ok, "the link target %s is installed", e.Source)
	}
}

func TestParseManifestErrorsNameTheLine(t *testing.T) {
	cases := map[string]struct{ text, want string }{
		"fields":      {"dir /x 0755\n", "line 1: want 5 or 6 fields"},
		"kind":        {"\n# c\nfifo /x 0644 0:0 -\n", "line 3: kind \"fifo\""},
		"relative":    {"dir x 0755 0:0 -\n", "want an absolute, clean path"},
		"mode":        {"dir /x 0999 0:0 -\n", "mode \"0999\""},
		"owner":       {"dir /x 0755 root -\n", "numeric uid:gid"},
		"link mode":   {"link /x 0777 0:0 /y\n", "link entries take"},
		"link target": {"link /x - 0:0 y\n", "want an absolute path"},
		"missing":     {"file /x 0644 0:0 rootfs/nope\n", "not in the embedded recipe"},
		"boot owner":  {"boot /x - 0:0 empty\n", "boot (FAT) entries have no owner"},
		"boot subdir": {"boot /a/x - - empty\n", "only files at the top"},
		"duplicate":   {"dir /x 0755 0:0 -\ndir /x 0700 0:0 -\n", "line 2: /x is already listed on line 1"},
		"condition":   {"dir /x 0755 0:0 - when=y\n", "want if=INPUT"},
		"empty":       {"# nothing\n", "no entries"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := image.ParseManifest([]byte(c.text))
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestPlanInputs(t *testing.T) {
	m := manifest(t)
	all, optional := m.Inputs()
	assert.Equal(t, []string{"agent", "agent-unit", "artifact-verify-key", "claim-cert", "claim-key", "config", "fstab", "image-env", "mender-conf", "root-ca", "ssh-authorized-keys"}, all)
	assert.Equal(t, map[string]bool{"fstab": true, "root-ca": true, "ssh-authorized-keys": true}, optional)

	dir := t.TempDir()
	src := filepath.Join(dir, "in")
	require.NoError(t, os.WriteFile(src, []byte("x"), 0o600))
	inputs := map[string]string{}
	for _, in := range all {
		if !optional[in] {
			inputs[in] = src
		}
	}
	plan, err := m.Plan(inputs, t.TempDir())
	require.NoError(t, err)
	paths := map[string]inject.Entry{}
	for _, e := range plan.Root {
		paths[e.Path] = e
	}
	assert.NotContains(t, paths, "/etc/ssh/authorized_keys/pi", "optional entries are skipped without their input")
	require.Len(t, plan.Boot, 1)
	assert.Equal(t, "userconf.txt", plan.Boot[0].Name)
	b, err := os.ReadFile(plan.Boot[0].Source)
	require.NoError(t, err)
	assert.Equal(t, "pi:*\n", string(b), "the default user gets no usable password")
	assert.Equal(t, inject.KindSymlink, paths["/etc/systemd/system/multi-user.target.wants/fleet-agent.service"].Kind)

	inputs["ssh-authorized-keys"] = src
	plan, err = m.Plan(inputs, t.TempDir())
	require.NoError(t, err)
	assert.Len(t, plan.Boot, 2, "ssh is switched on with authorized keys")

	delete(inputs, "claim-key")
	_, err = m.Plan(inputs, t.TempDir())
	require.Error(t, err)
	assert.Contains(t, err.Error(), `input "claim-key" is required`)

	inputs["claim-key"], inputs["claim-keys"] = src, src
	_, err = m.Plan(inputs, t.TempDir())
	require.Error(t, err)
	assert.Contains(t, err.Error(), `input "claim-keys": the manifest does not use it`)
}

func stackValues() map[string]string {
	return map[string]string{
		"iotDataEndpoint":      "abc123-ats.iot.eu-west-1.amazonaws.com",
		"provisioningTemplate": "iot-fleet-dev",
		"artifactsBucket":      "iot-fleet-dev-artifacts-1a2b3c",
		"region":               "eu-west-1",
		"serialPattern":        "^[0-9a-f]{16}$",
		"environment":          "dev",
	}
}

// The rendered configuration is accepted by the agent's own config loader:
// the template cannot drift from device/config's schema unnoticed.
func TestRenderConfigIsAValidAgentConfig(t *testing.T) {
	out, err := image.RenderConfig(stackValues())
	require.NoError(t, err)
	cfg, err := config.Parse(out)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, "abc123-ats.iot.eu-west-1.amazonaws.com", cfg.Endpoint)
	assert.Equal(t, "iot-fleet-dev", cfg.Provisioning.TemplateName)
	m := manifest(t)
	for _, p := range []string{cfg.RootCAFile, cfg.Provisioning.ClaimCertFile, cfg.Provisioning.ClaimKeyFile, cfg.StateDir} {
		_, ok := m.Find(p)
		assert.True(t, ok, "config names %s, which the image must install", p)
	}
	key, _ := m.Find(cfg.Provisioning.ClaimKeyFile)
	assert.Equal(t, fs.FileMode(0o600), key.Mode)

	// OTA: artifacts only from the stack's artifacts bucket; mender's
	// verify key is the one the image installs.
	assert.Equal(t, []string{
		"iot-fleet-dev-artifacts-1a2b3c.s3.eu-west-1.amazonaws.com",
		"iot-fleet-dev-artifacts-1a2b3c.s3.amazonaws.com",
		"s3.eu-west-1.amazonaws.com/iot-fleet-dev-artifacts-1a2b3c",
		"s3.amazonaws.com/iot-fleet-dev-artifacts-1a2b3c",
	}, cfg.OTA.AllowedHosts)
	assert.Equal(t, image.ArtifactVerifyKeyPath, cfg.OTA.ArtifactVerifyKey)
	_, ok := m.Find(cfg.OTA.ArtifactVerifyKey)
	assert.True(t, ok, "the image installs the verify key the agent checks")
	policy := ota.Policy{AllowedHosts: cfg.OTA.AllowedHosts}
	for _, u := range []string{
		"https://iot-fleet-dev-artifacts-1a2b3c.s3.eu-west-1.amazonaws.com/rpi.mender?X-Amz-Signature=1",
		"https://s3.amazonaws.com/iot-fleet-dev-artifacts-1a2b3c/rpi.mender?X-Amz-Signature=1",
	} {
		assert.NoError(t, ota.Document{URL: u}.Validate(policy), u)
	}
	for _, u := range []string{
		"https://other-bucket.s3.eu-west-1.amazonaws.com/rpi.mender",
		"https://s3.amazonaws.com/other-bucket/rpi.mender",
	} {
		assert.Error(t, ota.Document{URL: u}.Validate(policy), u)
	}
	// The template is checked the way check-job checks it.
	placeholder := "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/iot-fleet-dev-artifacts-1a2b3c/rpi.mender}"
	assert.NoError(t, ota.Document{URL: placeholder}.Validate(ota.Policy{Template: true, AllowedHosts: cfg.OTA.AllowedHosts}))
}

func TestRenderConfigNeedsTheArtifactsBucket(t *testing.T) {
	v := stackValues()
	delete(v, "artifactsBucket")
	_, err := image.RenderConfig(v)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no value for artifactsBucket")
}

func TestMenderConf(t *testing.T) {
	out, err := image.MenderConf(nil)
	require.NoError(t, err)
	assert.JSONEq(t, `{"ArtifactVerifyKey":"/etc/mender/artifact-verify-key.pem"}`, string(out))

	// A base image's configuration (mender-convert's) is kept; its own
	// verify key setting is replaced.
	out, err = image.MenderConf([]byte(`{"RootfsPartA":"/dev/mmcblk0p2","RootfsPartB":"/dev/mmcblk0p3","ArtifactVerifyKey":"/etc/mender/old.pem","ServerURL":""}`))
	require.NoError(t, err)
	assert.JSONEq(t, `{"RootfsPartA":"/dev/mmcblk0p2","RootfsPartB":"/dev/mmcblk0p3","ArtifactVerifyKey":"/etc/mender/artifact-verify-key.pem","ServerURL":""}`, string(out))

	_, err = image.MenderConf([]byte(`["not", "an object"]`))
	assert.ErrorContains(t, err, "is not a JSON object")
	_, err = image.MenderConf([]byte(`null`))
	assert.ErrorContains(t, err, "is not a JSON object")
}

func TestCheckArtifactVerifyKey(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	require.NoError(t, err)
	require.NoError(t, image.CheckArtifactVerifyKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	priv, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	assert.ErrorContains(t, image.CheckArtifactVerifyKey(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: priv})), "never a private key")
	assert.ErrorContains(t, image.CheckArtifactVerifyKey(nil), "no PEM block")
}

func TestRenderConfigErrors(t *testing.T) {
	v := stackValues()
	delete(v, "iotDataEndpoint")
	v["provisioningTemplate"] = "[secret]"
	_, err := image.RenderConfig(v)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no value for iotDataEndpoint, provisioningTemplate")

	// A value cannot break out of its JSON string.
	v = stackValues()
	v["provisioningTemplate"] = `x", "logLevel": "debug`
	out, err := image.RenderConfig(v)
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(out, &doc))
	assert.Equal(t, "info", doc["logLevel"])
	assert.Equal(t, `x", "logLevel": "debug`, doc["provisioning"].(map[string]any)["templateName"])
}

func TestParseStackOutputs(t *testing.T) {
	out, err := image.ParseStackOutputs([]byte(`{"iotDataEndpoint":"e","claimPrivateKey":"[secret]","n":3,"o":{"a":1}}`))
	require.NoError(t, err)
	assert.Equal(t, image.StackOutputs{"iotDataEndpoint": "e", "claimPrivateKey": "[secret]"}, out)
	_, err = image.ParseStackOutputs([]byte(`[1]`))
	assert.ErrorContains(t, err, "not a JSON object")
}

func TestImageEnv(t *testing.T) {
	b, err := image.ImageEnv("prod", "^[0-9a-f]{16}$", "pi")
	require.NoError(t, err)
	assert.Contains(t, string(b), "\nFLEET_ENV=prod\nFLEET_SERIAL_PATTERN=^[0-9a-f]{16}$\nFLEET_ADMIN_USER=pi\n")
	_, err = image.ImageEnv("Prod env", "", "")
	assert.ErrorContains(t, err, "want [a-z0-9-]+")
	_, err = image.ImageEnv("dev", "a\nFLEET_ENV=x", "")
	assert.ErrorContains(t, err, "single-line")
}

// The embedded root CA is Amazon Root CA 1 (fingerprint published by Amazon
// Trust Services), the CA of every AWS IoT Core ATS endpoint.
func TestRootCAIsAmazonRootCA1(t *testing.T) {
	b, err := fs.ReadFile(image.Files(), "certs/AmazonRootCA1.pem")
	require.NoError(t, err)
	block, rest := pem.Decode(b)
	require.NotNil(t, block)
	assert.Empty(t, strings.TrimSpace(string(rest)))
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	assert.Equal(t, "Amazon Root CA 1", cert.Subject.CommonName)
	sum := sha256.Sum256(block.Bytes)
	assert.Equal(t, "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e", hex.EncodeToString(sum[:]))
}

// claimPair makes a throw-away certificate and key like the claim secret's.
func claimPair(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "claim"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func TestClaimBundle(t *testing.T) {
	cert, key := claimPair(t)
	_, otherKey := claimPair(t)
	good, _ := json.Marshal(map[string]string{"certificatePem": string(cert), "privateKey": string(key), "certificateId": "abc"})
	c, err := image.ParseClaimBundle(good)
	require.NoError(t, err)
	assert.Equal(t, string(key), c.PrivateKey)

	mismatch, _ := json.Marshal(map[string]string{"certificatePem": string(cert), "privateKey": string(otherKey)})
	_, err = image.ParseClaimBundle(mismatch)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "do not form a key pair")
	assert.NotContains(t, err.Error(), "PRIVATE KEY", "errors never carry key material")

	_, err = image.ParseClaimBundle([]byte(`{"certificatePem":"x"}`))
	assert.ErrorContains(t, err, "certificatePem and privateKey are required")
	assert.ErrorContains(t, image.CheckClaimPair(key, key), "not a PEM CERTIFICATE")
	assert.ErrorContains(t, image.CheckClaimPair(cert, cert), "not a PEM private key")
}

func TestCheckPrivateFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	require.NoError(t, os.WriteFile(p, []byte("k"), 0o644))
	assert.ErrorContains(t, image.CheckPrivateFile(p), "must be 0600")
	require.NoError(t, os.Chmod(p, 0o600))
	assert.NoError(t, image.CheckPrivateFile(p))
}

func TestCheckAgentUnit(t *testing.T) {
	m := manifest(t)
	good := "[Service]\nExecStart=/usr/bin/fleet-agent run --config /etc/fleet-agent/config.json\n"
	assert.NoError(t, image.CheckAgentUnit([]byte(good), m))
	assert.ErrorContains(t, image.CheckAgentUnit([]byte("[Service]\nExecStart=/usr/local/bin/fleet-agent run\n"), m), "does not start /usr/bin/fleet-agent")
	assert.ErrorContains(t, image.CheckAgentUnit([]byte("[Service]\nExecStart=/usr/bin/fleet-agent --config /etc/fleet-agent/agent.json\n"), m), "/etc/fleet-agent/agent.json, which the image manifest does not install")
	assert.ErrorContains(t, image.CheckAgentUnit([]byte("[Service]\n"), m), "exactly one")
}

// The real unit from device/systemd must fit the image: binary path,
// configuration path.
func TestRealAgentUnitFitsTheImage(t *testing.T) {
	unit, err := os.ReadFile(agentUnitPath(t))
	require.NoError(t, err)
	require.NoError(t, image.CheckAgentUnit(unit, manifest(t)))
}

func TestCheckAgentBinary(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent")
	require.NoError(t, os.WriteFile(p, injecttest.ELFHeader(183), 0o755)) // EM_AARCH64
	assert.NoError(t, image.CheckAgentBinary(p, "arm64"))
	assert.ErrorContains(t, image.CheckAgentBinary(p, "arm"), "want an executable for arm")
	assert.ErrorContains(t, image.CheckAgentBinary(p, "riscv"), "want arm64, arm or amd64")
	require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755))
	assert.ErrorContains(t, image.CheckAgentBinary(p, "arm64"), "not an ELF file")
}
