# iot-fleet developer commands. `make demo` runs the fleet locally (no AWS
# account needed); `make test` runs every test. Both install what they need.

GO       ?= go
TOOLS    := $(CURDIR)/.tools
DYNALITE := $(TOOLS)/node_modules/.bin/dynalite
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
AGENT_LDFLAGS := -s -w -buildid= -X main.version=$(VERSION)

.PHONY: all tools apt-packages test vet bench demo agent fmt clean image lint-delivery vm-image vm-tools vm-test vm-demo

all: vet test

## tools: install what the tests talk to or use: Debian packages (when root),
## dynalite (a local DynamoDB API) from npm into .tools/
APT_PACKAGES := mosquitto mtools dosfstools fdisk e2fsprogs shellcheck xz-utils systemd mender-client mender-artifact openssl

tools: apt-packages $(DYNALITE)

# Node.js may come from elsewhere than Debian: only npm itself is required.
apt-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done; \
	  command -v npm >/dev/null 2>&1 || echo nodejs npm); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages (install them as root): $$missing" >&2; exit 1; fi; \
	  echo "installing: $$missing"; \
	  apt-get update -qq || exit 1; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi

$(DYNALITE):
	mkdir -p $(TOOLS)
	cd $(TOOLS) && npm install --no-audit --no-fund --silent dynalite@4.0.0

## vet: gofmt and go vet
vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting" >&2; exit 1; }
	$(GO) vet ./...

## test: every unit, integration and end-to-end test
test: tools vet
	$(GO) test -count=1 -timeout 45m ./...

## bench: the benchmarks whose figures are in docs/benchmarks.md
bench: tools
	$(GO) test -run '^$$' -bench . -benchmem ./...

## demo: start the local IoT Core and a small fleet of real agents
demo:
	$(GO) run ./cmd/fleet-demo

## agent: fleet-agent for the Raspberry Pi (arm64, armv7) and amd64
agent:
	mkdir -p dist
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '$(AGENT_LDFLAGS)' -o dist/fleet-agent-linux-arm64 ./device/cmd/fleet-agent
	CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 $(GO) build -trimpath -ldflags '$(AGENT_LDFLAGS)' -o dist/fleet-agent-linux-armv7 ./device/cmd/fleet-agent
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags '$(AGENT_LDFLAGS)' -o dist/fleet-agent-linux-amd64 ./device/cmd/fleet-agent

IMAGE_ENV ?= dev

## image: Raspberry Pi OS image for IMAGE_ENV (needs RASPIOS_URL, RASPIOS_SHA256; see docs/delivery.md)
image:
	IMAGE_ENV='$(IMAGE_ENV)' VERSION='$(VERSION)' GO='$(GO)' RASPIOS_URL='$(RASPIOS_URL)' RASPIOS_SHA256='$(RASPIOS_SHA256)' \
	  bash device/image/build-image.sh

## vm-image: the virtual Raspberry Pi's base disk (arm64 Debian 12, A/B layout,
## U-Boot) in dist/vm/ (override VM_OUT); root, installs its Debian packages
## (see docs/virtual-pi.md). Rebuilt only when its recipe changed (make -B
## vm-image, or delete the directory, to rebuild from today's archive).
VM_IMAGE_OUT    = $(or $(VM_OUT),dist/vm)
VM_IMAGE_RECIPE = $(addprefix device/image/vm/,build-vm-image.sh rootfs-setup.sh boot.cmd uboot-env.txt)
vm-image: $(VM_IMAGE_OUT)/base.img

$(VM_IMAGE_OUT)/base.img: $(VM_IMAGE_RECIPE)
	VM_OUT='$(VM_IMAGE_OUT)' bash device/image/vm/build-vm-image.sh

## lint-delivery: actionlint (pinned v1.7.7) and shellcheck on workflows and delivery scripts
lint-delivery:
	bash .ci/delivery-checks.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf dist infra/.build

## vm-tools: what running the virtual Raspberry Pi needs (Debian packages; as root)
VM_APT_PACKAGES := qemu-system-arm u-boot-qemu socat openssl mender-artifact e2fsprogs jq fdisk mmdebstrap

vm-tools:
	@missing=$$(for p in $(VM_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages (install them as root): $$missing" >&2; exit 1; fi; \
	  echo "installing: $$missing"; \
	  apt-get update -qq || exit 1; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi

# The scenarios boot the image built by vm-image, or the one in VM_IMAGE_DIR
# (base.img, base.json) without rebuilding it.
VM_IMAGE_DIR ?=
VM_IMAGE_USED = $(or $(VM_IMAGE_DIR),$(CURDIR)/$(or $(VM_OUT),dist/vm))

## vm-test: the virtual Raspberry Pi under QEMU (software emulation): the QEMU
## harness's own tests, then every scenario of docs/virtual-pi.md on one VM
## (builds the image first unless VM_IMAGE_DIR names a built one)
vm-test: vm-tools $(if $(VM_IMAGE_DIR),,vm-image)
	IOT_FLEET_VM=1 $(GO) test -count=1 -timeout 15m ./internal/qemu/
	IOT_FLEET_VM=1 VM_IMAGE_DIR='$(VM_IMAGE_USED)' $(GO) test -count=1 -timeout 75m -v -run '^TestVirtualPi$$' ./e2e/

## vm-demo: the same scenarios with a readable timeline (go run ./cmd/vm-demo --help)
vm-demo: vm-tools $(if $(VM_IMAGE_DIR),,vm-image)
	$(GO) run ./cmd/vm-demo --image-dir '$(VM_IMAGE_USED)'
