// Command image-inject turns a Raspberry Pi OS Lite image file into an
// iot-fleet image, in place, without mounting it: it writes the fleet-agent
// binary, its systemd unit (enabled), its configuration rendered from the
// stack outputs, the Amazon root CA, the claim certificate and key (0600),
// the first-boot unit and script (enabled), the SSH hardening, and mender's
// artifact verification key with the configuration that makes mender check
// every artifact's signature, then reads everything back to verify it. See
// docs/delivery.md and docs/ota.md.
//
//	image-inject -image raspios.img -env dev -stack-outputs outputs.json \
//	    -agent dist/fleet-agent-linux-arm64 -claim-secret claim.json \
//	    -artifact-verify-key artifact-verify-key.pem
//
// On an A/B image (partitions boot, rootfs A, rootfs B, data: mender's
// full-system update layout, as the virtual Pi's base image) it writes both
// root file systems (rootfs B only when it holds one) and puts the agent's
// state directory on the data partition (/data/fleet-agent bind-mounted at
// /var/lib/fleet-agent), so the device's identity survives updates.
//
// The virtual Pi (docs/virtual-pi.md) runs against the local IoT Core: the
// target flags replace what is specific to a Pi on AWS IoT Core:
//
//	image-inject -image disk.img -env local -stack-outputs DIR/outputs.json \
//	    -agent fleet-agent-linux-arm64 -claim-cert DIR/claim.crt -claim-key DIR/claim.key \
//	    -artifact-verify-key verify.pem -root-ca DIR/ca.pem \
//	    -endpoint iot.vm.internal -port 8883 \
//	    -serial-file /sys/firmware/qemu_fw_cfg/by_name/opt/iot-fleet/serial/raw \
//	    -ota-allowed-host artifacts.vm.internal -ota-allow-http
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/iot-fleet/iot-fleet/device/image"
	"github.com/iot-fleet/iot-fleet/device/image/inject"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	err := run(ctx, log, os.Args[1:], os.Stderr)
	if code := exitCode(err); code != 0 {
		log.Error("image-inject failed", "err", err)
		os.Exit(code)
	}
}

// exitCode is the process's exit code after run: 0 when it succeeded or
// printed the usage (--help), 1 when it failed.
func exitCode(err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 1
}

// defaultSerialPattern is the stack's default SERIAL_PATTERN (a Raspberry Pi
// serial: 16 lower-case hex digits).
const defaultSerialPattern = "^[0-9a-f]{16}$"

