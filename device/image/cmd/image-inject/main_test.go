package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/image/inject"
	"github.com/iot-fleet/iot-fleet/device/image/inject/injecttest"
)

type fixture struct {
	dir, img, agent, unit, outputs, secret string
	verifyKey                              string
	key, verifyKeyPEM                      []byte
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	return newFixtureWith(t, injecttest.Options{})
}

func newFixtureWith(t *testing.T, opts injecttest.Options) fixture {
	t.Helper()
	injecttest.Require(t)
	f := fixture{dir: t.TempDir()}
	f.img = injecttest.NewImage(t, opts)
	f.agent = filepath.Join(f.dir, "fleet-agent-linux-arm64")
	require.NoError(t, os.WriteFile(f.agent, injecttest.ELFHeader(183), 0o755))
	f.unit = filepath.Join("..", "..", "..", "systemd", "fleet-agent.service")
	if _, err := os.Stat(f.unit); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing", f.unit)
		}
		t.Skipf("%s does not exist yet", f.unit)
	}
	f.outputs = filepath.Join(f.dir, "outputs.json")
	require.NoError(t, os.WriteFile(f.outputs, []byte(`{
  "iotDataEndpoint": "abc123-ats.iot.eu-west-1.amazonaws.com",
  "iotCredentialsEndpoint": "abc123.credentials.iot.eu-west-1.amazonaws.com",
  "provisioningTemplate": "iot-fleet-dev",
  "artifactsBucket": "iot-fleet-dev-artifacts-1a2b3c",
  "region": "eu-west-1",
  "roleAlias": "iot-fleet-dev-token-exchange",
  "claimPrivateKey": "[secret]",
  "claimCertificateSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:iot-fleet/dev/claim-certificate-AbCdEf"
}`), 0o644))

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "claim"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	f.key = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	secret, err := json.Marshal(map[string]string{"certificateId": "c0ffee", "certificatePem": string(certPEM), "privateKey": string(f.key)})
	require.NoError(t, err)
	f.secret = filepath.Join(f.dir, "claim.json")
	require.NoError(t, os.WriteFile(f.secret, secret, 0o600))

	// The release key's public half (the private half never leaves the
	// release machine).
	release, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	pub, err := x509.MarshalPKIXPublicKey(&release.PublicKey)
	require.NoError(t, err)
	f.verifyKeyPEM = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	f.verifyKey = filepath.Join(f.dir, "artifact-verify-key.pem")
	require.NoError(t, os.WriteFile(f.verifyKey, f.verifyKeyPEM, 0o644))
	return f
}

func (f fixture) args(extra ...string) []string {
	return append([]string{"-image", f.img, "-env", "dev", "-stack-outputs", f.outputs,
		"-agent", f.agent, "-agent-unit", f.unit, "-claim-secret", f.secret, "-artifact-verify-key", f.verifyKey}, extra...)
}

func runTool(t *testing.T, args []string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), args, io.Discard)
}

func open(t *testing.T, img string) (*inject.Root, *inject.Boot) {
	t.Helper()
	tools, err := inject.FindTools()
	require.NoError(t, err)
	l, err := inject.ReadLayout(img)
	require.NoError(t, err)
	r, err := inject.NewRoot(img, l.Root, tools)
	require.NoError(t, err)
	b, err := inject.NewBoot(img, l.Boot, tools)
	require.NoError(t, err)
	return r, b
}

