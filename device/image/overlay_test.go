package image_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/image"
)

const firstbootScript = "rootfs/usr/local/lib/fleet-agent/firstboot.sh"

// requireTool returns the program's path. A missing tool skips the test on a
// developer machine and fails it under CI, where .ci/run installs it.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is missing (Debian package %s); CI must install it", name, pkg)
	}
	t.Skipf("%s is missing: apt-get install %s", name, pkg)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// agentUnitPath is device/systemd/fleet-agent.service, written by the agent
// side of the project. The tests that need it are skipped while it does not
// exist yet, never under CI.
func agentUnitPath(t *testing.T) string {
	t.Helper()
	p := filepath.Join("..", "systemd", "fleet-agent.service")
	if !fileExists(p) {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing: the image installs it", p)
		}
		t.Skipf("%s does not exist yet", p)
	}
	return p
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// unitRoot builds a directory tree for `systemd-analyze verify --root`: the
// host's unit directory (for targets such as multi-user.target), the
// overlay's units and scripts, and the given extra files.
func unitRoot(t *testing.T, extra map[string]string) string {
	t.Helper()
	root := t.TempDir()
	hostUnits := "/usr/lib/systemd/system"
	if !fileExists(hostUnits) {
		hostUnits = "/lib/systemd/system"
	}
	require.NoError(t, os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755))
	out, err := exec.Command("cp", "-a", hostUnits, filepath.Join(root, "usr/lib/systemd/system")).CombinedOutput()
	require.NoError(t, err, string(out))
	m := manifest(t)
	for _, e := range m.Entries {
		if e.Kind != image.KindFile || !strings.HasPrefix(e.Source, "rootfs/") {
			continue
		}
		b, err := os.ReadFile(e.Source)
		require.NoError(t, err)
		writeTree(t, root, e.Path, string(b), e.Mode)
	}
	for p, content := range extra {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(content, "#!") {
			mode = 0o755
		}
		writeTree(t, root, p, content, mode)
	}
	return root
}

func writeTree(t *testing.T, root, p, content string, mode os.FileMode) {
	t.Helper()
	full := filepath.Join(root, filepath.FromSlash(p))
	require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
	require.NoError(t, os.WriteFile(full, []byte(content), mode))
	require.NoError(t, os.Chmod(full, mode))
}

