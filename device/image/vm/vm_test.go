package vm_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/image/inject"
)

// These tests boot the virtual Pi's base disk (make vm-image) under QEMU:
// minutes of software emulation, so they run only with IOT_FLEET_VM=1.
// VM_IMAGE names the disk (default dist/vm/base.img of the repository).

const testSerial = "0123456789abcdef"

func baseImage(t *testing.T) string {
	t.Helper()
	if os.Getenv("IOT_FLEET_VM") != "1" {
		t.Skip("boots the virtual Pi under QEMU (minutes): set IOT_FLEET_VM=1")
	}
	img := os.Getenv("VM_IMAGE")
	if img == "" {
		img = filepath.Join("..", "..", "..", "dist", "vm", "base.img")
	}
	if _, err := os.Stat(img); err != nil {
		t.Fatalf("virtual Pi disk: %v (run `make vm-image` first)", err)
	}
	for _, tool := range []string{"qemu-system-aarch64", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (apt-get install qemu-system-arm)", tool)
		}
	}
	return img
}

// copyDisk makes a sparse copy of the base disk for one test.
func copyDisk(t *testing.T, img string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "disk.img")
	out, err := exec.Command("cp", "--sparse=always", img, dst).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return dst
}

// machine is one QEMU virt run: U-Boot from Debian's u-boot-qemu, the disk
// on virtio, the serial number as the fw_cfg item the image reads, and the
// console in a file.
type machine struct {
	cmd     *exec.Cmd
	console string
	done    chan error
}

func boot(t *testing.T, disk string) *machine {
	t.Helper()
	return bootNet(t, disk, "user,id=n0,restrict=on")
}

// bootNet boots with the given -netdev (user-mode networking; without
// restrict=on the guest reaches the host's loopback at 10.0.2.2).
func bootNet(t *testing.T, disk, netdev string) *machine {
	t.Helper()
	console := filepath.Join(t.TempDir(), "console.log")
	cmd := exec.Command("qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-smp", "2", "-m", "1024",
		"-nographic", "-monitor", "none", "-serial", "file:"+console,
		"-bios", "/usr/lib/u-boot/qemu_arm64/u-boot.bin",
		"-drive", "if=none,file="+disk+",format=raw,id=hd0", "-device", "virtio-blk-pci,drive=hd0",
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
		"-fw_cfg", "name=opt/iot-fleet/serial,string="+testSerial)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	m := &machine{cmd: cmd, console: console, done: make(chan error, 1)}
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-m.done:
		default:
			_ = cmd.Process.Kill()
			<-m.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("console:\n%s\nqemu stderr:\n%s", b, stderr.String())
		}
	})
	return m
}

// lines returns the console lines matching re, read so far.
func (m *machine) lines(re *regexp.Regexp) []string {
	f, err := os.Open(m.console)
	if err != nil {
		return nil
	}
	defer f.Close()
	var got []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if re.MatchString(line) {
			got = append(got, line)
		}
	}
	return got
}

// waitExit waits for the guest to power off (QEMU exits).
func (m *machine) waitExit(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case err := <-m.done:
		m.done <- err
		require.NoError(t, err, "qemu")
	case <-time.After(timeout):
		t.Fatalf("the virtual Pi did not power off within %s", timeout)
	}
}

