package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/device/config"
)

// BuildFakeMender builds the OTA core's fake mender client
// (device/ota/internal/fakemender: realistic progress output and exit
// codes, a call log, and A/B partitions driven by a scenario file) into dir.
func BuildFakeMender(ctx context.Context, dir string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fakemender")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./device/ota/internal/fakemender")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build fake mender: %w\n%s", err, out)
	}
	return bin, nil
}

// OTADevice is an agent whose mender client is the fake one (linked as
// mender-update) and whose reboot command only records the request. Reboot
// plays the reboot: kill -9 of the agent's process group (a power cut), a
// new boot id, and a fresh start.
type OTADevice struct {
	*Agent
	MenderDir  string
	BootIDFile string
	RebootLog  string
	boots      int
}

// NewOTADevice prepares (but does not start) an OTA-capable agent.
// scenario is the fake mender's scenario (e.g. {"bootedOld": true}:
// the new partition does not boot); checks are the health checks run
// before commit.
func (f *Fleet) NewOTADevice(name, serial, fakeMender string, scenario map[string]any, checks []config.HealthCheck) (*OTADevice, error) {
	dir := filepath.Join(f.Dir, "ota", name)
	d := &OTADevice{MenderDir: filepath.Join(dir, "mender"), BootIDFile: filepath.Join(dir, "boot_id"), RebootLog: filepath.Join(dir, "reboot.log")}
	if err := os.MkdirAll(d.MenderDir, 0o755); err != nil {
		return nil, fmt.Errorf("ota device %s: %w", name, err)
	}
	data, err := os.ReadFile(fakeMender)
	if err != nil {
		return nil, fmt.Errorf("ota device %s: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(d.MenderDir, "mender-update"), data, 0o755); err != nil {
		return nil, fmt.Errorf("ota device %s: %w", name, err)
	}
	if err := d.SetScenario(scenario); err != nil {
		return nil, err
	}
	if err := d.newBoot(); err != nil {
		return nil, err
	}
	a, err := f.NewAgent(name, AgentOptions{Serial: serial, Configure: func(c *config.Config) {
		c.OTA.MenderUpdatePath = filepath.Join(d.MenderDir, "mender-update")
		c.OTA.MenderPath = filepath.Join(d.MenderDir, "mender")
		c.OTA.AllowedHosts = []string{"iot-fleet-dev-artifacts.s3.amazonaws.com"}
		c.OTA.RetryDelay = config.Duration(100 * time.Millisecond)
		c.OTA.ProgressInterval = config.Duration(time.Hour)
		c.OTA.PreRebootCommand = []string{"/bin/sh", "-c", "echo pre-reboot >> " + d.RebootLog}
		c.OTA.RebootCommand = []string{"/bin/sh", "-c", "echo reboot >> " + d.RebootLog}
		c.OTA.RebootWait = config.Duration(10 * time.Minute)
		c.OTA.BootIDFile = d.BootIDFile
		c.OTA.HealthChecks = checks
		// The device is silent while it reboots; the local Jobs minute is
		// short.
		c.Jobs.ProgressTimeoutMinutes = 60
	}})
	if err != nil {
		return nil, err
	}
	d.Agent = a
	return d, nil
}

// SetScenario replaces the fake mender's scenario.
func (d *OTADevice) SetScenario(sc map[string]any) error {
	b, err := json.Marshal(sc)
	if err != nil {
		return fmt.Errorf("fake mender scenario: %w", err)
	}
	return os.WriteFile(filepath.Join(d.MenderDir, "scenario.json"), b, 0o600)
}

func (d *OTADevice) newBoot() error {
	d.boots++
	return os.WriteFile(d.BootIDFile, []byte(fmt.Sprintf("e2e00000-0000-4000-8000-%012d\n", d.boots)), 0o600)
}

// Reboot plays the reboot the agent asked for.
func (d *OTADevice) Reboot() error {
	if err := d.Kill(); err != nil {
		return err
	}
	if err := d.newBoot(); err != nil {
		return err
	}
	return d.Start()
}

// RebootRequests counts the reboots the agent asked for (pre-reboot hook
// then reboot command).
func (d *OTADevice) RebootRequests() int {
	b, _ := os.ReadFile(d.RebootLog)
	return strings.Count(string(b), "pre-reboot\nreboot\n")
}

// WaitRebootRequests waits until the agent has asked for n reboots.
func (d *OTADevice) WaitRebootRequests(ctx context.Context, n int) error {
	return Poll(ctx, fmt.Sprintf("%s: reboot request %d", d.Serial, n), func() bool { return d.RebootRequests() >= n })
}

// MenderOps lists the mender subcommands run so far (install, commit,
// rollback; not the read-only show-artifact), from the fake's call log.
func (d *OTADevice) MenderOps() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(d.MenderDir, "calls.log"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fake mender calls: %w", err)
	}
	var ops []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var c struct {
			Args []string `json:"args"`
		}
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			return nil, fmt.Errorf("fake mender calls: %w", err)
		}
		if len(c.Args) > 0 && !strings.HasPrefix(c.Args[0], "-") && c.Args[0] != "show-artifact" {
			ops = append(ops, c.Args[0])
		}
	}
	return ops, nil
}

// ActivePartition is the fake device's active partition ("A" or "B"),
// followed by the pending one while an update awaits its commit.
func (d *OTADevice) ActivePartition() (string, error) {
	var p struct {
		Active  string `json:"active"`
		Pending string `json:"pending"`
	}
	b, err := os.ReadFile(filepath.Join(d.MenderDir, "partitions.json"))
	if err != nil {
		return "", fmt.Errorf("fake mender partitions: %w", err)
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return "", fmt.Errorf("fake mender partitions: %w", err)
	}
	return p.Active + p.Pending, nil
}