func verify(t *testing.T, root string, units ...string) (string, error) {
	t.Helper()
	analyze := requireTool(t, "systemd-analyze", "systemd")
	args := append([]string{"verify", "--root=" + root}, units...)
	cmd := exec.CommandContext(ctx(t), analyze, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

const agentStub = "#!/bin/sh\nexit 0\n"

func TestFirstbootUnitVerifies(t *testing.T) {
	root := unitRoot(t, nil)
	out, err := verify(t, root, "/etc/systemd/system/fleet-firstboot.service")
	require.NoError(t, err, out)
	assert.Empty(t, strings.TrimSpace(out), "systemd-analyze verify has warnings")

	unit, err := os.ReadFile("rootfs/etc/systemd/system/fleet-firstboot.service")
	require.NoError(t, err)
	assert.Contains(t, string(unit), "ConditionPathExists=!/var/lib/fleet-agent/.firstboot-done")
	assert.Contains(t, string(unit), "Before=fleet-agent.service")
	assert.Contains(t, string(unit), "WantedBy=multi-user.target")
}

// The verify harness itself must be able to fail: a unit whose program is
// missing from the root is rejected.
func TestVerifyRejectsABrokenUnit(t *testing.T) {
	root := unitRoot(t, map[string]string{
		"/etc/systemd/system/broken.service": "[Service]\nType=oneshot\nExecStart=/usr/local/bin/not-there\n",
	})
	out, err := verify(t, root, "/etc/systemd/system/broken.service")
	require.Error(t, err)
	assert.Contains(t, out, "not-there")
}

// The agent's real unit (device/systemd) with the image's drop-in that
// orders it after first boot.
func TestAgentUnitWithDropInVerifies(t *testing.T) {
	unit, err := os.ReadFile(agentUnitPath(t))
	require.NoError(t, err)
	root := unitRoot(t, map[string]string{
		"/etc/systemd/system/fleet-agent.service": string(unit),
		"/usr/bin/fleet-agent":                    agentStub,
	})
	out, err := verify(t, root, "/etc/systemd/system/fleet-agent.service", "/etc/systemd/system/fleet-firstboot.service")
	require.NoError(t, err, out)
	assert.Empty(t, strings.TrimSpace(out), "systemd-analyze verify has warnings")
}

func TestScriptsPassShellcheck(t *testing.T) {
	sc := requireTool(t, "shellcheck", "shellcheck")
	scripts := []string{firstbootScript}
	more, err := filepath.Glob("*.sh")
	require.NoError(t, err)
	scripts = append(scripts, more...)
	vm, err := filepath.Glob("vm/*.sh")
	require.NoError(t, err)
	require.NotEmpty(t, vm, "the virtual Pi's build scripts")
	scripts = append(scripts, vm...)
	for _, s := range scripts {
		out, err := exec.CommandContext(ctx(t), sc, "--shell=sh", "--severity=style", s).CombinedOutput()
		if strings.HasSuffix(s, ".sh") && !strings.HasPrefix(s, "rootfs/") {
			out, err = exec.CommandContext(ctx(t), sc, "--severity=style", s).CombinedOutput()
		}
		assert.NoError(t, err, "shellcheck %s:\n%s", s, out)
	}
	// The harness must be able to fail.
	bad := filepath.Join(t.TempDir(), "bad.sh")
	require.NoError(t, os.WriteFile(bad, []byte("#!/bin/sh\nrm -rf $1/*\n"), 0o755))
	_, err = exec.CommandContext(ctx(t), sc, bad).CombinedOutput()
	assert.Error(t, err)
}

func TestSSHHardening(t *testing.T) {
	b, err := os.ReadFile("rootfs/etc/ssh/sshd_config.d/10-fleet-hardening.conf")
	require.NoError(t, err)
	got := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, _ := strings.Cut(line, " ")
		_, dup := got[strings.ToLower(k)]
		assert.False(t, dup, "%s set twice", k)
		got[strings.ToLower(k)] = strings.TrimSpace(v)
	}
	for k, v := range map[string]string{
		"passwordauthentication":       "no",
		"kbdinteractiveauthentication": "no",
		"permitrootlogin":              "no",
		"permitemptypasswords":         "no",
		"authenticationmethods":        "publickey",
	} {
		assert.Equal(t, v, got[k], k)
	}
	// If sshd is installed, it must accept the drop-in.
	if sshd, err := exec.LookPath("sshd"); err == nil {
		out, err := exec.CommandContext(ctx(t), sshd, "-t", "-f", "rootfs/etc/ssh/sshd_config.d/10-fleet-hardening.conf").CombinedOutput()
		if err != nil && !strings.Contains(string(out), "host key") {
			t.Errorf("sshd -t rejects the drop-in: %s", out)
		}
	}
}

// firstboot runs the real first-boot script against a scratch root.
func firstboot(t *testing.T, root string) (string, error) {
	t.Helper()
	sh := requireTool(t, "sh", "dash")
	cmd := exec.CommandContext(ctx(t), sh, firstbootScript)
	cmd.Env = append(os.Environ(), "FLEET_FIRSTBOOT_ROOT="+root)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func firstbootRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	env, err := image.ImageEnv("dev", "^[0-9a-f]{16}$", "pi")
	require.NoError(t, err)
	base := map[string]string{
		"/etc/fleet-agent/image.env":       string(env),
		"/etc/hostname":                    "raspberrypi\n",
		"/etc/hosts":                       "127.0.0.1\tlocalhost\n127.0.1.1\t\traspberrypi\n",
		"/etc/fleet-agent/claim/claim.key": "key",
	}
	for p, c := range files {
		base[p] = c
	}
	for p, c := range base {
		if c == "" {
			continue
		}
		writeTree(t, root, p, c, 0o644)
	}
	require.NoError(t, os.Chmod(filepath.Join(root, "etc/fleet-agent/claim"), 0o755))
	return root
}

func readTree(t *testing.T, root, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, p))
	require.NoError(t, err)
	return string(b)
}

func mode(t *testing.T, root, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(filepath.Join(root, p))
	require.NoError(t, err)
	return st.Mode().Perm()
}