// The pipeline's injection step, end to end, on a real disk image; then the
// image is read back as the Pi would see it.
func TestImageInjectBuildsABootableLayout(t *testing.T) {
	f := newFixture(t)
	keys := filepath.Join(f.dir, "authorized_keys")
	require.NoError(t, os.WriteFile(keys, []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHn9 admin@example\n"), 0o644))
	ctx := context.Background()
	// The base image carries mender's configuration (as mender-convert
	// writes it): it is kept, with the verify key added.
	base := filepath.Join(f.dir, "base-mender.conf")
	require.NoError(t, os.WriteFile(base, []byte(`{"RootfsPartA": "/dev/mmcblk0p2", "RootfsPartB": "/dev/mmcblk0p3"}`), 0o600))
	root, boot := open(t, f.img)
	require.NoError(t, root.Apply(ctx, []inject.Entry{
		{Kind: inject.KindDir, Path: "/etc/mender", Mode: 0o755},
		{Kind: inject.KindFile, Path: "/etc/mender/mender.conf", Mode: 0o644, Source: base},
	}))
	require.NoError(t, runTool(t, f.args("-ssh-authorized-keys", keys)))
	root, boot = open(t, f.img)
	stat := func(p string) inject.Inode {
		ino, err := root.Stat(ctx, p)
		require.NoError(t, err, p)
		assert.Equal(t, [2]uint32{0, 0}, [2]uint32{ino.UID, ino.GID}, "%s root-owned", p)
		return ino
	}
	for p, want := range map[string]struct {
		kind inject.Kind
		mode os.FileMode
	}{
		"/usr/bin/fleet-agent":                    {inject.KindFile, 0o755},
		"/etc/fleet-agent/claim":                  {inject.KindDir, 0o700},
		"/etc/fleet-agent/claim/claim.key":        {inject.KindFile, 0o600},
		"/etc/fleet-agent/claim/claim.crt":        {inject.KindFile, 0o644},
		"/var/lib/fleet-agent":                    {inject.KindDir, 0o700},
		"/etc/fleet-agent/config.json":            {inject.KindFile, 0o644},
		"/usr/local/lib/fleet-agent/firstboot.sh": {inject.KindFile, 0o755},
		"/etc/ssh/authorized_keys/pi":             {inject.KindFile, 0o644},
		"/etc/mender/mender.conf":                 {inject.KindFile, 0o600},
		"/etc/mender/artifact-verify-key.pem":     {inject.KindFile, 0o644},
	} {
		ino := stat(p)
		assert.Equal(t, want.kind, ino.Kind, p)
		assert.Equal(t, want.mode, ino.Mode, p)
	}
	for _, unit := range []string{"fleet-agent.service", "fleet-firstboot.service"} {
		link := stat("/etc/systemd/system/multi-user.target.wants/" + unit)
		assert.Equal(t, inject.KindSymlink, link.Kind)
		assert.Equal(t, "/etc/systemd/system/"+unit, link.Target)
		assert.Equal(t, inject.KindFile, stat(link.Target).Kind)
	}

	key, err := root.ReadFile(ctx, "/etc/fleet-agent/claim/claim.key")
	require.NoError(t, err)
	assert.Equal(t, f.key, key)
	unit, err := os.ReadFile(f.unit)
	require.NoError(t, err)
	got, err := root.ReadFile(ctx, "/etc/systemd/system/fleet-agent.service")
	require.NoError(t, err)
	assert.Equal(t, unit, got, "the agent unit is copied from device/systemd")

	raw, err := root.ReadFile(ctx, "/etc/fleet-agent/config.json")
	require.NoError(t, err)
	cfg, err := config.Parse(raw)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	assert.Equal(t, "abc123-ats.iot.eu-west-1.amazonaws.com", cfg.Endpoint)
	assert.Equal(t, "iot-fleet-dev", cfg.Provisioning.TemplateName)
	assert.Equal(t, "/etc/fleet-agent/claim/claim.key", cfg.Provisioning.ClaimKeyFile)

	assert.Equal(t, "/etc/mender/artifact-verify-key.pem", cfg.OTA.ArtifactVerifyKey)
	assert.Contains(t, cfg.OTA.AllowedHosts, "iot-fleet-dev-artifacts-1a2b3c.s3.eu-west-1.amazonaws.com")
	vk, err := root.ReadFile(ctx, "/etc/mender/artifact-verify-key.pem")
	require.NoError(t, err)
	assert.Equal(t, f.verifyKeyPEM, vk)
	mc, err := root.ReadFile(ctx, "/etc/mender/mender.conf")
	require.NoError(t, err)
	assert.JSONEq(t, `{"RootfsPartA": "/dev/mmcblk0p2", "RootfsPartB": "/dev/mmcblk0p3", "ArtifactVerifyKey": "/etc/mender/artifact-verify-key.pem"}`, string(mc))

	env, err := root.ReadFile(ctx, "/etc/fleet-agent/image.env")
	require.NoError(t, err)
	assert.Contains(t, string(env), "\nFLEET_ENV=dev\n")

	userconf, err := boot.ReadFile(ctx, "userconf.txt")
	require.NoError(t, err)
	assert.Equal(t, "pi:*\n", string(userconf))
	ssh, err := boot.ReadFile(ctx, "ssh")
	require.NoError(t, err)
	assert.Empty(t, ssh)
	require.NoError(t, root.Check(ctx))
}

func TestImageInjectWithoutSSHKeysLeavesSSHOff(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, runTool(t, f.args()))
	root, boot := open(t, f.img)
	_, err := boot.ReadFile(context.Background(), "ssh")
	assert.Error(t, err, "no ssh file on the boot partition")
	_, err = root.Stat(context.Background(), "/etc/ssh/authorized_keys/pi")
	assert.ErrorIs(t, err, inject.ErrNotExist)
	_, err = root.Stat(context.Background(), "/etc/ssh/sshd_config.d/10-fleet-hardening.conf")
	assert.NoError(t, err)
}

func TestImageInjectRefusesBadInputsAndLeavesTheImageAlone(t *testing.T) {
	f := newFixture(t)
	loose := filepath.Join(f.dir, "loose.json")
	b, err := os.ReadFile(f.secret)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(loose, b, 0o644))

	noEndpoint := filepath.Join(f.dir, "partial.json")
	require.NoError(t, os.WriteFile(noEndpoint, []byte(`{"provisioningTemplate":"iot-fleet-dev"}`), 0o644))

	privKey := filepath.Join(f.dir, "release.key")
	require.NoError(t, os.WriteFile(privKey, f.key, 0o600))
	noBucket := filepath.Join(f.dir, "no-bucket.json")
	require.NoError(t, os.WriteFile(noBucket, []byte(`{"iotDataEndpoint":"e-ats.iot.eu-west-1.amazonaws.com","provisioningTemplate":"iot-fleet-dev","region":"eu-west-1"}`), 0o644))

	amd64 := filepath.Join(f.dir, "fleet-agent-amd64")
	require.NoError(t, os.WriteFile(amd64, injecttest.ELFHeader(62), 0o755))

	cases := map[string]refusal{
		"world-readable secret": {f.args("-claim-secret", loose), "must be 0600"},
		"missing output":        {f.args("-stack-outputs", noEndpoint), "iotDataEndpoint"},
		"wrong architecture":    {f.args("-agent", amd64), "want an executable for arm64"},
		"bad environment":       {f.args("-env", "Prod"), "want [a-z0-9-]+"},
		"bad serial pattern":    {f.args("-serial-pattern", "^[0-9"), "-serial-pattern"},
		"two claim sources":     {f.args("-claim-key", f.secret), "not both"},
		"no image":              {[]string{"-env", "dev"}, "-image is required"},
		"no verify key":         {f.args("-artifact-verify-key", ""), "-artifact-verify-key is required"},
		"private verify key":    {f.args("-artifact-verify-key", privKey), "never a private key"},
		"missing verify key":    {f.args("-artifact-verify-key", filepath.Join(f.dir, "nope.pem")), "no such file"},
		"no artifacts bucket":   {f.args("-stack-outputs", noBucket), "no value for artifactsBucket"},
	}
	f.requireRefused(t, cases)
}

