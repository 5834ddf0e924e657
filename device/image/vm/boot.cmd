# iot-fleet virtual Pi: U-Boot boot script (compiled into boot.scr with
# mkimage; see docs/virtual-pi.md). It implements mender's U-Boot boot
# contract for the A/B layout:
#   mender_boot_part      2 (rootfs A, /dev/vda2) or 3 (rootfs B, /dev/vda3)
#   mender_boot_part_hex  the same, in hex (U-Boot partition numbers)
#   upgrade_available     1 while an update is installed but not committed
#   bootcount, bootlimit  boots of the uncommitted update; above bootlimit the
#                         boot falls back to the other partition
# The variables live in uboot.env on the FAT boot partition (p1), a U-Boot
# environment image (CRC32 + "name=value\0" pairs, 0x4000 bytes) that the
# guest reads and writes with fw_printenv/fw_setenv (/etc/fw_env.config).

setenv iot_env_addr 0x4f000000
setenv iot_env_size 0x4000
setenv iot_env_vars mender_boot_part mender_boot_part_hex upgrade_available bootcount bootlimit
setenv iot_env_dirty 0

# Defaults, overridden by the stored environment when it reads back intact.
setenv mender_boot_part 2
setenv mender_boot_part_hex 2
setenv upgrade_available 0
setenv bootcount 0
setenv bootlimit 1
if fatload virtio 0:1 ${iot_env_addr} uboot.env && env import -c ${iot_env_addr} ${iot_env_size} ${iot_env_vars}; then
	echo "iot-fleet: environment from uboot.env"
else
	echo "iot-fleet: uboot.env missing or corrupt, writing the defaults"
	setenv iot_env_dirty 1
fi

# A boot of an uncommitted update counts; past bootlimit, fall back to the
# partition that ran before the update (mender's rollback).
if test "${upgrade_available}" = "1"; then
	setexpr bootcount ${bootcount} + 1
	setenv iot_env_dirty 1
	if test ${bootcount} -gt ${bootlimit}; then
		echo "iot-fleet: update on partition ${mender_boot_part} failed to boot ${bootlimit} time(s), rolling back"
		if test "${mender_boot_part}" = "2"; then
			setenv mender_boot_part 3
			setenv mender_boot_part_hex 3
		else
			setenv mender_boot_part 2
			setenv mender_boot_part_hex 2
		fi
		setenv upgrade_available 0
	fi
fi
if test "${iot_env_dirty}" = "1"; then
	env export -c -s ${iot_env_size} ${iot_env_addr} ${iot_env_vars}
	fatwrite virtio 0:1 ${iot_env_addr} uboot.env ${iot_env_size}
fi
echo "iot-fleet: booting partition ${mender_boot_part} (upgrade_available=${upgrade_available} bootcount=${bootcount})"

# Kernel and initramfs from /boot of the chosen root file system. Debian's
# arm64 vmlinuz is gzip-compressed: booti unpacks it at kernel_comp_addr_r.
setenv kernel_comp_addr_r 0x50000000
setenv kernel_comp_size 0x4000000
setenv iot_initrd_addr 0x48000000
setenv bootargs "console=ttyAMA0 root=/dev/vda${mender_boot_part} rootfstype=ext4 rootwait ro panic=10 net.ifnames=0"
if ext4load virtio 0:${mender_boot_part_hex} ${kernel_addr_r} /boot/vmlinuz; then
	if ext4load virtio 0:${mender_boot_part_hex} ${iot_initrd_addr} /boot/initrd.img; then
		booti ${kernel_addr_r} ${iot_initrd_addr}:${filesize} ${fdtcontroladdr}
	fi
fi

# Nothing bootable on that partition. An uncommitted update gets another
# boot (counted above), which falls back to the previous partition.
echo "iot-fleet: cannot boot partition ${mender_boot_part}"
if test "${upgrade_available}" = "1"; then
	reset
fi
