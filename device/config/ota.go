package config

import (
	"path/filepath"
	"time"

	"github.com/iot-fleet/iot-fleet/device/ota"
)

// OTA configures full-system updates with the mender client, run as the
// jobs engine's mender_install operation (docs/ota.md). It needs
// jobs.enabled.
type OTA struct {
	// Enabled registers the mender_install job operation; without it such
	// jobs are rejected as an unknown operation.
	Enabled bool `json:"enabled"`
	// MenderFlavor forces the mender client dialect (mender4, mender3,
	// legacy); empty detects it when a job runs.
	MenderFlavor string `json:"menderFlavor"`
	// MenderUpdatePath is mender client 4's mender-update.
	MenderUpdatePath string `json:"menderUpdatePath"`
	// MenderPath is mender client 1.x-3.x's mender.
	MenderPath string `json:"menderPath"`
	// MaxAttempts bounds install attempts (download failures, reboots
	// mid-install).
	MaxAttempts int `json:"maxAttempts"`
	// RetryDelay is the pause between install attempts.
	RetryDelay Duration `json:"retryDelay"`
	// InstallTimeout bounds one mender install.
	InstallTimeout Duration `json:"installTimeout"`
	// CommandTimeout bounds commit, rollback, the pre-reboot hook and the
	// reboot command.
	CommandTimeout Duration `json:"commandTimeout"`
	// AllowHTTP accepts http:// artifact URLs (local demos only).
	AllowHTTP bool `json:"allowHTTP"`
	// AllowedHosts are the hosts artifact URLs may name (the image's
	// template fills in the stack's artifacts bucket host); a job with an
	// artifact URL on any other host is REJECTED, and with none every
	// mender_install job is. Entries: "host", "host:port", or for the
	// path-style S3 endpoints "s3.REGION.amazonaws.com/BUCKET".
	AllowedHosts []string `json:"allowedHosts"`
	// ArtifactVerifyKey is the PEM public key the image installs for
	// mender's ArtifactVerifyKey; when set, an install fails (nothing is
	// installed) if the file is missing or is not a public key.
	ArtifactVerifyKey string `json:"artifactVerifyKey"`
	// ProgressInterval is the minimum gap between two progress messages
	// inside one 10% band.
	ProgressInterval Duration `json:"progressInterval"`
	// ReferenceProgress also publishes on mender/<thing>/job/<jobId>/progress.
	ReferenceProgress bool `json:"referenceProgress"`
	// PreRebootCommand runs before every reboot (empty: none).
	PreRebootCommand []string `json:"preRebootCommand"`
	// RebootCommand reboots the device.
	RebootCommand []string `json:"rebootCommand"`
	// RebootWait is how long the agent waits to be stopped by the shutdown
	// after the reboot command before it asks again.
	RebootWait Duration `json:"rebootWait"`
	// MaxReboots bounds reboot requests that did not reboot.
	MaxReboots int `json:"maxReboots"`
	// NoRollbackReboot skips the reboot into the old partition after a
	// health-check rollback.
	NoRollbackReboot bool `json:"noRollbackReboot"`
	// ConnectivityTimeout bounds the wait for the connection to AWS IoT
	// Core, the first health check after a reboot.
	ConnectivityTimeout Duration `json:"connectivityTimeout"`
	// HealthChecks are commands that must exit 0 before a commit.
	HealthChecks []HealthCheck `json:"healthChecks"`
	// BootIDFile is where the kernel boot id is read (a test and
	// diagnostic knob: tests point it at a file they change to simulate a
	// reboot).
	BootIDFile string `json:"bootIdFile"`
}

// HealthCheck is a command that must exit 0 within Timeout before an
// update is committed.
type HealthCheck struct {
	Name    string   `json:"name"`
	Command []string `json:"command"`
	// Timeout is the time limit (0: 1m).
	Timeout Duration `json:"timeout"`
}

// DefaultBootIDFile is the kernel's boot id.
const DefaultBootIDFile = "/proc/sys/kernel/random/boot_id"