// caPEM makes a throw-away CA certificate (the local IoT Core's root CA).
func caPEM(t *testing.T, isCA bool) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "local IoT Core CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: isCA, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

const fwCfgSerial = "/sys/firmware/qemu_fw_cfg/by_name/opt/iot-fleet/serial/raw"

func (f fixture) vmArgs(t *testing.T, extra ...string) []string {
	t.Helper()
	ca := filepath.Join(f.dir, "local-ca.pem")
	require.NoError(t, os.WriteFile(ca, caPEM(t, true), 0o644))
	return f.args(append([]string{"-env", "local", "-root-ca", ca, "-endpoint", "iot.vm.internal", "-port", "8883",
		"-serial-file", fwCfgSerial, "-ota-allowed-host", "artifacts.vm.internal", "-ota-allow-http"}, extra...)...)
}

func openPart(t *testing.T, img string, p inject.Partition) *inject.Root {
	t.Helper()
	tools, err := inject.FindTools()
	require.NoError(t, err)
	r, err := inject.NewRoot(img, p, tools)
	require.NoError(t, err)
	return r
}

// The virtual Pi's A/B disk (boot, rootfs A, rootfs B, data): the same
// injection writes rootfs A (and B only once it holds a file system), puts
// the agent's state on the data partition through a bind mount in fstab,
// and points the agent at the local IoT Core (the target flags).
func TestImageInjectABLayoutForTheVirtualPi(t *testing.T) {
	f := newFixtureWith(t, injecttest.Options{AB: true})
	ctx := context.Background()
	require.NoError(t, runTool(t, f.vmArgs(t)))

	l, err := inject.ReadLayout(f.img)
	require.NoError(t, err)
	require.True(t, l.AB())
	assert.Nil(t, l.RootB, "rootfs B stays empty: mender writes it on the first update")
	rootA := openPart(t, f.img, l.Root)

	raw, err := rootA.ReadFile(ctx, "/etc/fleet-agent/config.json")
	require.NoError(t, err)
	cfg, err := config.ParseValid(raw)
	require.NoError(t, err)
	assert.Equal(t, "iot.vm.internal", cfg.Endpoint)
	assert.Equal(t, 8883, cfg.Port)
	assert.Equal(t, "/etc/fleet-agent/root-ca.pem", cfg.RootCAFile)
	assert.Equal(t, []string{fwCfgSerial}, cfg.Provisioning.SerialFiles)
	assert.Equal(t, []string{"artifacts.vm.internal"}, cfg.OTA.AllowedHosts)
	assert.True(t, cfg.OTA.AllowHTTP)
	assert.Equal(t, "/var/lib/fleet-agent", cfg.StateDir)
	ca, err := rootA.ReadFile(ctx, "/etc/fleet-agent/root-ca.pem")
	require.NoError(t, err)
	want, err := os.ReadFile(filepath.Join(f.dir, "local-ca.pem"))
	require.NoError(t, err)
	assert.Equal(t, want, ca)
	env, err := rootA.ReadFile(ctx, "/etc/fleet-agent/image.env")
	require.NoError(t, err)
	assert.Contains(t, string(env), "\nFLEET_ENV=local\n")
	assert.Contains(t, string(env), "\nFLEET_SERIAL_FILES="+fwCfgSerial+"\n")

	fstab, err := rootA.ReadFile(ctx, "/etc/fstab")
	require.NoError(t, err)
	assert.True(t, bytes.HasPrefix(fstab, []byte(injecttest.ABFstab)), "the base image's mounts are kept:\n%s", fstab)
	assert.Contains(t, string(fstab), "\n/data/fleet-agent /var/lib/fleet-agent none bind,x-systemd.requires-mounts-for=/data 0 0\n")

	data := openPart(t, f.img, *l.Data)
	st, err := data.Stat(ctx, "/fleet-agent")
	require.NoError(t, err)
	assert.Equal(t, inject.KindDir, st.Kind)
	assert.Equal(t, os.FileMode(0o700), st.Mode)
	assert.Equal(t, [2]uint32{0, 0}, [2]uint32{st.UID, st.GID})
	require.NoError(t, data.Check(ctx))
	_, err = data.Stat(ctx, "/mender")
	assert.NoError(t, err, "the base image's data is kept")

	// A second run (a rebuilt agent, say) converges: one bind mount line.
	require.NoError(t, runTool(t, f.vmArgs(t)))
	again, err := rootA.ReadFile(ctx, "/etc/fstab")
	require.NoError(t, err)
	assert.Equal(t, string(fstab), string(again))
}

