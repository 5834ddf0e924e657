// Package injecttest builds small, real Raspberry-Pi-OS-shaped disk image
// files for tests (or, with Options.AB, the virtual Pi's A/B layout): an MBR partition table (sfdisk on a regular file), a FAT32
// boot partition (mkfs.vfat --offset) and an ext4 root partition (mke2fs -E
// offset=, populated from a directory with -d). No loop devices, no mounts,
// no root.
package injecttest

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// Geometry of the test image, in 512-byte sectors: 48 MiB FAT32 (large
// enough for FAT32 with one sector per cluster), then ext4 to the end.
const (
	ImageSize  = 100 << 20
	BootStart  = 2048
	BootSize   = 98304
	RootStart  = BootStart + BootSize
	sectorSize = 512
)

// ToolPackages lists the host programs NewImage and the injector need, with
// the Debian package of each.
func ToolPackages() map[string]string {
	return map[string]string{
		"sfdisk":    "fdisk",
		"mkfs.vfat": "dosfstools",
		"mke2fs":    "e2fsprogs",
		"debugfs":   "e2fsprogs",
		"e2fsck":    "e2fsprogs",
		"mcopy":     "mtools",
		"mtype":     "mtools",
	}
}

// Look finds a program in PATH or the sbin directories a non-root PATH
// often lacks.
func Look(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, true
		}
	}
	return "", false
}

