// Command fleet-agent is the iot-fleet device agent.
//
//	fleet-agent [run] [--config FILE] [overrides]   provision if needed, connect, run jobs
//	fleet-agent --version                            print the version
//	fleet-agent check-job [--config FILE] [--handler-dir DIR] FILE...
//	                                                 validate job documents offline, with this device's rules
//	fleet-agent status [--config FILE] [--state-dir DIR] [-o text|json]
//	                                                 identity, certificate expiry, connection, job, OTA, outbox
//	fleet-agent check-config FILE...                 validate configuration files as the agent does at start
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
	"syscall"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/jobs"
	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/device/ota"
	"github.com/iot-fleet/iot-fleet/device/ota/jobsop"
	"github.com/iot-fleet/iot-fleet/device/rotation"
	"github.com/iot-fleet/iot-fleet/device/ssm"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// DefaultConfigFile is read when --config is not given.
const DefaultConfigFile = "/etc/fleet-agent/config.json"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// operations builds the registry of job operations the engine runs
// (OTA's mender_install, unless ota.enabled is false).
func operations(rt *agent.Runtime) (*jobs.Registry, error) {
	reg := jobs.NewRegistry()
	if err := registerOTA(reg, rt); err != nil {
		return nil, err
	}
	return reg, nil
}

// checkJobSetup is what check-job applies for an agent configuration: the
// operations that agent registers, validation only (OTA's with its
// ota.allowedHosts; none when OTA is off), and its runCommand rule, so
// check-job accepts and refuses exactly what that device would.
func checkJobSetup(cfg config.Config) (*jobs.Registry, jobdoc.RunCommandPolicy, error) {
	reg := jobs.NewRegistry()
	if cfg.OTA.Enabled {
		op := jobsop.New(nil, ota.Policy{Template: true, AllowedHosts: cfg.OTA.AllowedHosts})
		if err := reg.Register(ota.Operation, op); err != nil {
			return nil, jobdoc.RunCommandPolicy{}, err
		}
	}
	return reg, cfg.Jobs.RunCommandPolicy(), nil
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "check-job":
			ops, _, err := checkJobSetup(config.Default())
			if err != nil {
				fmt.Fprintf(stderr, "fleet-agent: %v\n", err)
				return 1
			}
			return jobs.CheckJobMain(args[1:], stdout, stderr, jobs.CheckJobOptions{
				Operations: ops, DefaultConfig: DefaultConfigFile, Load: loadCheckJobSetup,
			})
		case "status":
			return statusMain(args[1:], stdout, stderr)
		case "check-config":
			return config.CheckMain(args[1:], stdout, stderr)
		case "run":
			args = args[1:]
		case "version":
			fmt.Fprintln(stdout, version)
			return 0
		}
	}
	fs := flag.NewFlagSet("fleet-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", DefaultConfigFile, "configuration file (JSON)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	overrides := config.RegisterFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: fleet-agent [run] [flags]\n       fleet-agent check-job [--config FILE] [--handler-dir DIR] FILE...\n       fleet-agent status [--config FILE] [--state-dir DIR] [-o text|json]\n       fleet-agent check-config FILE...\n       fleet-agent --version")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fleet-agent: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	cfg, err := config.LoadValid(*configFile, overrides.Apply)
	if err != nil {
		config.WriteErrors(stderr, "fleet-agent: "+*configFile, err)
		return 1
	}
	lv := logLevel(cfg)
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))

	features := shadowFeatures(cfg, lv)
	if cfg.Jobs.Enabled {
		features = append(features, agent.JobsFeature(operations))
	}
	if cfg.SSM.Enabled {
		features = append(features, ssm.Feature())
	}
	// Certificate rotation (docs/rotation.md) is always on: a device must
	// be able to replace its certificate before it expires.
	features = append(features, rotation.Feature(rotation.Config{
		CertTimeout: cfg.Rotation.CertTimeout.D(), SwitchTimeout: cfg.Rotation.SwitchTimeout.D(),
	}))
	a, err := agent.New(agent.Options{Config: cfg, Version: version, Logger: logger, Features: features, TestHook: testHook()})
	if err != nil {
		fmt.Fprintf(stderr, "fleet-agent: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := a.Run(ctx); err != nil {
		logger.Error("fleet-agent failed", "err", err)
		return 1
	}
	return 0
}

// loadCheckJobSetup reads the agent configuration at path, which must be
// valid as the agent would require to start, for check-job.
func loadCheckJobSetup(path string) (*jobs.Registry, jobdoc.RunCommandPolicy, error) {
	cfg, err := config.LoadValid(path)
	if err != nil {
		return nil, jobdoc.RunCommandPolicy{}, err
	}
	return checkJobSetup(cfg)
}

func level(s string) slog.Level {
	switch s {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}
