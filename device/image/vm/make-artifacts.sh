#!/usr/bin/env bash
# Make the virtual Pi's test update artifacts from an injected disk (a copy
# of base.img after image-inject): rootfs A is extracted, changed without
# mounting (debugfs) and packed with Debian's mender-artifact as full-system
# (rootfs-image) updates, signed with the release key whose public half the
# image got as its ArtifactVerifyKey. See docs/virtual-pi.md.
#
#   make-artifacts.sh DISK SIGNING_KEY OUT_DIR
#
# DISK         injected A/B disk image (not modified)
# SIGNING_KEY  PEM private key (ECDSA P-256 or RSA), mode 0600
# OUT_DIR      receives:
#   v2.mender      artifact_name v2: /etc/iot-fleet-release = v2
#   v3-bad.mender  artifact_name v3-bad: boots, but the agent's OTA health
#                  check "release" fails (ota.healthChecks in its config runs
#                  /usr/local/lib/fleet-agent/release-health-check, which
#                  exits 1 in this release), so the agent rolls back
#   SHA256SUMS
# Settings: DEVICE_TYPE (default qemu-arm64, as /data/mender/device_type),
# SLACK_MB free space left in each artifact's file system (default 64).
set -euo pipefail

die() {
	echo "make-artifacts: $*" >&2
	exit 1
}
log() { echo "make-artifacts: $(date -u +%H:%M:%S) $*" >&2; }

