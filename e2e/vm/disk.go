package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

// SerialFile is where the VM image reads the machine serial (QEMU's
// fw_cfg item SerialFwCfg, module qemu_fw_cfg).
const SerialFile = "/sys/firmware/qemu_fw_cfg/by_name/" + SerialFwCfg + "/raw"

// makeDisk makes the device's disk as the pipeline makes a Pi's: a copy of
// the base image, then the project's image step (image-inject) with this
// run's local IoT Core (its root CA, claim certificate, the guest's name
// for the endpoint) and a release key made for the run; then the update
// artifacts from that disk (make-artifacts.sh: v2, v3-bad), signed with
// the release key.
func (e *Env) makeDisk(ctx context.Context) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	dir := e.Opts.Dir
	if err := run(ctx, "", "cp", "--sparse=always", filepath.Join(e.Opts.ImageDir, "base.img"), e.disk); err != nil {
		return err
	}

	keys := filepath.Join(dir, "release-keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	releaseKey, verifyKey := filepath.Join(keys, "release.key"), filepath.Join(keys, "artifact-verify-key.pem")
	// ECDSA P-256 in the SEC1 form mender-artifact reads (docs/ota.md,
	// release flow).
	if err := run(ctx, "", "openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", releaseKey); err != nil {
		return err
	}
	if err := os.Chmod(releaseKey, 0o600); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	if err := run(ctx, "", "openssl", "ec", "-in", releaseKey, "-pubout", "-out", verifyKey); err != nil {
		return err
	}

	// The local stack's outputs, as `pulumi stack output --json` prints a
	// stack's (the keys image-inject reads).
	names := e.Fleet.Stack.Core.Names()
	outputs, err := json.Marshal(map[string]string{
		"iotDataEndpoint": IoTHost, "provisioningTemplate": names.TemplateName, "thingGroup": names.ThingGroup,
		"artifactsBucket": names.ThingGroup + "-artifacts", "region": core.Region,
	})
	if err != nil {
		return err
	}
	outputsFile := filepath.Join(dir, "outputs.json")
	if err := os.WriteFile(outputsFile, outputs, 0o600); err != nil {
		return fmt.Errorf("vm: %w", err)
	}

	inject := filepath.Join(dir, "image-inject")
	if err := run(ctx, root, "go", "build", "-o", inject, "./device/image/cmd/image-inject"); err != nil {
		return err
	}
	rootCA, claimCert, claimKey := e.Fleet.TrustFiles()
	// From the repository root: image-inject reads the agent's unit
	// (device/systemd) relative to it, as build-image.sh runs it.
	if err := run(ctx, root, inject, "-image", e.disk, "-env", names.Env, "-stack-outputs", outputsFile,
		"-agent", e.agentBin, "-claim-cert", claimCert, "-claim-key", claimKey,
		"-artifact-verify-key", verifyKey, "-root-ca", rootCA,
		"-endpoint", IoTHost, "-port", "8883", "-serial-file", SerialFile,
		"-ota-allowed-host", ArtifactsHost, "-ota-allow-http"); err != nil {
		return err
	}
	e.TL.Now("image-inject: agent, config (endpoint %s:8883, artifacts from %s), root CA and claim of this run's IoT Core", IoTHost, ArtifactsHost)

	e.artifactDir = filepath.Join(dir, "artifacts")
	if err := run(ctx, root, "bash", "device/image/vm/make-artifacts.sh", e.disk, releaseKey, e.artifactDir); err != nil {
		return err
	}
	if e.Figures.RootfsBytes, err = payloadSize(ctx, filepath.Join(e.artifactDir, ArtifactGood), verifyKey); err != nil {
		return err
	}
	e.TL.Now("artifacts v2 and v3-bad made and signed (rootfs image %d MiB)", e.Figures.RootfsBytes>>20)
	return nil
}

var rePayloadSize = regexp.MustCompile(`(?m)^\s*size:\s*(\d+)\s*$`)

// payloadSize is the size of the rootfs image in a rootfs-image artifact,
// as mender-artifact read (which also verifies the signature) prints it.
func payloadSize(ctx context.Context, artifact, verifyKey string) (int64, error) {
	out, err := exec.CommandContext(ctx, "mender-artifact", "read", "--no-progress", "-k", verifyKey, artifact).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("vm: mender-artifact read %s: %w: %s", artifact, err, out)
	}
	m := rePayloadSize.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("vm: mender-artifact read %s: no payload size in %q", artifact, out)
	}
	return strconv.ParseInt(string(m[1]), 10, 64)
}

// run runs a tool and returns its output in the error.
func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("vm: %s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
