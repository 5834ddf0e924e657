package qemu

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// These tests boot Debian's arm64 kernel with a busybox initramfs (seconds
// under emulation, no bootloader): the harness's console matching, the
// forwards, a power cut and a restart from the same disk. The virtual
// Raspberry Pi itself (U-Boot, systemd, the agent) is booted by the
// scenarios in e2e/vm_test.go. Like those, they run only with
// IOT_FLEET_VM=1 (make vm-test); they need qemu-system-arm, socat and
// mmdebstrap (which fetches the two arm64 packages from Debian's archive).

func needVM(t *testing.T) {
	t.Helper()
	if os.Getenv("IOT_FLEET_VM") != "1" {
		t.Skip("virtual machine tests run with IOT_FLEET_VM=1 (make vm-test)")
	}
	for _, tool := range []string{"qemu-system-aarch64", "socat", "mmdebstrap"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (make vm-test installs qemu-system-arm, socat and mmdebstrap)", tool)
		}
	}
}

// testGuest is a kernel and an initramfs whose /init loads the virtio
// drivers, configures the network by DHCP, counts its boots in the first
// bytes of /dev/vda and runs a shell on the console.
type testGuest struct{ kernel, initrd string }

const guestInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in /lib/modules/*.ko; do insmod "$m"; done
ip link set eth0 up
udhcpc -i eth0 -s /bin/dhcp-bound -q -n >/dev/null 2>&1
n=$(dd if=/dev/vda bs=32 count=1 2>/dev/null | tr -cd 0-9)
n=$(( ${n:-0} + 1 ))
printf '%-32s' "$n" | dd of=/dev/vda bs=32 count=1 conv=notrunc 2>/dev/null
sync
echo "harness: boot $n"
echo "harness: $(ip -4 addr show eth0 | grep -o 'inet [0-9./]*')"
echo "harness: ready"
exec setsid cttyhack sh
`

const dhcpBound = `#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
[ -n "$router" ] && ip route add default via "$router"
exit 0
`

func buildTestGuest(t *testing.T) testGuest {
	t.Helper()
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	cache := filepath.Join(root, "dist", "vm", "qemu-test")
	extracted := filepath.Join(cache, "root")
	if _, err := os.Stat(filepath.Join(extracted, "bin", "busybox")); err != nil {
		require.NoError(t, os.RemoveAll(extracted))
		require.NoError(t, os.MkdirAll(cache, 0o755))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		// Only Debian's archive: the two packages, unpacked, no scripts.
		out, err := exec.CommandContext(ctx, "mmdebstrap", "--quiet", "--variant=extract", "--arch=arm64",
			"--include=linux-image-arm64,busybox-static", "bookworm", extracted, "http://deb.debian.org/debian").CombinedOutput()
		require.NoError(t, err, "mmdebstrap: %s", out)
	}
	kernels, _ := filepath.Glob(filepath.Join(extracted, "boot", "vmlinuz-*"))
	require.Len(t, kernels, 1)
	modDirs, _ := filepath.Glob(filepath.Join(extracted, "lib", "modules", "*", "kernel"))
	require.Len(t, modDirs, 1)

	files := []cpioFile{
		{name: "bin", mode: 0o40755}, {name: "lib", mode: 0o40755}, {name: "lib/modules", mode: 0o40755},
		{name: "proc", mode: 0o40755}, {name: "sys", mode: 0o40755}, {name: "dev", mode: 0o40755}, {name: "tmp", mode: 0o41777},
		{name: "init", mode: 0o100755, data: []byte(guestInit)},
		{name: "bin/dhcp-bound", mode: 0o100755, data: []byte(dhcpBound)},
	}
	bb, err := os.ReadFile(filepath.Join(extracted, "bin", "busybox"))
	require.NoError(t, err)
	files = append(files, cpioFile{name: "bin/busybox", mode: 0o100755, data: bb})
	// Load order matters: the glob in /init sorts by name.
	for i, m := range []string{
		"drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci",
		"drivers/block/virtio_blk", "net/core/failover", "drivers/net/net_failover", "drivers/net/virtio_net",
	} {
		b, err := os.ReadFile(filepath.Join(modDirs[0], m+".ko"))
		require.NoError(t, err)
		files = append(files, cpioFile{name: fmt.Sprintf("lib/modules/%d-%s.ko", i, filepath.Base(m)), mode: 0o100644, data: b})
	}
	initrd := filepath.Join(t.TempDir(), "initrd.cpio")
	require.NoError(t, os.WriteFile(initrd, newcArchive(files), 0o644))
	return testGuest{kernel: kernels[0], initrd: initrd}
}

type cpioFile struct {
	name string
	mode uint32
	data []byte
}

// newcArchive writes a cpio archive in the "newc" format the kernel
// unpacks as its initramfs.
func newcArchive(files []cpioFile) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	entry := func(ino int, name string, mode uint32, data []byte) {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name)
		b.WriteByte(0)
		pad()
		b.Write(data)
		pad()
	}
	for i, f := range files {
		entry(i+1, f.name, f.mode, f.data)
	}
	entry(0, "TRAILER!!!", 0, nil)
	return b.Bytes()
}

func TestMachineBootForwardPowerCutRestart(t *testing.T) {
	needVM(t)
	guest := buildTestGuest(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	require.NoError(t, os.WriteFile(disk, make([]byte, 1<<20), 0o600))

	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprintf(w, "hello from the host: %s\n", r.URL.Path)
	}))
	defer srv.Close()

	m, err := New(Config{
		Dir: filepath.Join(dir, "vm"), Disk: disk, Kernel: guest.kernel, Initrd: guest.initrd,
		Append:   "console=ttyAMA0 quiet panic=-1",
		Forwards: []Forward{{GuestAddr: "10.0.2.101:80", HostAddr: strings.TrimPrefix(srv.URL, "http://")}},
	})
	require.NoError(t, err)
	defer m.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cur := m.Console.Cursor()
	start := time.Now()
	require.NoError(t, m.Start())
	_, err = cur.Expect(ctx, regexp.MustCompile(`^harness: boot 1$`), m.Exited())
	require.NoError(t, err)
	_, err = cur.Expect(ctx, regexp.MustCompile(`^harness: ready$`), m.Exited())
	require.NoError(t, err)
	t.Logf("kernel + initramfs boot: %s", time.Since(start).Round(time.Millisecond))

	// Typed commands reach the guest's shell; each fetch through the
	// forward is a new connection (a relay per connection).
	for i := range 3 {
		require.NoError(t, m.Type(fmt.Sprintf("wget -q -O - http://10.0.2.101/fetch-%d; echo fetch-done-%d\n", i, i)))
		_, err = cur.Expect(ctx, regexp.MustCompile(fmt.Sprintf(`^hello from the host: /fetch-%d$`, i)), m.Exited())
		require.NoError(t, err)
		_, err = cur.Expect(ctx, regexp.MustCompile(fmt.Sprintf(`^fetch-done-%d$`, i)), m.Exited())
		require.NoError(t, err)
	}
	require.EqualValues(t, 3, hits.Load())
	// restrict=on: nothing else leaves the machine (the host's server on
	// its real port is not reachable through the gateway either).
	_, port, _ := strings.Cut(strings.TrimPrefix(srv.URL, "http://"), ":")
	require.NoError(t, m.Type("wget -q -T 5 -O - http://10.0.2.2:"+port+"/escape || echo escape-refused\n"))
	_, err = cur.Expect(ctx, regexp.MustCompile(`^escape-refused$`), m.Exited())
	require.NoError(t, err)
	require.EqualValues(t, 3, hits.Load())

	// Power cut: kill -9 of the QEMU process.
	pid := m.PID()
	require.NotZero(t, pid)
	require.NoError(t, m.Kill())
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "the QEMU process is gone")
	require.False(t, m.Running())

	// Restart from the same disk: the boot counter the first run wrote
	// (and synced) survived.
	require.NoError(t, m.Start())
	require.NotEqual(t, pid, m.PID())
	_, err = cur.Expect(ctx, regexp.MustCompile(`^qemu: run 2 started`), m.Exited())
	require.NoError(t, err)
	_, err = cur.Expect(ctx, regexp.MustCompile(`^harness: boot 2$`), m.Exited())
	require.NoError(t, err)
	_, err = cur.Expect(ctx, regexp.MustCompile(`^harness: ready$`), m.Exited())
	require.NoError(t, err)

	// The guest powers itself off: QEMU exits, Wait sees it, and a cursor
	// waiting for a line that never comes fails at once.
	require.NoError(t, m.Type("poweroff -f\n"))
	require.NoError(t, m.Wait(ctx))
	_, err = cur.Expect(ctx, regexp.MustCompile(`^never printed$`), m.Exited())
	require.ErrorContains(t, err, "the machine stopped before a line matched")

	b, err := os.ReadFile(filepath.Join(dir, "vm", "console.log"))
	require.NoError(t, err)
	require.Contains(t, string(b), "qemu: run 1 started")
	require.Contains(t, string(b), "qemu: run 2 exited (exit status 0)")
}

func TestMachineStopKillsAGuestThatIgnoresThePowerButton(t *testing.T) {
	needVM(t)
	guest := buildTestGuest(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	require.NoError(t, os.WriteFile(disk, make([]byte, 1<<20), 0o600))
	m, err := New(Config{Dir: filepath.Join(dir, "vm"), Disk: disk, Kernel: guest.kernel, Initrd: guest.initrd, Append: "console=ttyAMA0 quiet"})
	require.NoError(t, err)
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	require.NoError(t, m.Start())
	_, err = m.Console.CursorAt(0).Expect(ctx, regexp.MustCompile(`^harness: ready$`), m.Exited())
	require.NoError(t, err)

	// The busybox initramfs has nothing listening to the power button.
	stopCtx, stopCancel := context.WithTimeout(ctx, 5*time.Second)
	defer stopCancel()
	err = m.Stop(stopCtx)
	require.ErrorContains(t, err, "the guest did not power off after the power button")
	require.False(t, m.Running(), "Stop killed the machine")
}
