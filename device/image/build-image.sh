#!/usr/bin/env bash
# Build an iot-fleet Raspberry Pi OS image. `make image` and the build-image
# workflow both run this script; see docs/delivery.md.
#
# Settings (environment variables):
#   IMAGE_ENV            dev | prod (default dev): the stack whose outputs and
#                        claim certificate go into the image
#   RASPIOS_URL          URL or local path of a Raspberry Pi OS Lite (arm64)
#                        image, .img.xz or .img (required)
#   RASPIOS_SHA256       SHA-256 of that file (required; published next to it)
#   STACK_OUTPUTS        file holding `pulumi stack output --json`; default:
#                        run that command for stack $IMAGE_ENV
#   CLAIM_SECRET         file (mode 0600) holding the claim secret JSON; default:
#                        fetched from Secrets Manager (stack output
#                        claimCertificateSecretArn) with the aws CLI
#   ARTIFACT_VERIFY_KEY  file holding the PEM public key of the release key that
#                        signs mender artifacts (required: mender refuses every
#                        artifact it cannot verify; see docs/ota.md). Never the
#                        private key.
#   SSH_AUTHORIZED_KEYS  optional public keys for user pi (SSH stays off without)
#   SERIAL_PATTERN       optional; must equal the stack's serialPattern config
#                        (default ^[0-9a-f]{16}$, the stack default)
#   AGENT_BIN            prebuilt fleet-agent for linux/arm64; default: built
#   OUT_DIR              default dist/image
#   CACHE_DIR            downloaded base images, default .cache/raspios
#   VERSION              default: git describe
#
# Output: $OUT_DIR/iot-fleet-$IMAGE_ENV-$VERSION.img.xz and its .sha256. The
# image holds the claim private key: it is written 0600 and must be stored
# like a secret (the workflow uploads it to the private images prefix).
set -euo pipefail

cd "$(dirname "$0")/../.."
umask 077

die() {
	echo "build-image: $*" >&2
	exit 1
}
log() { echo "build-image: $*" >&2; }

IMAGE_ENV="${IMAGE_ENV:-dev}"
OUT_DIR="${OUT_DIR:-dist/image}"
CACHE_DIR="${CACHE_DIR:-.cache/raspios}"
VERSION="${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}"
GO="${GO:-go}"
[[ "$IMAGE_ENV" =~ ^[a-z0-9-]+$ ]] || die "IMAGE_ENV must be [a-z0-9-]+, got '$IMAGE_ENV'"
[[ -n "${RASPIOS_URL:-}" ]] || die "RASPIOS_URL is required (Raspberry Pi OS Lite arm64 .img.xz)"
[[ "${RASPIOS_SHA256:-}" =~ ^[0-9a-f]{64}$ ]] || die "RASPIOS_SHA256 must be the 64-hex-digit SHA-256 of the base image"
[[ -n "${ARTIFACT_VERIFY_KEY:-}" ]] || die "ARTIFACT_VERIFY_KEY is required: the PEM public key that verifies mender artifacts (docs/ota.md, release flow)"
[[ -f "$ARTIFACT_VERIFY_KEY" ]] || die "ARTIFACT_VERIFY_KEY=$ARTIFACT_VERIFY_KEY is not a file"
for tool in xz sha256sum debugfs e2fsck mcopy mtype "$GO"; do
	command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" || -x "/sbin/$tool" ]] ||
		die "$tool is missing (Debian: apt-get install xz-utils coreutils e2fsprogs mtools; Go for $GO)"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/iot-fleet-image.XXXXXX")"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# 1. Base image, cached and checked against its published SHA-256.
mkdir -p "$CACHE_DIR"
base="$CACHE_DIR/$(basename "${RASPIOS_URL%%\?*}")"
if [[ -f "$RASPIOS_URL" ]]; then
	cp "$RASPIOS_URL" "$base.part"
	mv "$base.part" "$base"
elif [[ ! -f "$base" ]]; then
	log "downloading $RASPIOS_URL"
	curl --fail --location --retry 3 --silent --show-error --output "$base.part" "$RASPIOS_URL"
	mv "$base.part" "$base"
fi
echo "$RASPIOS_SHA256  $base" | sha256sum --check --quiet - ||
	die "$base does not match RASPIOS_SHA256; delete it to download again"

# 2. Stack outputs and the claim certificate (never written outside $work).
outputs="${STACK_OUTPUTS:-}"
if [[ -z "$outputs" ]]; then
	outputs="$work/outputs.json"
	pulumi stack output --json --stack "$IMAGE_ENV" >"$outputs"
fi
claim="${CLAIM_SECRET:-}"
if [[ -z "$claim" ]]; then
	arn="$(jq -r '.claimCertificateSecretArn // empty' "$outputs")"
	[[ -n "$arn" ]] || die "stack output claimCertificateSecretArn is missing in $outputs"
	claim="$work/claim.json"
	aws secretsmanager get-secret-value --secret-id "$arn" --query SecretString --output text >"$claim"
	chmod 0600 "$claim"
fi

# 3. The agent for the Pi, and the injection tool for this machine.
agent="${AGENT_BIN:-}"
if [[ -z "$agent" ]]; then
	agent="$work/fleet-agent"
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 "$GO" build -trimpath \
		-ldflags "-s -w -buildid= -X main.version=$VERSION" -o "$agent" ./device/cmd/fleet-agent
fi
"$GO" build -trimpath -o "$work/image-inject" ./device/image/cmd/image-inject

# 4. Unpack, inject, verify (image-inject reads everything back), compress.
mkdir -p "$OUT_DIR"
name="iot-fleet-$IMAGE_ENV-$VERSION"
img="$work/$name.img"
case "$base" in
*.xz) xz --decompress --stdout "$base" >"$img" ;;
*) cp "$base" "$img" ;;
esac
extra=()
if [[ -n "${SSH_AUTHORIZED_KEYS:-}" ]]; then
	extra+=(-ssh-authorized-keys "$SSH_AUTHORIZED_KEYS")
fi
if [[ -n "${SERIAL_PATTERN:-}" ]]; then
	extra+=(-serial-pattern "$SERIAL_PATTERN")
fi
"$work/image-inject" -image "$img" -env "$IMAGE_ENV" -stack-outputs "$outputs" \
	-agent "$agent" -agent-unit device/systemd/fleet-agent.service \
	-claim-secret "$claim" -artifact-verify-key "$ARTIFACT_VERIFY_KEY" "${extra[@]}"
xz --compress --stdout --threads=0 "$img" >"$OUT_DIR/$name.img.xz.part"
mv "$OUT_DIR/$name.img.xz.part" "$OUT_DIR/$name.img.xz"
(cd "$OUT_DIR" && sha256sum "$name.img.xz" >"$name.img.xz.sha256")
log "wrote $OUT_DIR/$name.img.xz ($(cut -d' ' -f1 "$OUT_DIR/$name.img.xz.sha256"))"
echo "$OUT_DIR/$name.img.xz"