// DefaultOTA is the default "ota" section.
func DefaultOTA() OTA {
	return OTA{
		Enabled:             true,
		MenderUpdatePath:    ota.DefaultMenderUpdatePath,
		MenderPath:          ota.DefaultMenderPath,
		MaxAttempts:         ota.DefaultMaxAttempts,
		RetryDelay:          Duration(ota.DefaultRetryDelay),
		InstallTimeout:      Duration(ota.DefaultInstallTimeout),
		CommandTimeout:      Duration(ota.DefaultCommandTimeout),
		ProgressInterval:    Duration(ota.DefaultProgressInterval),
		AllowedHosts:        []string{},
		PreRebootCommand:    []string{},
		RebootCommand:       ota.DefaultRebootCommand(),
		RebootWait:          Duration(ota.DefaultRebootWait),
		MaxReboots:          ota.DefaultMaxReboots,
		ConnectivityTimeout: Duration(ota.DefaultConnectivityTimeout),
		HealthChecks:        []HealthCheck{},
		BootIDFile:          DefaultBootIDFile,
	}
}

// validate checks the "ota" section.
func (o OTA) validate(path string, errs *Errors) {
	f := func(key string) string { return join(path, key) }
	switch ota.Flavor(o.MenderFlavor) {
	case ota.FlavorAuto, ota.FlavorMender4, ota.FlavorMender3, ota.FlavorLegacy:
	default:
		errs.Add(f("menderFlavor"), "must be empty (detect), %q, %q or %q, got %q", ota.FlavorMender4, ota.FlavorMender3, ota.FlavorLegacy, o.MenderFlavor)
	}
	for _, p := range []struct{ name, v string }{
		{"menderUpdatePath", o.MenderUpdatePath}, {"menderPath", o.MenderPath}, {"bootIdFile", o.BootIDFile},
	} {
		if required(errs, f(p.name), p.v) && !filepath.IsAbs(p.v) {
			errs.Add(f(p.name), "must be an absolute path, got %q", p.v)
		}
	}
	seen := map[string]int{}
	for i, h := range o.AllowedHosts {
		field := index(f("allowedHosts"), i)
		if err := ota.ValidateAllowedHost(h); err != nil {
			errs.Add(field, "%v", err)
		} else if j, dup := seen[h]; dup {
			errs.Add(field, "%q is already allowedHosts[%d]", h, j)
		} else {
			seen[h] = i
		}
	}
	if o.ArtifactVerifyKey != "" && !filepath.IsAbs(o.ArtifactVerifyKey) {
		errs.Add(f("artifactVerifyKey"), "must be an absolute path, got %q", o.ArtifactVerifyKey)
	}
	if o.MaxAttempts < 1 || o.MaxAttempts > 100 {
		errs.Add(f("maxAttempts"), "must be between 1 and 100, got %d", o.MaxAttempts)
	}
	if o.MaxReboots < 1 || o.MaxReboots > 100 {
		errs.Add(f("maxReboots"), "must be between 1 and 100, got %d", o.MaxReboots)
	}
	atLeast(errs, f("retryDelay"), o.RetryDelay, time.Millisecond)
	atLeast(errs, f("installTimeout"), o.InstallTimeout, time.Second)
	atLeast(errs, f("commandTimeout"), o.CommandTimeout, 100*time.Millisecond)
	atLeast(errs, f("progressInterval"), o.ProgressInterval, time.Millisecond)
	atLeast(errs, f("rebootWait"), o.RebootWait, time.Millisecond)
	atLeast(errs, f("connectivityTimeout"), o.ConnectivityTimeout, 10*time.Millisecond)
	if len(o.PreRebootCommand) > 0 && o.PreRebootCommand[0] == "" {
		errs.Add(f("preRebootCommand[0]"), "is empty (the program to run; use [] for no hook)")
	}
	switch {
	case len(o.RebootCommand) == 0:
		errs.Add(f("rebootCommand"), "is required (e.g. [\"systemctl\", \"reboot\"])")
	case o.RebootCommand[0] == "":
		errs.Add(f("rebootCommand[0]"), "is empty (the program to run)")
	}
	names := map[string]int{}
	for i, hc := range o.HealthChecks {
		field := index(f("healthChecks"), i)
		if hc.Name == "" {
			errs.Add(field+".name", "is required (it names the check in the job's failure reason)")
		} else if j, dup := names[hc.Name]; dup {
			errs.Add(field+".name", "%q is already the name of healthChecks[%d]", hc.Name, j)
		} else {
			names[hc.Name] = i
		}
		if len(hc.Command) == 0 || hc.Command[0] == "" {
			errs.Add(field+".command", "must name a program to run, e.g. [\"systemctl\", \"is-active\", \"app.service\"]")
		}
		if hc.Timeout != 0 && hc.Timeout.D() < 10*time.Millisecond {
			errs.Add(field+".timeout", "must be at least 10ms (or omitted for 1m), got %v", hc.Timeout.D())
		}
	}
}
