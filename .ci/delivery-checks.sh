#!/usr/bin/env bash
# Delivery linters: actionlint (pinned) on every workflow, with shellcheck on
# their run: blocks, and shellcheck on the delivery scripts. Run by .ci/run,
# `make lint-delivery` and the test workflow. Needs Go and shellcheck.
set -euo pipefail
cd "$(dirname "$0")/.."

ACTIONLINT_VERSION=v1.7.7
tools="$PWD/.tools/bin"
actionlint="$tools/actionlint"
if ! [[ -x "$actionlint" ]] || [[ "$("$actionlint" -version | head -n 1)" != "$ACTIONLINT_VERSION" ]]; then
	mkdir -p "$tools"
	GOBIN="$tools" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi
command -v shellcheck >/dev/null 2>&1 || {
	echo "delivery-checks: shellcheck is missing (apt-get install shellcheck)" >&2
	exit 1
}

echo "actionlint $("$actionlint" -version | head -n 1): .github/workflows"
"$actionlint" -no-color
echo "shellcheck: delivery scripts"
shellcheck .ci/delivery-checks.sh device/image/build-image.sh
shellcheck --shell=sh device/image/rootfs/usr/local/lib/fleet-agent/firstboot.sh
echo "delivery checks passed"
