#!/bin/sh
# fleet-firstboot: one-time set-up on the first boot of an iot-fleet image,
# started by fleet-firstboot.service (see docs/delivery.md):
#   1. read the board serial (device tree, else /proc/cpuinfo, or the files
#      FLEET_SERIAL_FILES in image.env names) and check it;
#   2. set the hostname to the thing name "<env>-<serial>";
#   3. make sure the key directories are 0700 and private keys 0600;
#   4. lock the password of the image's default user (SSH is key-only);
#   5. write the marker that stops this from running again.
# fleet-agent.service is ordered after this unit and starts when it succeeds;
# it reads the same serial sources with the same pattern (config.json) and
# provisions the thing "<env>-<serial>" by claim.
#
# FLEET_FIRSTBOOT_ROOT (tests only) applies the file changes under a scratch
# directory and skips the two commands that act on the running system
# (hostname, usermod).
set -eu

root="${FLEET_FIRSTBOOT_ROOT:-}"
image_env="$root/etc/fleet-agent/image.env"
state_dir="$root/var/lib/fleet-agent"
claim_dir="$root/etc/fleet-agent/claim"
marker="$state_dir/.firstboot-done"

log() { printf 'fleet-firstboot: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# setting KEY: the last value of KEY=... in image.env. The file is parsed,
# never sourced, so nothing in it is executed.
setting() {
	sed -n "s/^$1=//p" "$image_env" | tail -n 1
}

# write_atomic FILE MODE: stdin to FILE through a temporary file and rename.
write_atomic() {
	tmp="$1.tmp.$$"
	cat >"$tmp"
	chmod "$2" "$tmp"
	mv -f "$tmp" "$1"
}

[ -r "$image_env" ] || die "$image_env is missing: this image was not built by image-inject"
env_name=$(setting FLEET_ENV)
case "$env_name" in
'' | *[!a-z0-9-]*) die "FLEET_ENV in $image_env must be [a-z0-9-]+, got '$env_name'" ;;
esac
serial_pattern=$(setting FLEET_SERIAL_PATTERN)
[ -n "$serial_pattern" ] || serial_pattern='^[0-9a-f]{16}$'
admin_user=$(setting FLEET_ADMIN_USER)

# Serial candidates, best first: FLEET_SERIAL_FILES (space-separated paths,
# the same list as the agent's provisioning.serialFiles), by default the
# device tree (Pi 4/5: 16 hex digits, NUL-terminated), then the "Serial" line
# of /proc/cpuinfo. A file with a "key: value" layout is read like cpuinfo,
# any other file is the serial itself (the virtual Pi's QEMU fw_cfg entry).
serial_files=$(setting FLEET_SERIAL_FILES)
[ -n "$serial_files" ] || serial_files="/sys/firmware/devicetree/base/serial-number /proc/device-tree/serial-number /proc/cpuinfo"
serial=""
set -f
for file in $serial_files; do
	src="$root$file"
	[ -r "$src" ] || continue
	if tr -d '\000' <"$src" | grep -q ':'; then
		candidate=$(sed -n 's/^Serial[[:space:]]*:[[:space:]]*//p' "$src" | head -n 1 | tr -d '[:space:]' | tr 'A-F' 'a-f')
	else
		candidate=$(tr -d '\000[:space:]' <"$src" | tr 'A-F' 'a-f')
	fi
	if printf '%s\n' "$candidate" | grep -Eq -- "$serial_pattern"; then
		serial="$candidate"
		break
	fi
	log "ignoring serial '$candidate' from $file: does not match $serial_pattern"
done
set +f
[ -n "$serial" ] || die "no board serial matching $serial_pattern found in $serial_files"
thing="$env_name-$serial"
log "serial $serial, thing name $thing"

# Hostname: /etc/hostname and the Debian 127.0.1.1 line of /etc/hosts.
printf '%s\n' "$thing" | write_atomic "$root/etc/hostname" 0644
hosts="$root/etc/hosts"
if [ -f "$hosts" ] && grep -q '^127\.0\.1\.1[[:space:]]' "$hosts"; then
	sed "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1\t$thing/" "$hosts" | write_atomic "$hosts" 0644
else
	{
		[ ! -f "$hosts" ] || cat "$hosts"
		printf '127.0.1.1\t%s\n' "$thing"
	} | write_atomic "$hosts" 0644
fi
if [ -z "$root" ]; then
	hostname "$thing"
fi

# Key and state directories: private to root, keys 0600.
mkdir -p "$state_dir"
chmod 0700 "$state_dir"
if [ -d "$claim_dir" ]; then
	chmod 0700 "$claim_dir"
	find "$claim_dir" -type f -name '*.key' -exec chmod 0600 {} +
fi

# The image's default user keeps no usable password (userconf.txt sets "*";
# this also covers an image whose first-boot user set-up was skipped).
if [ -z "$root" ] && [ -n "$admin_user" ] && id "$admin_user" >/dev/null 2>&1; then
	usermod --lock "$admin_user"
fi

date -u '+%Y-%m-%dT%H:%M:%SZ' | write_atomic "$marker" 0600
log "first boot complete; handing over to fleet-agent.service"
