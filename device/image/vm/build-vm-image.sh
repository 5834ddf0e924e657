#!/usr/bin/env bash
# Build the virtual Raspberry Pi's base disk: an arm64 Debian 12 system from
# Debian packages only, laid out for mender's full-system A/B updates and
# booted by U-Boot (QEMU -M virt -bios u-boot.bin). `make vm-image` runs this;
# see docs/virtual-pi.md. The disk holds the OS only: the project's own image
# step (image-inject) adds the agent, its configuration and the trust anchors.
#
# Settings (environment variables):
#   VM_OUT        output directory (default dist/vm)
#   VM_MIRROR     Debian mirror (default http://deb.debian.org/debian)
#   VM_SUITE      Debian suite (default bookworm)
#   VM_ROOTFS_MB  size of each rootfs partition in MiB (default 600)
#   VM_DATA_MB    size of the data partition in MiB (default 256)
#
# Output: $VM_OUT/base.img (raw disk, MBR: p1 FAT boot 64 MiB, p2 rootfs A,
# p3 rootfs B (no file system: mender writes it on the first update), p4 data
# ext4) and $VM_OUT/base.json (partition offsets and sizes, kernel version,
# build time). Runs as root (mmdebstrap in root mode, chroot, binfmt_misc); it
# installs the Debian packages it needs when they are missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../../.."
umask 022

die() {
	echo "build-vm-image: $*" >&2
	exit 1
}
log() { echo "build-vm-image: $(date -u +%H:%M:%S) $*" >&2; }

VM_OUT="${VM_OUT:-dist/vm}"
VM_MIRROR="${VM_MIRROR:-http://deb.debian.org/debian}"
VM_SUITE="${VM_SUITE:-bookworm}"
VM_ROOTFS_MB="${VM_ROOTFS_MB:-600}"
VM_DATA_MB="${VM_DATA_MB:-256}"
BOOT_MB=64
[[ "$VM_ROOTFS_MB" =~ ^[0-9]+$ && "$VM_ROOTFS_MB" -ge 300 ]] || die "VM_ROOTFS_MB must be a number of MiB >= 300, got '$VM_ROOTFS_MB'"
[[ "$VM_DATA_MB" =~ ^[0-9]+$ && "$VM_DATA_MB" -ge 16 ]] || die "VM_DATA_MB must be a number of MiB >= 16, got '$VM_DATA_MB'"
[[ "$(id -u)" == 0 ]] || die "must run as root (mmdebstrap root mode, chroot into the arm64 tree)"

start=$(date +%s)

# 1. Host tools (Debian packages), like `make tools`.
host_packages=(mmdebstrap qemu-user-static binfmt-support u-boot-qemu u-boot-tools
	dosfstools mtools e2fsprogs fdisk jq)
missing=()
for p in "${host_packages[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
	log "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. arm64 binaries run through qemu-user (binfmt_misc), needed by the
# package scripts inside the arm64 tree.
if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
	mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
	update-binfmts --enable qemu-aarch64
fi
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt_misc: qemu-aarch64 is not enabled"

work="$(mktemp -d "${TMPDIR:-/tmp}/iot-fleet-vm.XXXXXX")"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
rootfs="$work/rootfs"

# 3. The root file system from Debian's archive. Recommends are left out to
# keep it small; everything the image needs is listed. fw_printenv and
# fw_setenv (what mender runs) are libubootenv-tool's in Debian 12.
packages=(
	linux-image-arm64 initramfs-tools kmod udev
	systemd systemd-sysv dbus
	mender-client libubootenv-tool
	sudo openssh-server ca-certificates
	iproute2 netbase iputils-ping procps e2fsprogs dosfstools
)
log "mmdebstrap $VM_SUITE arm64 (${packages[*]})"
mmdebstrap --arch=arm64 --variant=minbase --mode=root \
	--aptopt='APT::Install-Recommends "false"' \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--essential-hook="\"$here/rootfs-setup.sh\" essential \"\$1\"" \
	--customize-hook="\"$here/rootfs-setup.sh\" customize \"\$1\"" \
	--include="$(
		IFS=,
		echo "${packages[*]}"
	)" \
	"$VM_SUITE" "$rootfs" "$VM_MIRROR"