// injectProbe writes a oneshot unit into the disk's rootfs A that prints the
// boot state to the console on every boot and runs step N of script (N: the
// boot number, counted on the data partition).
func injectProbe(t *testing.T, disk string, steps map[int]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString(`#!/bin/sh
n=$(cat /data/vmtest-boots 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" >/data/vmtest-boots
sync
echo "VMTEST boot=$n root=$(findmnt -no SOURCE /) part=$(fw_printenv -n mender_boot_part) upgrade=$(fw_printenv -n upgrade_available) bootcount=$(fw_printenv -n bootcount) serial=$(cat /sys/firmware/qemu_fw_cfg/by_name/opt/iot-fleet/serial/raw) release=$(cat /etc/iot-fleet-release) data=$(findmnt -no SOURCE /data) bootfs=$(findmnt -no SOURCE /boot/firmware) artifact=$(mender show-artifact 2>/dev/null) ip=$(ip -4 -o addr show dev eth0 | awk '{print $4}') iot=$(getent hosts iot.vm.internal | awk '{print $1}')"
case "$n" in
`)
	for n, s := range steps {
		fmt.Fprintf(&b, "%d)\n%s\n;;\n", n, s)
	}
	b.WriteString("*) echo 'VMTEST unexpected boot'; systemctl poweroff ;;\nesac\n")
	dir := t.TempDir()
	script := filepath.Join(dir, "probe.sh")
	require.NoError(t, os.WriteFile(script, []byte(b.String()), 0o755))
	unit := filepath.Join(dir, "probe.service")
	require.NoError(t, os.WriteFile(unit, []byte(`[Unit]
Description=virtual Pi boot probe (test)
After=local-fs.target network-online.target
Wants=network-online.target
RequiresMountsFor=/data /boot/firmware
[Service]
Type=oneshot
ExecStart=/usr/local/bin/vmtest-probe
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
`), 0o644))
	tools, err := inject.FindTools()
	require.NoError(t, err)
	layout, err := inject.ReadLayout(disk)
	require.NoError(t, err)
	require.True(t, layout.AB(), "the base disk has the A/B layout")
	root, err := inject.NewRoot(disk, layout.Root, tools)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	entries := []inject.Entry{
		{Kind: inject.KindFile, Path: "/usr/local/bin/vmtest-probe", Mode: 0o755, Source: script},
		{Kind: inject.KindFile, Path: "/etc/systemd/system/vmtest-probe.service", Mode: 0o644, Source: unit},
		{Kind: inject.KindSymlink, Path: "/etc/systemd/system/multi-user.target.wants/vmtest-probe.service", Target: "/etc/systemd/system/vmtest-probe.service"},
	}
	require.NoError(t, root.Apply(ctx, entries))
	require.NoError(t, root.Verify(ctx, entries))
}

// copyRootfsAToB makes rootfs B a bootable copy of rootfs A (what a
// mender install writes).
func copyRootfsAToB(t *testing.T, disk string) {
	t.Helper()
	layout, err := inject.ReadLayout(disk)
	require.NoError(t, err)
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	src := io.NewSectionReader(f, layout.Root.Offset, layout.Root.Size)
	_, err = io.Copy(io.NewOffsetWriter(f, layout.Root.Offset+layout.Root.Size), src)
	require.NoError(t, err)
}

var probeRe = regexp.MustCompile(`VMTEST |iot-fleet: `)