// Require skips the test when a needed program is missing, except under CI
// (CI set in the environment), where a missing tool is a failure: .ci/run
// installs them.
func Require(t testing.TB, names ...string) {
	t.Helper()
	pkgs := ToolPackages()
	if len(names) == 0 {
		for n := range pkgs {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	var missing []string
	for _, n := range names {
		if _, ok := Look(n); !ok {
			missing = append(missing, fmt.Sprintf("%s (package %s)", n, pkgs[n]))
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "missing tools: " + strings.Join(missing, ", ")
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set: .ci/run must install them)")
	}
	t.Skip(msg)
}

// Options shape the base image.
type Options struct {
	// RootFiles are files of the base root file system, path -> contents
	// (directories are created as needed). Default: a minimal Pi-OS-like /etc.
	RootFiles map[string]string
	// RootDirs are extra empty directories of the base root file system.
	RootDirs []string
	// BootFiles are files of the base boot partition, name -> contents.
	BootFiles map[string]string
	// AB builds the A/B layout of the virtual Pi's base image instead: boot,
	// rootfs A, rootfs B, data (ext4). Rootfs B is left without a file
	// system unless RootB is set.
	AB bool
	// RootB (with AB) makes rootfs B a copy of rootfs A.
	RootB bool
	// DataDirs (with AB) are directories of the data partition.
	DataDirs []string
}

// A/B geometry, in 512-byte sectors: the FAT32 boot partition as above,
// two 32 MiB root partitions, a 16 MiB data partition.
const (
	ABRootSize   = 65536
	ABRootBStart = RootStart + ABRootSize
	ABDataStart  = ABRootBStart + ABRootSize
	ABDataSize   = 32768
	ABImageSize  = (ABDataStart + ABDataSize) * sectorSize
)

// ABFstab is the base A/B image's /etc/fstab (as device/image/vm writes it).
const ABFstab = "/dev/root / ext4 defaults 0 1\n/dev/vda1 /boot/firmware vfat defaults 0 2\n/dev/vda4 /data ext4 defaults 0 2\n"

// DefaultRootFiles mimic the parts of Raspberry Pi OS the image build touches.
func DefaultRootFiles() map[string]string {
	return map[string]string{
		"etc/hostname":                        "raspberrypi\n",
		"etc/hosts":                           "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\n127.0.1.1\t\traspberrypi\n",
		"etc/ssh/sshd_config":                 "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n",
		"etc/systemd/system/sshswitch.target": "",
	}
}

// NewImage builds the image file in a fresh temporary directory and returns
// its path.
func NewImage(t testing.TB, opts Options) string {
	t.Helper()
	Require(t, "sfdisk", "mkfs.vfat", "mke2fs", "mcopy")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	img := filepath.Join(dir, "pi.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	size := int64(ImageSize)
	table := fmt.Sprintf("label: dos\nunit: sectors\n\nstart=%d, size=%d, type=c\nstart=%d, type=83\n", BootStart, BootSize, RootStart)
	if opts.AB {
		size = ABImageSize
		table = fmt.Sprintf("label: dos\nunit: sectors\n\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\nstart=%d, size=%d, type=83\nstart=%d, size=%d, type=83\n",
			BootStart, BootSize, RootStart, ABRootSize, ABRootBStart, ABRootSize, ABDataStart, ABDataSize)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	mustRun(ctx, t, table, nil, "sfdisk", "--no-reread", "--no-tell-kernel", "-q", img)
	mustRun(ctx, t, "", nil, "mkfs.vfat", "-F", "32", "-s", "1", "-S", "512", "-n", "BOOTFS",
		"--offset", fmt.Sprint(BootStart), img, fmt.Sprint(BootSize*sectorSize/1024))

	rootDir := filepath.Join(dir, "rootfs")
	files := opts.RootFiles
	if files == nil {
		files = DefaultRootFiles()
		if opts.AB {
			files["etc/fstab"] = ABFstab
		}
	}
	for p, content := range files {
		full := filepath.Join(rootDir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range append([]string{"usr/local/bin", "var/lib", "etc/systemd/system/multi-user.target.wants"}, opts.RootDirs...) {
		if err := os.MkdirAll(filepath.Join(rootDir, filepath.FromSlash(d)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rootKiB := (ImageSize - RootStart*sectorSize) / 1024
	if opts.AB {
		rootKiB = ABRootSize * sectorSize / 1024
	}
	mustRun(ctx, t, "", nil, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "rootfs", "-d", rootDir,
		"-E", fmt.Sprintf("offset=%d", RootStart*sectorSize), img, fmt.Sprintf("%dk", rootKiB))
	if opts.AB {
		if opts.RootB {
			mustRun(ctx, t, "", nil, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "rootfs-b", "-d", rootDir,
				"-E", fmt.Sprintf("offset=%d", ABRootBStart*sectorSize), img, fmt.Sprintf("%dk", rootKiB))
		}
		dataDir := filepath.Join(dir, "data")
		for _, d := range append([]string{"mender"}, opts.DataDirs...) {
			if err := os.MkdirAll(filepath.Join(dataDir, filepath.FromSlash(d)), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		mustRun(ctx, t, "", nil, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "data", "-d", dataDir,
			"-E", fmt.Sprintf("offset=%d", ABDataStart*sectorSize), img, fmt.Sprintf("%dk", ABDataSize*sectorSize/1024))
	}

	for name, content := range opts.BootFiles {
		src := filepath.Join(dir, "boot-"+name)
		if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		mustRun(ctx, t, "", []string{"MTOOLS_SKIP_CHECK=1", "MTOOLSRC=/dev/null"}, "mcopy", "-i", fmt.Sprintf("%s@@%d", img, BootStart*sectorSize), src, "::/"+name)
	}
	return img
}

func mustRun(ctx context.Context, t testing.TB, stdin string, env []string, name string, args ...string) {
	t.Helper()
	p, ok := Look(name)
	if !ok {
		t.Fatalf("%s not found", name)
	}
	cmd := exec.CommandContext(ctx, p, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// ELFHeader returns a minimal little-endian ELF64 executable header for the
// machine (183 = EM_AARCH64, 40 = EM_ARM, 62 = EM_X86_64): enough for
// debug/elf, standing in for an agent binary where only its type matters.
func ELFHeader(machine uint16) []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1               // 64-bit, little-endian, version 1
	binary.LittleEndian.PutUint16(h[16:], 2) // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], machine)
	binary.LittleEndian.PutUint32(h[20:], 1)
	binary.LittleEndian.PutUint16(h[52:], 64) // header size
	binary.LittleEndian.PutUint16(h[54:], 56) // program header entry size
	binary.LittleEndian.PutUint16(h[58:], 64) // section header entry size
	return h
}