(($# == 3)) || die "usage: make-artifacts.sh DISK SIGNING_KEY OUT_DIR"
disk="$1"
key="$2"
out="$3"
DEVICE_TYPE="${DEVICE_TYPE:-qemu-arm64}"
SLACK_MB="${SLACK_MB:-64}"
[[ -f "$disk" ]] || die "disk $disk is not a file"
[[ -f "$key" ]] || die "signing key $key is not a file"
[[ "$(stat -c %a "$key")" =~ ^[4-7]00$ ]] || die "signing key $key must be private to its owner (chmod 0600)"
[[ "$DEVICE_TYPE" =~ ^[A-Za-z0-9._-]+$ ]] || die "DEVICE_TYPE must be [A-Za-z0-9._-]+"
[[ "$SLACK_MB" =~ ^[0-9]+$ ]] || die "SLACK_MB must be a number"
PATH="$PATH:/usr/sbin:/sbin"
for tool in sfdisk jq debugfs e2fsck resize2fs dumpe2fs mender-artifact openssl; do
	command -v "$tool" >/dev/null || die "$tool is missing (Debian: fdisk jq e2fsprogs mender-artifact openssl)"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/iot-fleet-artifacts.XXXXXX")"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
umask 077

# 1. Rootfs A of the disk (partition 2), shrunk to its contents plus slack:
# mender writes the whole payload, so a smaller file system installs faster.
table="$(sfdisk --json "$disk")"
[[ "$(jq -r '.partitiontable.partitions | length' <<<"$table")" == 4 ]] ||
	die "$disk does not have the A/B layout (4 partitions: boot, rootfs A, rootfs B, data)"
sector="$(jq -r '.partitiontable.sectorsize // 512' <<<"$table")"
start="$(jq -r '.partitiontable.partitions[1].start' <<<"$table")"
size="$(jq -r '.partitiontable.partitions[1].size' <<<"$table")"
rootfs="$work/rootfs.ext4"
log "extracting rootfs A (${size} sectors at ${start})"
dd if="$disk" of="$rootfs" bs="$sector" skip="$start" count="$size" conv=sparse status=none
e2fsck -fy "$rootfs" >/dev/null 2>&1 || true
e2fsck -fn "$rootfs" >/dev/null 2>&1 || die "rootfs A of $disk has file system errors"
block="$(dumpe2fs -h "$rootfs" 2>/dev/null | sed -n 's/^Block size:[[:space:]]*//p')"
min="$(resize2fs -P "$rootfs" 2>/dev/null | sed -n 's/.*: *//p')"
[[ "$block" =~ ^[0-9]+$ && "$min" =~ ^[0-9]+$ ]] || die "cannot read the size of rootfs A"
blocks=$((min + SLACK_MB * 1024 * 1024 / block))
if ((blocks * block < size * sector)); then
	resize2fs "$rootfs" "$blocks" >/dev/null 2>&1 || die "resize2fs failed"
	truncate -s $((blocks * block)) "$rootfs"
fi

# debugfs_write IMAGE: the requests on stdin, run in $work/stage (so file
# names need no quoting); any request error fails.
debugfs_write() {
	local errs
	errs="$(cd "$work/stage" || exit 1
		debugfs -w -f - "$1" 2>&1 >/dev/null | grep -v '^debugfs ' || true)"
	[[ -z "$errs" ]] || die "debugfs on $1: $errs"
}

# release NAME IMAGE [EXTRA REQUESTS]: the release marker and mender's
# artifact name.
release() {
	local name="$1" img="$2"
	mkdir -p "$work/stage"
	echo "$name" >"$work/stage/release"
	echo "artifact_name=$name" >"$work/stage/artifact_info"
	{
		for f in /etc/iot-fleet-release /etc/mender/artifact_info; do
			echo "rm $f"
		done
		echo "write release /etc/iot-fleet-release"
		echo "write artifact_info /etc/mender/artifact_info"
		for f in /etc/iot-fleet-release /etc/mender/artifact_info; do
			echo "sif $f mode 0100644"
			echo "sif $f uid 0"
			echo "sif $f gid 0"
		done
		cat
	} | debugfs_write "$img"
}

# mender-artifact reads traditional PEM keys (SEC1 "EC PRIVATE KEY" or
# PKCS#1 "RSA PRIVATE KEY"), not PKCS#8: convert a private copy.
pub="$work/verify.pem"
sign="$work/signing.key"
openssl pkey -in "$key" -pubout -out "$pub" 2>/dev/null || die "$key is not a private key openssl can read"
openssl ec -in "$key" -out "$sign" 2>/dev/null || openssl rsa -traditional -in "$key" -out "$sign" 2>/dev/null ||
	die "$key: want an ECDSA or RSA private key"

artifact() {
	local name="$1" img="$2" file="$3"
	e2fsck -fn "$img" >/dev/null 2>&1 || die "$name: the file system has errors after the changes"
	log "writing $file (artifact $name, device type $DEVICE_TYPE)"
	mender-artifact write rootfs-image --no-progress -t "$DEVICE_TYPE" -n "$name" -f "$img" \
		-k "$sign" -o "$out/$file.part" >/dev/null
	mender-artifact validate -k "$pub" "$out/$file.part" >/dev/null || die "$file: signature does not verify"
	mv "$out/$file.part" "$out/$file"
	chmod 0644 "$out/$file"
}

# The agent's configuration of the injected disk (v3-bad changes it).
mkdir -p "$work/stage" "$out"
debugfs -R "cat /etc/fleet-agent/config.json" "$rootfs" >"$work/stage/config.json" 2>/dev/null || true
[[ -s "$work/stage/config.json" ]] ||
	die "rootfs A has no /etc/fleet-agent/config.json: make the artifacts from an injected disk"
jq -e '.ota | type == "object"' "$work/stage/config.json" >/dev/null ||
	die "/etc/fleet-agent/config.json of rootfs A has no ota section"
jq '.ota.healthChecks = ((.ota.healthChecks // []) + [{"name": "release", "command": ["/usr/local/lib/fleet-agent/release-health-check"], "timeout": "30s"}])' \
	"$work/stage/config.json" >"$work/stage/config.new"

# 2. v2: a good release.
cp --sparse=always "$rootfs" "$work/v2.ext4"
release v2 "$work/v2.ext4" </dev/null
artifact v2 "$work/v2.ext4" v2.mender
rm "$work/v2.ext4"

# 3. v3-bad: boots and connects, but its health check fails.
cp --sparse=always "$rootfs" "$work/v3.ext4"
cat >"$work/stage/health" <<'CHECK'
#!/bin/sh
# iot-fleet test release v3-bad: its OTA health check always fails.
echo "release v3-bad is marked bad: health check fails on purpose" >&2
exit 1
CHECK
mkdir_req=""
for d in /usr /usr/local /usr/local/lib /usr/local/lib/fleet-agent; do
	if ! debugfs -R "stat $d" "$work/v3.ext4" 2>/dev/null | grep -q "Type: directory"; then
		mkdir_req+="mkdir $d"$'\n'
	fi
done
release v3-bad "$work/v3.ext4" <<REQ
$mkdir_req
rm /etc/fleet-agent/config.json
write config.new /etc/fleet-agent/config.json
sif /etc/fleet-agent/config.json mode 0100644
sif /etc/fleet-agent/config.json uid 0
sif /etc/fleet-agent/config.json gid 0
write health /usr/local/lib/fleet-agent/release-health-check
sif /usr/local/lib/fleet-agent/release-health-check mode 0100755
sif /usr/local/lib/fleet-agent/release-health-check uid 0
sif /usr/local/lib/fleet-agent/release-health-check gid 0
REQ
artifact v3-bad "$work/v3.ext4" v3-bad.mender

(cd "$out" && sha256sum v2.mender v3-bad.mender >SHA256SUMS && chmod 0644 SHA256SUMS)
log "wrote $out/v2.mender and $out/v3-bad.mender"
