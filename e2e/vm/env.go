// Package vm runs the virtual Raspberry Pi scenarios (issue #14, "the
// run"): the project's VM image (make vm-image), with the agent injected by
// the project's own image step, boots under QEMU (software emulation)
// against the local IoT Core (sim/stack, in this process), and the
// scenarios drive it through the cloud side only — jobs, OTA, certificate
// rotation — reading the IoT Core's state and the guest's serial console.
// The power cut is a kill -9 of the QEMU process.
//
// e2e/vm_test.go (IOT_FLEET_VM=1, make vm-test) and cmd/vm-demo run the
// same scenarios; docs/virtual-pi.md describes them.
package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/qemu"
)

// Guest addresses of the network contract (docs/virtual-pi.md): the VM
// image's /etc/hosts maps iot.vm.internal and artifacts.vm.internal to
// them, and QEMU forwards them to the host's loopback.
const (
	IoTHost        = "iot.vm.internal"
	IoTGuestAddr   = "10.0.2.100:8883"
	ArtifactsGuest = "10.0.2.101:80"
	// SerialFwCfg is the fw_cfg item the image reads the machine serial
	// from.
	SerialFwCfg = "opt/iot-fleet/serial"
)

// Artifact file names in the image directory (make vm-image).
const (
	ArtifactGood = "v2.mender"
	ArtifactBad  = "v3-bad.mender"
)

// Options configure a run.
type Options struct {
	// ImageDir holds what make vm-image builds: base.img and base.json
	// (default dist/vm under the repository).
	ImageDir string
	// Dir holds the run's files: the disk, the console log, the agent
	// build, the timeline.
	Dir string
	// Serial is the machine's serial (16 hex digits); default
	// 00000000c0ffee01.
	Serial string
	// RebootDoc is the AWS IoT Device Client's sample reboot.json; default
	// the copy beside the repository
	// (shared/reference/aws-iot-device-client-sample-job-docs).
	RebootDoc string
	// Logger receives the local IoT Core's log lines.
	Logger *slog.Logger
	// Observer receives each timeline event as it happens.
	Observer func(Event)
}

// Env is a running virtual Pi and its cloud side.
type Env struct {
	Opts    Options
	TL      *Timeline
	Fleet   *harness.Fleet
	VM      *qemu.Machine
	Serial  string
	Thing   string
	Figures Figures

	// certID is the device's current certificate, bootID the guest's boot
	// id when last probed, otaJob the v2 update (the power cut and the
	// retry are two scenarios).
	certID string
	bootID string
	otaJob *jobWatch

	artifacts   *artifactServer
	artifactDir string
	// operator serves the local IoT Core's operator HTTP API (create jobs,
	// list things, ...; docs/local-iot-core.md) on the loopback.
	operator *http.Server
	// OperatorURL is its URL.
	OperatorURL string
	obs         *observer
	disk        string
	agentBin    string
	base        baseInfo
	cancel      context.CancelFunc
}

// baseInfo is what base.json says about the base image.
type baseInfo struct {
	BuildSeconds float64 `json:"buildSeconds"`
	Kernel       string  `json:"kernel"`
	Partitions   []struct {
		Number int    `json:"number"`
		Name   string `json:"name"`
		Offset int64  `json:"offset"`
		Size   int64  `json:"size"`
	} `json:"partitions"`
}

func (b baseInfo) partitionSize(n int) int64 {
	for _, p := range b.Partitions {
		if p.Number == n {
			return p.Size
		}
	}
	return 0
}

// Missing says what this machine lacks to run the virtual Pi, or "".
func Missing(imageDir string) string {
	for _, tool := range []string{"qemu-system-aarch64", "socat"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " is not installed (make vm-test installs qemu-system-arm and socat)"
		}
	}
	if _, err := os.Stat(qemu.DefaultBIOS); err != nil {
		return qemu.DefaultBIOS + " is missing (Debian package u-boot-qemu)"
	}
	for _, tool := range []string{"openssl", "mender-artifact", "debugfs", "jq", "sfdisk"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " is not installed (make vm-test installs the Debian packages)"
		}
	}
	for _, f := range []string{"base.img", "base.json"} {
		if _, err := os.Stat(filepath.Join(imageDir, f)); err != nil {
			return filepath.Join(imageDir, f) + " is missing (make vm-image builds it)"
		}
	}
	return ""
}