// With rootfs B populated (a copy of A), both root file systems get the
// same files, so either can boot the agent.
func TestImageInjectWritesBothRootFileSystems(t *testing.T) {
	f := newFixtureWith(t, injecttest.Options{AB: true, RootB: true})
	ctx := context.Background()
	require.NoError(t, runTool(t, f.vmArgs(t)))
	l, err := inject.ReadLayout(f.img)
	require.NoError(t, err)
	require.NotNil(t, l.RootB)
	var configs [][]byte
	for _, p := range l.Roots() {
		r := openPart(t, f.img, p)
		b, err := r.ReadFile(ctx, "/etc/fleet-agent/config.json")
		require.NoError(t, err, "partition %d", p.Number)
		configs = append(configs, b)
		fstab, err := r.ReadFile(ctx, "/etc/fstab")
		require.NoError(t, err)
		assert.Contains(t, string(fstab), "/data/fleet-agent /var/lib/fleet-agent none bind")
		require.NoError(t, r.Check(ctx))
	}
	assert.Equal(t, configs[0], configs[1])
}

func TestImageInjectABRefusals(t *testing.T) {
	t.Run("no data mount in fstab", func(t *testing.T) {
		files := injecttest.DefaultRootFiles()
		files["etc/fstab"] = "/dev/root / ext4 defaults 0 1\n"
		f := newFixtureWith(t, injecttest.Options{AB: true, RootFiles: files})
		before, err := os.ReadFile(f.img)
		require.NoError(t, err)
		err = runTool(t, f.vmArgs(t))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "does not mount the data partition at /data")
		after, err := os.ReadFile(f.img)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(before, after), "a refused build leaves the image untouched")
	})
	t.Run("state directory already mounted elsewhere", func(t *testing.T) {
		files := injecttest.DefaultRootFiles()
		files["etc/fstab"] = injecttest.ABFstab + "tmpfs /var/lib/fleet-agent tmpfs defaults 0 0\n"
		f := newFixtureWith(t, injecttest.Options{AB: true, RootFiles: files})
		err := runTool(t, f.vmArgs(t))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "/var/lib/fleet-agent is already a mount point")
	})
	t.Run("no fstab", func(t *testing.T) {
		files := injecttest.DefaultRootFiles()
		f := newFixtureWith(t, injecttest.Options{AB: true, RootFiles: files})
		err := runTool(t, f.vmArgs(t))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "/etc/fstab")
	})
}