kernel_version="$(cat "$rootfs/etc/iot-fleet-kernel-version")"
rm "$rootfs/etc/iot-fleet-kernel-version"
log "kernel $kernel_version; rootfs $(du -sm "$rootfs" | cut -f1) MiB"

# 4. File systems, built from directories without mounting anything.
mkdir -p "$work/boot" "$work/data/mender" "$work/data/fleet-agent"
chmod 0700 "$work/data/mender" "$work/data/fleet-agent"
echo "device_type=qemu-arm64" >"$work/data/mender/device_type"
mkimage -A arm64 -O linux -T script -C none -n "iot-fleet A/B boot" \
	-d "$here/boot.cmd" "$work/boot/boot.scr" >/dev/null
mkenvimage -s 0x4000 -o "$work/boot/uboot.env" "$here/uboot-env.txt"

mkfs.vfat -C -n BOOT "$work/p1.img" $((BOOT_MB * 1024)) >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -i "$work/p1.img" "$work/boot/boot.scr" "$work/boot/uboot.env" ::/
mkfs.ext4 -q -L rootfs-a -d "$rootfs" -E root_owner=0:0 "$work/p2.img" "${VM_ROOTFS_MB}M"
mkfs.ext4 -q -L data -d "$work/data" -E root_owner=0:0 "$work/p4.img" "${VM_DATA_MB}M"

# 5. The disk: MBR, 1 MiB alignment, p1 bootable (U-Boot's distro boot finds
# boot.scr there).
mib=$((1024 * 1024))
p1_start=1
p2_start=$((p1_start + BOOT_MB))
p3_start=$((p2_start + VM_ROOTFS_MB))
p4_start=$((p3_start + VM_ROOTFS_MB))
total=$((p4_start + VM_DATA_MB))
disk="$work/base.img"
truncate -s "${total}M" "$disk"
sfdisk --quiet --label dos "$disk" <<SFDISK
start=$((p1_start * 2048)), size=$((BOOT_MB * 2048)), type=c, bootable
start=$((p2_start * 2048)), size=$((VM_ROOTFS_MB * 2048)), type=83
start=$((p3_start * 2048)), size=$((VM_ROOTFS_MB * 2048)), type=83
start=$((p4_start * 2048)), size=$((VM_DATA_MB * 2048)), type=83
SFDISK
for p in 1 2 4; do
	var="p${p}_start"
	dd if="$work/p$p.img" of="$disk" bs=1M seek="${!var}" conv=notrunc,sparse status=none
done

mkdir -p "$VM_OUT"
mv "$disk" "$VM_OUT/base.img.part"
mv "$VM_OUT/base.img.part" "$VM_OUT/base.img"
elapsed=$(($(date +%s) - start))
jq -n --arg kernel "$kernel_version" --arg suite "$VM_SUITE" --argjson seconds "$elapsed" \
	--argjson mib "$mib" --argjson p1 "$p1_start" --argjson p2 "$p2_start" --argjson p3 "$p3_start" \
	--argjson p4 "$p4_start" --argjson boot "$BOOT_MB" --argjson rootfs "$VM_ROOTFS_MB" --argjson data "$VM_DATA_MB" \
	--arg built "$(date -u +%Y-%m-%dT%H:%M:%SZ)" '{
	  image: "base.img", suite: $suite, arch: "arm64", kernel: $kernel,
	  buildSeconds: $seconds, builtAt: $built, sizeBytes: (($p4 + $data) * $mib),
	  bootloader: "u-boot qemu_arm64 (/usr/lib/u-boot/qemu_arm64/u-boot.bin), boot.scr on p1",
	  partitions: [
	    {number: 1, name: "boot", fs: "vfat", offset: ($p1 * $mib), size: ($boot * $mib)},
	    {number: 2, name: "rootfs-a", fs: "ext4", offset: ($p2 * $mib), size: ($rootfs * $mib)},
	    {number: 3, name: "rootfs-b", fs: "none", offset: ($p3 * $mib), size: ($rootfs * $mib)},
	    {number: 4, name: "data", fs: "ext4", offset: ($p4 * $mib), size: ($data * $mib)}
	  ]}' >"$VM_OUT/base.json"
log "wrote $VM_OUT/base.img and $VM_OUT/base.json in ${elapsed}s"