// Setup starts the cloud side, builds the agent for arm64, makes the
// device's disk from the base image with the project's image step, and
// prepares (but does not start) the machine.
func Setup(ctx context.Context, opts Options) (*Env, error) {
	if opts.Dir == "" {
		return nil, errors.New("vm: Options.Dir is required")
	}
	if opts.ImageDir == "" {
		root, err := harness.RepoRoot()
		if err != nil {
			return nil, err
		}
		opts.ImageDir = filepath.Join(root, "dist", "vm")
	}
	if opts.RebootDoc == "" {
		root, err := harness.RepoRoot()
		if err != nil {
			return nil, err
		}
		opts.RebootDoc = filepath.Join(root, "..", "shared", "reference", "aws-iot-device-client-sample-job-docs", "reboot.json")
	}
	if opts.Serial == "" {
		opts.Serial = "00000000c0ffee01"
	}
	if !hexSerial(opts.Serial) {
		return nil, fmt.Errorf("vm: serial %q: want 16 lower-case hex digits (the stack's serial pattern)", opts.Serial)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if why := Missing(opts.ImageDir); why != "" {
		return nil, errors.New("vm: " + why)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	e := &Env{Opts: opts, TL: NewTimeline(opts.Observer), Serial: opts.Serial, obs: newObserver()}
	ok := false
	defer func() {
		if !ok {
			_ = e.Close()
		}
	}()
	b, err := os.ReadFile(filepath.Join(opts.ImageDir, "base.json"))
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	if err := json.Unmarshal(b, &e.base); err != nil {
		return nil, fmt.Errorf("vm: base.json: %w", err)
	}
	e.Figures.ImageBuild = e.base.BuildSeconds

	e.TL.Now("building fleet-agent for linux/arm64")
	if e.agentBin, err = BuildAgentARM64(ctx, opts.Dir); err != nil {
		return nil, err
	}
	e.Fleet, err = harness.Start(ctx, harness.Options{
		Dir: opts.Dir, AgentBin: e.agentBin, Allowlist: opts.Serial + "\n",
		ServerNames: []string{IoTHost}, Logger: opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("vm: local IoT Core: %w", err)
	}
	e.Thing = e.Fleet.ThingName(opts.Serial)
	if err := e.obs.addRules(e.Fleet.Stack.Core.Rules(), e.Thing); err != nil {
		return nil, err
	}
	if err := e.serveOperatorAPI(); err != nil {
		return nil, err
	}
	e.TL.Now("local IoT Core on %s (the guest's %s), allowlist: %s; operator API %s", e.Fleet.Stack.Core.Endpoint(), IoTGuestAddr, opts.Serial, e.OperatorURL)

	e.disk = filepath.Join(opts.Dir, "disk.img")
	start := time.Now()
	if err := e.makeDisk(ctx); err != nil {
		return nil, err
	}
	e.TL.Now("disk and artifacts made in %s", time.Since(start).Round(100*time.Millisecond))
	files, err := artifactFiles(e.artifactDir, ArtifactGood, ArtifactBad)
	if err != nil {
		return nil, err
	}
	if e.artifacts, err = startArtifactServer(files); err != nil {
		return nil, err
	}

	e.VM, err = qemu.New(qemu.Config{
		Dir: filepath.Join(opts.Dir, "qemu"), Disk: e.disk,
		Forwards: []qemu.Forward{
			{GuestAddr: IoTGuestAddr, HostAddr: e.Fleet.Stack.Core.Endpoint()},
			{GuestAddr: ArtifactsGuest, HostAddr: e.artifacts.Addr()},
		},
		FwCfg:  []qemu.FwCfg{{Name: SerialFwCfg, Value: opts.Serial}},
		Logger: opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go e.watchConsole(wctx)
	ok = true
	return e, nil
}

// serveOperatorAPI serves the local IoT Core's operator HTTP API on a free
// loopback port, so a person can talk to the virtual Pi while the demo
// runs (e.g. curl -d @job.json $URL/jobs).
func (e *Env) serveOperatorAPI() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("vm: operator API: %w", err)
	}
	e.operator = &http.Server{Handler: e.Fleet.Stack.Core.HTTPHandler(), ReadHeaderTimeout: 30 * time.Second}
	e.OperatorURL = "http://" + ln.Addr().String()
	go func() { _ = e.operator.Serve(ln) }()
	return nil
}

// BuildAgentARM64 builds fleet-agent for the Pi (linux/arm64) into dir as
// the Makefile's agent target does.
func BuildAgentARM64(ctx context.Context, dir string) (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "fleet-agent-linux-arm64")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -buildid= -X main.version=vm-test", "-o", out, "./device/cmd/fleet-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("vm: build fleet-agent for arm64: %w\n%s", err, b)
	}
	return out, nil
}

// ConsoleLog is the path of the guest's console log.
func (e *Env) ConsoleLog() string { return filepath.Join(e.Opts.Dir, "qemu", "console.log") }

// Close stops the machine and the cloud side and writes the timeline and
// the figures into Dir.
func (e *Env) Close() error {
	var errs []error
	if e.VM != nil {
		errs = append(errs, e.VM.Close())
	}
	if e.cancel != nil {
		e.cancel()
	}
	if e.artifacts != nil {
		errs = append(errs, e.artifacts.Close())
	}
	if e.operator != nil {
		errs = append(errs, e.operator.Close())
	}
	if e.Fleet != nil {
		errs = append(errs, e.Fleet.Close())
	}
	e.Figures.Total = secs(time.Since(e.TL.Start()))
	if f, err := os.Create(filepath.Join(e.Opts.Dir, "timeline.json")); err == nil {
		errs = append(errs, e.TL.WriteJSON(f), f.Close())
	}
	errs = append(errs, writeFigures(filepath.Join(e.Opts.Dir, "figures.json"), e.Figures))
	return errors.Join(errs...)
}

// hexSerial reports whether s is 16 lower-case hex digits.
func hexSerial(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := strconv.ParseUint(s, 16, 64)
	return err == nil && s == strings.ToLower(s)
}
