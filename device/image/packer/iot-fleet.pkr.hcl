# Packer recipe for the iot-fleet Raspberry Pi OS image, with
# packer-builder-arm (github.com/mkaczanowski/packer-builder-arm) as in the
# reference architecture. It is the optional path for changes that must run
# *inside* the image (apt packages, under qemu-user in a chroot): that needs a
# privileged container or root with loop devices. Everything iot-fleet itself
# adds is written by the same injection step as `make image` and the
# build-image workflow (image-inject, no mounts), run as a post-processor on
# the finished image file, so both paths produce the same files, modes and
# enabled units. See docs/delivery.md for why the default path is not Packer.
#
# packer-builder-arm is a single-component plugin (packer init cannot install
# it); it is run from its Docker image, which bundles Packer, the plugin and
# qemu-user-static. Pin that image by digest in your own automation.
#
#   go build -o dist/image-inject ./device/image/cmd/image-inject
#   GOOS=linux GOARCH=arm64 CGO_ENABLED=0 go build -o dist/fleet-agent-linux-arm64 ./device/cmd/fleet-agent
#   docker run --rm --privileged -v /dev:/dev -v "$PWD:/build" -w /build \
#     mkaczanowski/packer-builder-arm build \
#     -var raspios_url=... -var raspios_sha256=... \
#     -var stack_outputs=outputs.json -var claim_secret=claim.json \
#     device/image/packer/iot-fleet.pkr.hcl
#
# The post-processor runs image-inject inside that container: it needs
# debugfs/e2fsck (e2fsprogs) and mcopy/mtype (mtools) there.

variable "raspios_url" {
  type        = string
  description = "Raspberry Pi OS Lite (arm64) .img.xz URL"
}

variable "raspios_sha256" {
  type        = string
  description = "SHA-256 of the .img.xz, published next to it"
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.raspios_sha256))
    error_message = "The raspios_sha256 value must be 64 lower-case hex digits."
  }
}

variable "image_env" {
  type    = string
  default = "dev"
}

variable "stack_outputs" {
  type        = string
  description = "file holding `pulumi stack output --json` for image_env"
}

variable "claim_secret" {
  type        = string
  sensitive   = true
  description = "file (mode 0600) holding the claim secret JSON from Secrets Manager"
}

variable "artifact_verify_key" {
  type        = string
  description = "file holding the PEM public key that verifies mender artifacts (docs/ota.md); never the private key"
}

variable "agent_bin" {
  type    = string
  default = "dist/fleet-agent-linux-arm64"
}

variable "image_inject" {
  type    = string
  default = "dist/image-inject"
}

variable "output_image" {
  type    = string
  default = "dist/iot-fleet.img"
}

variable "apt_packages" {
  type        = list(string)
  default     = []
  description = "extra Debian packages installed in the image (chroot under qemu-aarch64-static)"
}

source "arm" "raspios" {
  file_urls             = [var.raspios_url]
  file_checksum         = var.raspios_sha256
  file_checksum_type    = "sha256"
  file_target_extension = "xz"
  file_unarchive_cmd    = ["xz", "--decompress", "$ARCHIVE_PATH"]

  image_build_method = "reuse"
  image_path         = var.output_image
  image_size         = "4G"
  image_type         = "dos"

  image_partitions {
    name         = "boot"
    type         = "c"
    start_sector = "8192"
    filesystem   = "fat"
    size         = "512M"
    mountpoint   = "/boot/firmware"
  }

  image_partitions {
    name         = "root"
    type         = "83"
    start_sector = "1056768"
    filesystem   = "ext4"
    size         = "0"
    mountpoint   = "/"
  }

  image_chroot_env             = ["PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"]
  qemu_binary_source_path      = "/usr/bin/qemu-aarch64-static"
  qemu_binary_destination_path = "/usr/bin/qemu-aarch64-static"
}

build {
  sources = ["source.arm.raspios"]

  # Changes that need the image's own package manager.
  provisioner "shell" {
    environment_vars = ["DEBIAN_FRONTEND=noninteractive"]
    inline = concat(
      ["apt-get update", "apt-get -y full-upgrade"],
      length(var.apt_packages) > 0 ? ["apt-get -y install --no-install-recommends ${join(" ", var.apt_packages)}"] : [],
      ["apt-get clean", "rm -rf /var/lib/apt/lists/*"]
    )
  }

  # The iot-fleet layer: the same injection step as `make image`.
  post-processor "shell-local" {
    inline = [
      "${var.image_inject} -image ${var.output_image} -env ${var.image_env} -stack-outputs ${var.stack_outputs} -agent ${var.agent_bin} -agent-unit device/systemd/fleet-agent.service -claim-secret ${var.claim_secret} -artifact-verify-key ${var.artifact_verify_key}",
    ]
  }
}
