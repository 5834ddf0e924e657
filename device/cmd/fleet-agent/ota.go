package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/jobs"
	"github.com/iot-fleet/iot-fleet/device/ota"
	"github.com/iot-fleet/iot-fleet/device/ota/jobsop"
)

// registerOTA registers the mender_install operation (docs/ota.md) built
// from the "ota" section, unless ota.enabled is false.
func registerOTA(reg *jobs.Registry, rt *agent.Runtime) error {
	cfg := rt.Config.OTA
	if !cfg.Enabled {
		return nil
	}
	upd, err := ota.New(updaterConfig(rt, cfg))
	if err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	return reg.Register(ota.Operation, jobsop.New(upd, upd.Policy()))
}

// updaterConfig maps the "ota" section and the runtime onto ota.Config.
func updaterConfig(rt *agent.Runtime, cfg config.OTA) ota.Config {
	checks := make([]ota.HealthCheck, 0, len(cfg.HealthChecks))
	for _, hc := range cfg.HealthChecks {
		checks = append(checks, ota.HealthCheck{Name: hc.Name, Command: hc.Command, Timeout: hc.Timeout.D()})
	}
	return ota.Config{
		StateDir:  rt.Store.Dir(),
		ThingName: rt.Identity.ThingName,
		Mender: ota.MenderConfig{
			Flavor:     ota.Flavor(cfg.MenderFlavor),
			UpdatePath: cfg.MenderUpdatePath,
			Path:       cfg.MenderPath,
		},
		MaxAttempts:         cfg.MaxAttempts,
		RetryDelay:          cfg.RetryDelay.D(),
		InstallTimeout:      cfg.InstallTimeout.D(),
		CommandTimeout:      cfg.CommandTimeout.D(),
		AllowHTTP:           cfg.AllowHTTP,
		AllowedHosts:        cfg.AllowedHosts,
		ArtifactVerifyKey:   cfg.ArtifactVerifyKey,
		Publisher:           rt.Outbox,
		ProgressInterval:    cfg.ProgressInterval.D(),
		ReferenceProgress:   cfg.ReferenceProgress,
		PreRebootCommand:    cfg.PreRebootCommand,
		RebootCommand:       cfg.RebootCommand,
		RebootWait:          cfg.RebootWait.D(),
		MaxReboots:          cfg.MaxReboots,
		NoRollbackReboot:    cfg.NoRollbackReboot,
		Connectivity:        rt.Conn.WaitConnected,
		ConnectivityTimeout: cfg.ConnectivityTimeout.D(),
		HealthChecks:        checks,
		BootID:              bootIDReader(cfg.BootIDFile),
		Logger:              rt.Logger,
	}
}

// bootIDReader reads the boot id from path on every call (the kernel's,
// or a file a test rewrites to simulate a reboot).
func bootIDReader(path string) func() (string, error) {
	if path == config.DefaultBootIDFile {
		return ota.ReadBootID
	}
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("read boot id: %w", err)
		}
		id := strings.TrimSpace(string(b))
		if id == "" {
			return "", errors.New("read boot id: " + path + " is empty")
		}
		return id, nil
	}
}