func probeField(line, key string) string {
	for _, f := range strings.Fields(line[strings.Index(line, "VMTEST "):]) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

func logBaseJSON(t *testing.T, img string) {
	b, err := os.ReadFile(strings.TrimSuffix(img, ".img") + ".json")
	if err != nil {
		return
	}
	var meta map[string]any
	if json.Unmarshal(b, &meta) == nil {
		t.Logf("base image: kernel %v, built in %vs", meta["kernel"], meta["buildSeconds"])
	}
}

// waitIPv4 waits (up to a minute) for eth0's DHCP address.
const waitIPv4 = `for i in $(seq 60); do ip -4 -o addr show dev eth0 | grep -q inet && break; sleep 1; done`

const switchToB = `fw_setenv mender_boot_part 3
fw_setenv mender_boot_part_hex 3
fw_setenv bootcount 0
fw_setenv upgrade_available 1
sync
echo "VMTEST switching to B: $(fw_printenv mender_boot_part upgrade_available bootcount | tr '\n' ' ')"
systemctl --no-block reboot`

// probes returns the VMTEST boot lines, in order.
func probes(m *machine) []string {
	var out []string
	for _, l := range m.lines(regexp.MustCompile(`VMTEST boot=`)) {
		out = append(out, l[strings.Index(l, "VMTEST "):])
	}
	return out
}

func requireProbe(t *testing.T, line string, want map[string]string) {
	t.Helper()
	for k, v := range want {
		require.Equal(t, v, probeField(line, k), "%s in %q", k, line)
	}
}

// The A/B switch and the bootloader's fallback, the way mender uses them:
// the running system sets mender_boot_part=3 upgrade_available=1 bootcount=0
// with fw_setenv (as `mender install` does) and reboots; U-Boot boots rootfs
// B and counts the boot; B does not commit and reboots; U-Boot sees
// bootcount > bootlimit and falls back to rootfs A with upgrade_available=0
// (mender's rollback).
func TestBootSwitchesToBAndFallsBackWithoutCommit(t *testing.T) {
	img := baseImage(t)
	logBaseJSON(t, img)
	disk := copyDisk(t, img)
	injectProbe(t, disk, map[int]string{
		1: switchToB,
		2: "echo 'VMTEST on B, not committing'\nsystemctl --no-block reboot",
		3: "echo 'VMTEST back on A'\nsystemctl --no-block poweroff",
	})
	copyRootfsAToB(t, disk)
	start := time.Now()
	m := boot(t, disk)
	m.waitExit(t, 30*time.Minute)
	t.Logf("three boots in %s", time.Since(start).Round(time.Second))
	p := probes(m)
	require.Len(t, p, 3, "boots: %q", p)
	requireProbe(t, p[0], map[string]string{"boot": "1", "root": "/dev/vda2", "part": "2", "upgrade": "0",
		"serial": testSerial, "release": "v1", "data": "/dev/vda4", "bootfs": "/dev/vda1", "artifact": "v1",
		"ip": "10.0.2.15/24", "iot": "10.0.2.100"})
	requireProbe(t, p[1], map[string]string{"boot": "2", "root": "/dev/vda3", "part": "3", "upgrade": "1", "bootcount": "1"})
	requireProbe(t, p[2], map[string]string{"boot": "3", "root": "/dev/vda2", "part": "2", "upgrade": "0", "bootcount": "2"})
	require.NotEmpty(t, m.lines(regexp.MustCompile(`iot-fleet: update on partition 3 failed to boot 1 time\(s\), rolling back`)))
}

// An update whose partition holds nothing bootable: U-Boot cannot load a
// kernel from rootfs B, resets, and the next boot falls back to rootfs A.
func TestBootFallsBackFromAnUnbootablePartition(t *testing.T) {
	img := baseImage(t)
	disk := copyDisk(t, img)
	injectProbe(t, disk, map[int]string{
		1: switchToB,
		2: "echo 'VMTEST back on A'\nsystemctl --no-block poweroff",
	})
	start := time.Now()
	m := boot(t, disk)
	m.waitExit(t, 20*time.Minute)
	t.Logf("two boots in %s", time.Since(start).Round(time.Second))
	p := probes(m)
	require.Len(t, p, 2, "boots: %q", p)
	requireProbe(t, p[0], map[string]string{"boot": "1", "root": "/dev/vda2", "part": "2", "upgrade": "0"})
	requireProbe(t, p[1], map[string]string{"boot": "2", "root": "/dev/vda2", "part": "2", "upgrade": "0", "bootcount": "2"})
	require.NotEmpty(t, m.lines(regexp.MustCompile(`iot-fleet: cannot boot partition 3`)))
}

// The real mender client (Debian's 3.4) on the virtual Pi, without the
// agent: full-system installs of signed artifacts made by make-artifacts.sh
// from this disk, the reboot into the other partition, commit, and a
// rollback by mender itself, all through this image's U-Boot environment.
func TestMenderInstallCommitRollback(t *testing.T) {
	img := baseImage(t)
	disk := copyDisk(t, img)
	dir := t.TempDir()
	key, pub := signingKey(t, dir)
	pubFile := filepath.Join(dir, "verify.pem")
	require.NoError(t, os.WriteFile(pubFile, pub, 0o644))
	conf := filepath.Join(dir, "mender.conf")
	require.NoError(t, os.WriteFile(conf, []byte(`{"RootfsPartA": "/dev/vda2", "RootfsPartB": "/dev/vda3", "DeviceTypeFile": "/data/mender/device_type", "ArtifactVerifyKey": "/etc/mender/artifact-verify-key.pem"}`), 0o600))
	agentConf := filepath.Join(dir, "config.json")
	require.NoError(t, os.WriteFile(agentConf, []byte(`{"ota": {}}`), 0o644))

	tools, err := inject.FindTools()
	require.NoError(t, err)
	layout, err := inject.ReadLayout(disk)
	require.NoError(t, err)
	root, err := inject.NewRoot(disk, layout.Root, tools)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, root.Apply(ctx, []inject.Entry{
		{Kind: inject.KindFile, Path: "/etc/mender/mender.conf", Mode: 0o600, Source: conf},
		{Kind: inject.KindFile, Path: "/etc/mender/artifact-verify-key.pem", Mode: 0o644, Source: pubFile},
		{Kind: inject.KindFile, Path: "/etc/fleet-agent/config.json", Mode: 0o644, Source: agentConf},
	}))
	// The artifacts come over HTTP from the host's loopback (10.0.2.2 on
	// QEMU's user-mode network, not restricted for this test).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	injectProbe(t, disk, map[int]string{
		1: waitIPv4 + `
mender install http://10.0.2.2:` + port + `/v2.mender && echo "VMTEST installed v2" || echo "VMTEST install v2 failed"
echo "VMTEST env: $(fw_printenv mender_boot_part upgrade_available bootcount | tr '\n' ' ')"
systemctl --no-block reboot`,
		2: waitIPv4 + `
mender commit && echo "VMTEST committed v2" || echo "VMTEST commit failed"
echo "VMTEST env: $(fw_printenv mender_boot_part upgrade_available bootcount | tr '\n' ' ')"
mender install http://10.0.2.2:` + port + `/v3-bad.mender && echo "VMTEST installed v3-bad" || echo "VMTEST install v3-bad failed"
systemctl --no-block reboot`,
		3: `mender rollback && echo "VMTEST rolled back v3-bad" || echo "VMTEST rollback failed"
echo "VMTEST env: $(fw_printenv mender_boot_part upgrade_available bootcount | tr '\n' ' ')"
systemctl --no-block reboot`,
		4: "echo 'VMTEST done'\nsystemctl --no-block poweroff",
	})
	out := filepath.Join(dir, "artifacts")
	start := time.Now()
	log, err := makeArtifacts(t, disk, key, out)
	require.NoError(t, err, log)
	t.Logf("artifacts made in %s", time.Since(start).Round(time.Second))
	srv := &http.Server{Handler: http.FileServer(http.Dir(out)), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	start = time.Now()
	m := bootNet(t, disk, "user,id=n0")
	m.waitExit(t, 60*time.Minute)
	t.Logf("four boots and two installs in %s", time.Since(start).Round(time.Second))
	p := probes(m)
	require.Len(t, p, 4, "boots: %q", p)
	requireProbe(t, p[0], map[string]string{"root": "/dev/vda2", "part": "2", "upgrade": "0", "release": "v1", "artifact": "v1"})
	requireProbe(t, p[1], map[string]string{"root": "/dev/vda3", "part": "3", "upgrade": "1", "bootcount": "1", "release": "v2"})
	requireProbe(t, p[2], map[string]string{"root": "/dev/vda2", "part": "2", "upgrade": "1", "bootcount": "1", "release": "v3-bad"})
	requireProbe(t, p[3], map[string]string{"root": "/dev/vda3", "part": "3", "upgrade": "0", "release": "v2", "artifact": "v2"})
	for _, want := range []string{"VMTEST installed v2", "VMTEST committed v2", "VMTEST installed v3-bad", "VMTEST rolled back v3-bad", "VMTEST done"} {
		require.NotEmpty(t, m.lines(regexp.MustCompile(regexp.QuoteMeta(want))), want)
	}
}