func TestFirstbootFromDeviceTree(t *testing.T) {
	root := firstbootRoot(t, map[string]string{
		"/sys/firmware/devicetree/base/serial-number": "10000000A1B2C3D4\x00",
		"/proc/cpuinfo": "Serial\t\t: 00000000ffffffff\n",
	})
	out, err := firstboot(t, root)
	require.NoError(t, err, out)
	assert.Contains(t, out, "thing name dev-10000000a1b2c3d4")
	assert.Equal(t, "dev-10000000a1b2c3d4\n", readTree(t, root, "etc/hostname"))
	assert.Equal(t, "127.0.0.1\tlocalhost\n127.0.1.1\tdev-10000000a1b2c3d4\n", readTree(t, root, "etc/hosts"))
	assert.Equal(t, os.FileMode(0o700), mode(t, root, "var/lib/fleet-agent"))
	assert.Equal(t, os.FileMode(0o700), mode(t, root, "etc/fleet-agent/claim"))
	assert.Equal(t, os.FileMode(0o600), mode(t, root, "etc/fleet-agent/claim/claim.key"))
	assert.Equal(t, os.FileMode(0o644), mode(t, root, "etc/hostname"))
	assert.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n$`, readTree(t, root, "var/lib/fleet-agent/.firstboot-done"))

	// Running again (e.g. the marker was removed by hand) converges.
	require.NoError(t, os.Remove(filepath.Join(root, "var/lib/fleet-agent/.firstboot-done")))
	out, err = firstboot(t, root)
	require.NoError(t, err, out)
	assert.Equal(t, "127.0.0.1\tlocalhost\n127.0.1.1\tdev-10000000a1b2c3d4\n", readTree(t, root, "etc/hosts"))
}

func TestFirstbootFallsBackToCPUInfo(t *testing.T) {
	root := firstbootRoot(t, map[string]string{
		"/sys/firmware/devicetree/base/serial-number": "bogus\x00",
		"/proc/cpuinfo": "processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 00000000DEADBEEF\nModel\t\t: Raspberry Pi 3\n",
		"/etc/hosts":    "127.0.0.1\tlocalhost\n",
	})
	out, err := firstboot(t, root)
	require.NoError(t, err, out)
	assert.Contains(t, out, "ignoring serial 'bogus'")
	assert.Equal(t, "dev-00000000deadbeef\n", readTree(t, root, "etc/hostname"))
	assert.Equal(t, "127.0.0.1\tlocalhost\n127.0.1.1\tdev-00000000deadbeef\n", readTree(t, root, "etc/hosts"))
}

func TestFirstbootFailsWithoutASerialAndLeavesNoMarker(t *testing.T) {
	root := firstbootRoot(t, map[string]string{"/proc/cpuinfo": "Serial\t\t: 12\n"})
	out, err := firstboot(t, root)
	require.Error(t, err)
	assert.Contains(t, out, "no board serial matching")
	assert.False(t, fileExists(filepath.Join(root, "var/lib/fleet-agent/.firstboot-done")), "a failed first boot is retried on the next boot")
	assert.Equal(t, "raspberrypi\n", readTree(t, root, "etc/hostname"))
}

func TestFirstbootRejectsABadImageEnv(t *testing.T) {
	root := firstbootRoot(t, map[string]string{
		"/etc/fleet-agent/image.env":                  "FLEET_ENV=$(reboot)\n",
		"/sys/firmware/devicetree/base/serial-number": "10000000a1b2c3d4",
	})
	out, err := firstboot(t, root)
	require.Error(t, err)
	assert.Contains(t, out, "FLEET_ENV in")
	assert.Contains(t, out, "must be [a-z0-9-]+, got '$(reboot)'")

	require.NoError(t, os.Remove(filepath.Join(root, "etc/fleet-agent/image.env")))
	out, err = firstboot(t, root)
	require.Error(t, err)
	assert.Contains(t, out, "image.env is missing")
}

// The virtual Pi has no board serial: QEMU passes one as a fw_cfg item and
// image.env's FLEET_SERIAL_FILES (the same list as the agent's
// provisioning.serialFiles) names it; the Pi's sources are then not read.
func TestFirstbootFromSerialFiles(t *testing.T) {
	const fwcfg = "/sys/firmware/qemu_fw_cfg/by_name/opt/iot-fleet/serial/raw"
	env, err := image.ImageEnv("local", "^[0-9a-f]{16}$", "pi", "/missing/serial", fwcfg)
	require.NoError(t, err)
	root := firstbootRoot(t, map[string]string{
		"/etc/fleet-agent/image.env": string(env),
		fwcfg:                        "0123456789ABCDEF",
		"/sys/firmware/devicetree/base/serial-number": "10000000a1b2c3d4\x00",
	})
	out, err := firstboot(t, root)
	require.NoError(t, err, out)
	assert.Contains(t, out, "thing name local-0123456789abcdef")
	assert.Equal(t, "local-0123456789abcdef\n", readTree(t, root, "etc/hostname"))

	// A listed file in cpuinfo's layout is read like cpuinfo; a bad value
	// is not taken, and the Pi's sources are not tried instead.
	env, err = image.ImageEnv("local", "^[0-9a-f]{16}$", "pi", fwcfg)
	require.NoError(t, err)
	root = firstbootRoot(t, map[string]string{
		"/etc/fleet-agent/image.env": string(env),
		fwcfg:                        "not-a-serial",
		"/proc/cpuinfo":              "Serial\t\t: 00000000deadbeef\n",
	})
	out, err = firstboot(t, root)
	require.Error(t, err)
	assert.Contains(t, out, "ignoring serial 'not-a-serial'")
	assert.Contains(t, out, "no board serial matching ^[0-9a-f]{16}$ found in "+fwcfg)
}

func TestImageEnvSerialFiles(t *testing.T) {
	b, err := image.ImageEnv("local", "", "", "/a/serial", "/b/serial")
	require.NoError(t, err)
	assert.Contains(t, string(b), "\nFLEET_SERIAL_FILES=/a/serial /b/serial\n")
	for _, bad := range []string{"relative", "/a b", "/a/*", "/a/../b", "/a\n"} {
		_, err := image.ImageEnv("local", "", "", bad)
		assert.ErrorContains(t, err, "serial file", bad)
	}
}