func TestImageInjectTargetFlagRefusals(t *testing.T) {
	f := newFixtureWith(t, injecttest.Options{AB: true})
	notCA := filepath.Join(f.dir, "leaf.pem")
	require.NoError(t, os.WriteFile(notCA, caPEM(t, false), 0o644))
	key := filepath.Join(f.dir, "key.pem")
	require.NoError(t, os.WriteFile(key, f.key, 0o600))
	f.requireRefused(t, map[string]refusal{
		"leaf certificate as root CA": {f.vmArgs(t, "-root-ca", notCA), "is not a CA certificate"},
		"private key as root CA":      {f.vmArgs(t, "-root-ca", key), "want only CERTIFICATE blocks"},
		"missing root CA":             {f.vmArgs(t, "-root-ca", filepath.Join(f.dir, "nope.pem")), "-root-ca"},
		"endpoint with a port":        {f.vmArgs(t, "-endpoint", "iot.vm.internal:8883"), "endpoint"},
		"endpoint with a scheme":      {f.vmArgs(t, "-endpoint", "mqtts://iot.vm.internal"), "endpoint"},
		"port out of range":           {f.vmArgs(t, "-port", "70000"), "-port 70000"},
		"relative serial file":        {f.vmArgs(t, "-serial-file", "serial"), "serial file \"serial\""},
		"bad artifact host":           {f.vmArgs(t, "-ota-allowed-host", "http://x"), "allowedHosts"},
	})
}

// refusal is a run of the tool that must be refused with an error
// containing want.
type refusal struct {
	args []string
	want string
}

// requireRefused runs each refusal and checks that the tool refused it
// and that no refused build touched the image.
func (f *fixture) requireRefused(t *testing.T, cases map[string]refusal) {
	t.Helper()
	before, err := os.ReadFile(f.img)
	require.NoError(t, err)
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			err := runTool(t, c.args)
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
	after, err := os.ReadFile(f.img)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(before, after), "a refused build does not touch the image")
}

// --help prints every flag and exits 0; a failure exits 1.
func TestHelp(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), []string{"--help"}, &out)
	require.ErrorIs(t, err, flag.ErrHelp)
	assert.Contains(t, out.String(), "-stack-outputs")
	assert.Equal(t, 0, exitCode(err))
	assert.Equal(t, 0, exitCode(nil))
	assert.Equal(t, 1, exitCode(errors.New("no image")))
}