type options struct {
	image, env, stackOutputs, agent, agentArch, agentUnit string
	claimSecret, claimCert, claimKey, authorizedKeys      string
	serialPattern, adminUser                              string
	artifactVerifyKey                                     string
	// Target: what differs from a Pi on AWS IoT Core.
	rootCA, endpoint      string
	port                  int
	serialFiles, otaHosts stringList
	otaAllowHTTP          bool
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	if v == "" {
		return errors.New("must not be empty")
	}
	*l = append(*l, v)
	return nil
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("image-inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.image, "image", "", "Raspberry Pi OS image file (uncompressed .img), modified in place (required)")
	fs.StringVar(&o.env, "env", "", "environment / stack name: dev or prod (required)")
	fs.StringVar(&o.stackOutputs, "stack-outputs", "", "output of `pulumi stack output --json` (required)")
	fs.StringVar(&o.agent, "agent", "", "fleet-agent binary for the device (required)")
	fs.StringVar(&o.agentArch, "agent-arch", "arm64", "architecture the agent binary must be built for: arm64, arm or amd64")
	fs.StringVar(&o.agentUnit, "agent-unit", "device/systemd/fleet-agent.service", "fleet-agent systemd unit")
	fs.StringVar(&o.claimSecret, "claim-secret", "", "claim secret JSON {certificatePem, privateKey} from Secrets Manager, mode 0600 (or -claim-cert and -claim-key)")
	fs.StringVar(&o.claimCert, "claim-cert", "", "claim certificate PEM (with -claim-key)")
	fs.StringVar(&o.claimKey, "claim-key", "", "claim private key PEM, mode 0600 (with -claim-cert)")
	fs.StringVar(&o.authorizedKeys, "ssh-authorized-keys", "", "optional SSH public keys for user pi; SSH stays off without them")
	fs.StringVar(&o.serialPattern, "serial-pattern", defaultSerialPattern, "serial pattern for the agent (Go regexp) and the first-boot script (ERE): keep it to the common subset")
	fs.StringVar(&o.adminUser, "admin-user", "pi", "the image's default user, whose password is locked")
	fs.StringVar(&o.artifactVerifyKey, "artifact-verify-key", "", "PEM public key of the release key that signs mender artifacts (required; mender refuses artifacts it does not verify)")
	fs.StringVar(&o.rootCA, "root-ca", "", "PEM root CA of the MQTT endpoint, installed instead of relying on Amazon Root CA 1 (the local IoT Core's CA for the virtual Pi)")
	fs.StringVar(&o.endpoint, "endpoint", "", "MQTT endpoint host the agent connects to (default: the stack output iotDataEndpoint)")
	fs.IntVar(&o.port, "port", 0, "MQTT port (default 8883)")
	fs.Var(&o.serialFiles, "serial-file", "file holding the device serial, for the agent and the first-boot script (repeatable, tried in order; default: the Pi's device tree, then /proc/cpuinfo)")
	fs.Var(&o.otaHosts, "ota-allowed-host", "host artifacts may be downloaded from (repeatable; default: the stack's artifacts bucket)")
	fs.BoolVar(&o.otaAllowHTTP, "ota-allow-http", false, "accept plain-HTTP artifact URLs (local test servers only)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if o.port < 0 || o.port > 65535 {
		return options{}, fmt.Errorf("-port %d: want 1-65535", o.port)
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, f := range []struct{ name, value string }{
		{"-image", o.image}, {"-env", o.env}, {"-stack-outputs", o.stackOutputs}, {"-agent", o.agent}, {"-agent-unit", o.agentUnit},
		{"-artifact-verify-key", o.artifactVerifyKey},
	} {
		if f.value == "" {
			return options{}, fmt.Errorf("%s is required", f.name)
		}
	}
	switch {
	case o.claimSecret != "" && (o.claimCert != "" || o.claimKey != ""):
		return options{}, errors.New("give either -claim-secret or -claim-cert with -claim-key, not both")
	case o.claimSecret == "" && (o.claimCert == "" || o.claimKey == ""):
		return options{}, errors.New("the claim certificate is required: -claim-secret, or -claim-cert with -claim-key")
	}
	return o, nil
}

func run(ctx context.Context, log *slog.Logger, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	tools, err := inject.FindTools()
	if err != nil {
		return err
	}
	manifest, err := image.LoadManifest()
	if err != nil {
		return err
	}
	stage, err := os.MkdirTemp("", "image-inject-inputs-")
	if err != nil {
		return fmt.Errorf("staging directory: %w", err)
	}
	defer os.RemoveAll(stage)

	base, err := readBase(ctx, o.image, tools)
	if err != nil {
		return err
	}
	inputs, err := prepareInputs(o, manifest, stage, base)
	if err != nil {
		return err
	}
	plan, err := manifest.Plan(inputs, stage)
	if err != nil {
		return err
	}
	if base.layout.AB() {
		plan.Data = image.DataPlan()
	}
	if err := inject.Inject(ctx, log, o.image, plan, tools); err != nil {
		return err
	}
	log.Info("image ready", "image", o.image, "env", o.env, "ssh", o.authorizedKeys != "", "ab", base.layout.AB())
	return nil
}

// baseImage is what the injection reads from the image before writing.
type baseImage struct {
	layout     inject.Layout
	menderConf []byte // the base image's mender configuration, or nil
	fstab      []byte // A/B images: the base image's /etc/fstab
}

// readBase reads the image's layout, its mender configuration (nil when it
// has none) and, on an A/B image, its /etc/fstab (required there: it must
// mount the data partition).
func readBase(ctx context.Context, img string, tools inject.Tools) (baseImage, error) {
	layout, err := inject.ReadLayout(img)
	if err != nil {
		return baseImage{}, err
	}
	root, err := inject.NewRoot(img, layout.Root, tools)
	if err != nil {
		return baseImage{}, err
	}
	b := baseImage{layout: layout}
	b.menderConf, err = root.ReadFile(ctx, image.MenderConfPath)
	if errors.Is(err, inject.ErrNotExist) {
		b.menderConf = nil
	} else if err != nil {
		return baseImage{}, fmt.Errorf("base image: %w", err)
	}
	if layout.AB() {
		b.fstab, err = root.ReadFile(ctx, image.FstabPath)
		if err != nil {
			return baseImage{}, fmt.Errorf("A/B base image: %w", err)
		}
	}
	return b, nil
}

// prepareInputs checks every input and writes the derived ones (config,
// image.env, claim certificate and key, mender configuration) into stage.
func prepareInputs(o options, m image.Manifest, stage string, base baseImage) (map[string]string, error) {
	if err := image.CheckAgentBinary(o.agent, o.agentArch); err != nil {
		return nil, err
	}
	unit, err := os.ReadFile(o.agentUnit)
	if err != nil {
		return nil, fmt.Errorf("agent unit: %w", err)
	}
	if err := image.CheckAgentUnit(unit, m); err != nil {
		return nil, fmt.Errorf("%s: %w", o.agentUnit, err)
	}

	raw, err := os.ReadFile(o.stackOutputs)
	if err != nil {
		return nil, fmt.Errorf("stack outputs: %w", err)
	}
	outputs, err := image.ParseStackOutputs(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.stackOutputs, err)
	}
	if _, err := regexp.Compile(o.serialPattern); err != nil {
		return nil, fmt.Errorf("-serial-pattern: %w", err)
	}
	values := map[string]string{"environment": o.env, "serialPattern": o.serialPattern}
	for k, v := range outputs {
		values[k] = v
	}
	config, err := image.RenderConfig(values)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.stackOutputs, err)
	}
	target := image.Target{Endpoint: o.endpoint, Port: o.port, SerialFiles: o.serialFiles,
		AllowedHosts: o.otaHosts, AllowHTTP: o.otaAllowHTTP}
	var rootCA []byte
	if o.rootCA != "" {
		if rootCA, err = os.ReadFile(o.rootCA); err != nil {
			return nil, fmt.Errorf("-root-ca: %w", err)
		}
		if err := image.CheckRootCA(rootCA); err != nil {
			return nil, fmt.Errorf("-root-ca %s: %w", o.rootCA, err)
		}
		target.RootCAFile = image.RootCAPath
	}
	if config, err = image.ApplyTarget(config, target); err != nil {
		return nil, err
	}
	env, err := image.ImageEnv(o.env, o.serialPattern, o.adminUser, o.serialFiles...)
	if err != nil {
		return nil, err
	}

	var cert, key []byte
	if o.claimSecret != "" {
		if err := image.CheckPrivateFile(o.claimSecret); err != nil {
			return nil, fmt.Errorf("-claim-secret: %w", err)
		}
		b, err := os.ReadFile(o.claimSecret)
		if err != nil {
			return nil, fmt.Errorf("-claim-secret: %w", err)
		}
		bundle, err := image.ParseClaimBundle(b)
		if err != nil {
			return nil, fmt.Errorf("-claim-secret %s: %w", o.claimSecret, err)
		}
		cert, key = []byte(bundle.CertificatePEM), []byte(bundle.PrivateKey)
	} else {
		if err := image.CheckPrivateFile(o.claimKey); err != nil {
			return nil, fmt.Errorf("-claim-key: %w", err)
		}
		if cert, err = os.ReadFile(o.claimCert); err != nil {
			return nil, fmt.Errorf("-claim-cert: %w", err)
		}
		if key, err = os.ReadFile(o.claimKey); err != nil {
			return nil, fmt.Errorf("-claim-key: %w", err)
		}
		if err := image.CheckClaimPair(cert, key); err != nil {
			return nil, err
		}
	}

	verifyKey, err := os.ReadFile(o.artifactVerifyKey)
	if err != nil {
		return nil, fmt.Errorf("-artifact-verify-key: %w", err)
	}
	if err := image.CheckArtifactVerifyKey(verifyKey); err != nil {
		return nil, fmt.Errorf("-artifact-verify-key %s: %w", o.artifactVerifyKey, err)
	}
	menderConf, err := image.MenderConf(base.menderConf)
	if err != nil {
		return nil, err
	}
	var fstab []byte
	if base.layout.AB() {
		if fstab, err = image.StateFstab(base.fstab); err != nil {
			return nil, fmt.Errorf("A/B base image: %w", err)
		}
	}

	inputs := map[string]string{image.InputAgent: o.agent, image.InputAgentUnit: o.agentUnit}
	derived := map[string][]byte{
		image.InputConfig:     config,
		image.InputImageEnv:   env,
		image.InputClaimCert:  cert,
		image.InputClaimKey:   key,
		image.InputMenderConf: menderConf,
		image.InputVerifyKey:  verifyKey,
	}
	if rootCA != nil {
		derived[image.InputRootCA] = rootCA
	}
	if fstab != nil {
		derived[image.InputFstab] = fstab
	}
	for name, content := range derived {
		p := filepath.Join(stage, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			return nil, fmt.Errorf("stage %s: %w", name, err)
		}
		inputs[name] = p
	}
	if o.authorizedKeys != "" {
		if _, err := os.Stat(o.authorizedKeys); err != nil {
			return nil, fmt.Errorf("-ssh-authorized-keys: %w", err)
		}
		inputs[image.InputAuthorizedKeys] = o.authorizedKeys
	}
	return inputs, nil
}
