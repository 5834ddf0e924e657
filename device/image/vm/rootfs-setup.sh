#!/usr/bin/env bash
# Configure the virtual Pi's arm64 root file system; build-vm-image.sh runs
# this as mmdebstrap hooks:
#   rootfs-setup.sh essential ROOT   before the image's packages are installed
#   rootfs-setup.sh customize ROOT   after they are installed
set -euo pipefail

phase="$1"
root="$2"
[[ -d "$root" && "$root" != / ]] || {
	echo "rootfs-setup: $root is not a root file system tree" >&2
	exit 1
}

# write PATH MODE: stdin to ROOT/PATH.
write() {
	mkdir -p "$(dirname "$root$1")"
	cat >"$root$1"
	chmod "$2" "$root$1"
}

essential() {
	# Small initramfs: only the modules a QEMU virt machine needs to mount
	# its root file system (the kernel's postinst builds it with these).
	write /etc/initramfs-tools/conf.d/iot-fleet-vm.conf 0644 <<'CONF'
MODULES=list
CONF
	write /etc/initramfs-tools/hooks/iot-fleet-vm 0755 <<'HOOK'
#!/bin/sh
# iot-fleet virtual Pi: the virtio disk and the root file system's modules.
case "$1" in prereqs) exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
for m in virtio_mmio virtio_pci virtio_blk ext4 crc32c_generic; do
	force_load "$m"
done
HOOK
	# The initramfs is built once, at the end (customize): package scripts
	# would otherwise build it twice under emulation.
	chroot "$root" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
	printf '#!/bin/sh\n# iot-fleet VM build: the initramfs is built once at the end.\nexit 0\n' |
		write /usr/sbin/update-initramfs 0755
	# Stable kernel names in /boot for the boot script (/boot/vmlinuz).
	write /etc/kernel-img.conf 0644 <<'CONF'
do_symlinks = yes
link_in_boot = yes
CONF
}

customize() {
	echo iot-fleet-vm | write /etc/hostname 0644
	write /etc/hosts 0644 <<'HOSTS'
127.0.0.1	localhost
127.0.1.1	iot-fleet-vm
::1	localhost ip6-localhost ip6-loopback
# The local IoT Core and artifact server, reached through QEMU's user-mode
# network (guestfwd); see docs/virtual-pi.md.
10.0.2.100	iot.vm.internal
10.0.2.101	artifacts.vm.internal
HOSTS
	write /etc/fstab 0644 <<'FSTAB'
# iot-fleet virtual Pi (docs/virtual-pi.md). The root file system is
# /dev/vda2 (A) or /dev/vda3 (B), chosen by U-Boot (root= on the kernel
# command line); this file is the same on both.
/dev/root       /               ext4  defaults,noatime,errors=remount-ro  0 1
/dev/vda1       /boot/firmware  vfat  defaults,noatime,sync,umask=0077     0 2
/dev/vda4       /data           ext4  defaults,noatime                     0 2
FSTAB
	mkdir -p "$root/boot/firmware" "$root/data"

	# U-Boot's environment, shared with the boot script.
	write /etc/fw_env.config 0644 <<'FWENV'
# U-Boot environment of the virtual Pi: uboot.env on the FAT boot partition,
# read and written by boot.scr (env import/export -c, fatwrite).
/boot/firmware/uboot.env 0x0000 0x4000
FWENV

	# mender: standalone full-system updates driven by fleet-agent; its state
	# lives on the data partition and survives updates.
	write /etc/mender/mender.conf 0600 <<'MENDER'
{
  "RootfsPartA": "/dev/vda2",
  "RootfsPartB": "/dev/vda3",
  "DeviceTypeFile": "/data/mender/device_type"
}
MENDER
	echo artifact_name=v1 | write /etc/mender/artifact_info 0644
	rm -rf "$root/var/lib/mender"
	ln -s /data/mender "$root/var/lib/mender"
	echo v1 | write /etc/iot-fleet-release 0644

	# Network: DHCP on the virtio NIC (QEMU user-mode networking).
	write /etc/systemd/network/20-wired.network 0644 <<'NET'
[Match]
Name=eth* en*

[Network]
DHCP=ipv4
NET
	# Online means: one link has its DHCP IPv4 address (an IPv6 link-local
	# address alone would count otherwise), and not waiting for ever.
	write /etc/systemd/system/systemd-networkd-wait-online.service.d/10-iot-fleet.conf 0644 <<'WAIT'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --ipv4 --timeout=60
WAIT

	# The machine serial: QEMU passes it with
	#   -fw_cfg name=opt/iot-fleet/serial,string=<16 hex digits>
	# and the guest reads /sys/firmware/qemu_fw_cfg/by_name/opt/iot-fleet/serial/raw.
	echo qemu_fw_cfg | write /etc/modules-load.d/qemu-fw-cfg.conf 0644

	# SSH as on the Pi: off unless the image build gave authorized keys (it
	# then writes "ssh" on the boot partition); host keys made on first start.
	rm -f "$root"/etc/ssh/ssh_host_*
	write /etc/systemd/system/ssh.service.d/10-iot-fleet.conf 0644 <<'SSH'
[Unit]
ConditionPathExists=/boot/firmware/ssh
RequiresMountsFor=/boot/firmware

[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
SSH

	# The Pi's default user: no usable password, sudo as on Raspberry Pi OS.
	chroot "$root" useradd --create-home --shell /bin/bash --groups sudo --password '*' pi
	chroot "$root" passwd --lock root >/dev/null

	chroot "$root" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service
	# No daemon mode: fleet-agent runs mender standalone. No network jobs that
	# cannot reach anything.
	for unit in mender-client.service apt-daily.timer apt-daily-upgrade.timer; do
		if [[ -e "$root/lib/systemd/system/$unit" ]]; then
			chroot "$root" systemctl mask "$unit"
		fi
	done

	# Kernel modules a QEMU virt machine never loads.
	kver="$(basename "$(ls -d "$root"/lib/modules/*)")"
	mods="$root/lib/modules/$kver/kernel"
	rm -rf "$mods/drivers/gpu" "$mods/drivers/media" "$mods/drivers/net/wireless" \
		"$mods/drivers/staging" "$mods/drivers/infiniband" "$mods/drivers/iio" \
		"$mods/drivers/bluetooth" "$mods/drivers/hid" "$mods/drivers/input" \
		"$mods/drivers/usb" "$mods/drivers/scsi" "$mods/drivers/mmc" "$mods/drivers/mtd" \
		"$mods/drivers/isdn" "$mods/drivers/net/ethernet" "$mods/drivers/net/can" \
		"$mods/drivers/nfc" "$mods/drivers/video" "$mods/drivers/thunderbolt" \
		"$mods/sound" "$mods/net/bluetooth" "$mods/net/mac80211" "$mods/net/wireless"
	chroot "$root" depmod "$kver"
	rm "$root/usr/sbin/update-initramfs"
	chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
	chroot "$root" update-initramfs -c -k "$kver"
	echo "$kver" >"$root/etc/iot-fleet-kernel-version"

	rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
}

case "$phase" in
essential) essential ;;
customize) customize ;;
*)
	echo "rootfs-setup: unknown phase $phase" >&2
	exit 1
	;;
esac
