package jobs

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/device/jobs/runner"
)

// CheckJobOptions is what `fleet-agent check-job` knows about the device.
type CheckJobOptions struct {
	// Operations are the operations an agent with the default
	// configuration registers (may be nil).
	Operations *Registry
	// DefaultConfig is the agent configuration file read when --config is
	// not given; if it does not exist the agent's defaults apply.
	DefaultConfig string
	// Load reads the agent configuration file at path and returns what
	// that agent would apply: the operations it registers (e.g. OTA's
	// mender_install with its allowed hosts, or none when OTA is off) and
	// its runCommand rule (jobs.runCommand). nil: only the defaults are
	// known.
	Load func(path string) (*Registry, jobdoc.RunCommandPolicy, error)
}

// CheckJobMain implements `fleet-agent check-job [--config FILE]
// [--handler-dir DIR] FILE...`: each file is parsed with the engine's
// parser, the operations in opts and the device's runCommand rule (from
// --config, else opts.DefaultConfig if it exists, else the defaults). It
// first prints the rule it applied; for a valid document it prints the plan
// of the steps to stdout; for an invalid one, or one the device's rule
// refuses, it prints the file, the field and the problem to stderr. It
// returns 0 when every document is valid, 1 when at least one is invalid
// or unreadable or the configuration cannot be read, and 2 for a usage
// error.
func CheckJobMain(args []string, stdout, stderr io.Writer, opts CheckJobOptions) int {
	fs := flag.NewFlagSet("check-job", flag.ContinueOnError)
	fs.SetOutput(stderr)
	handlerDir := fs.String("handler-dir", "", "handler directory to show in the plan")
	configFile := fs.String("config", "", "agent configuration whose jobs.runCommand rule applies (default "+orNone(opts.DefaultConfig)+" if it exists, else the agent's defaults)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: fleet-agent check-job [--config FILE] [--handler-dir DIR] FILE...")
		fmt.Fprintln(stderr, "Validates AWS IoT job documents offline, as the device would, and prints the plan of their steps.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	ops, policy, source, err := checkJobConfig(*configFile, opts)
	if err != nil {
		fmt.Fprintf(stderr, "check-job: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s [%s]\n%s\n\n", policy.Describe(), source, policy.DescribePath())
	explain := jobdoc.ExplainOptions{HandlerDir: *handlerDir, Resolve: resolver(*handlerDir, policy)}
	parseOpts := jobdoc.Options{Operations: ops, RunCommand: policy}
	status := 0
	for i, name := range fs.Args() {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		data, err := os.ReadFile(name)
		if err != nil {
			fmt.Fprintf(stderr, "%s: cannot read: %v\n", name, err)
			status = 1
			continue
		}
		doc, err := jobdoc.Parse(data, parseOpts)
		if err != nil {
			var de *jobdoc.Error
			if errors.As(err, &de) {
				field := de.Field
				if field == "" {
					field = "(document)"
				}
				fmt.Fprintf(stderr, "%s: INVALID: field %s: %s\n", name, field, de.Problem)
			} else {
				fmt.Fprintf(stderr, "%s: INVALID: %v\n", name, err)
			}
			status = 1
			continue
		}
		fmt.Fprintf(stdout, "%s: valid\n%s", name, jobdoc.ExplainWith(doc, explain))
	}
	return status
}

// checkJobConfig returns the operations and the runCommand rule check-job
// applies, and where they come from.
func checkJobConfig(configFile string, opts CheckJobOptions) (*Registry, jobdoc.RunCommandPolicy, string, error) {
	path := configFile
	if path == "" {
		path = opts.DefaultConfig
		if path == "" {
			return opts.Operations, jobdoc.RunCommandPolicy{}, "agent defaults", nil
		}
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return opts.Operations, jobdoc.RunCommandPolicy{}, "agent defaults: " + path + " does not exist", nil
		}
	}
	if opts.Load == nil {
		return nil, jobdoc.RunCommandPolicy{}, "", fmt.Errorf("cannot read the agent configuration %s here", path)
	}
	ops, p, err := opts.Load(path)
	if err != nil {
		return nil, jobdoc.RunCommandPolicy{}, "", fmt.Errorf("agent configuration %s: %w", path, err)
	}
	return ops, p, "from " + path, nil
}

// resolver resolves runHandler steps for check-job as the runner would on
// this machine (handler directory, allowed path or PATH, with the device's
// rule), when --handler-dir names the handler directory; nil otherwise.
func resolver(handlerDir string, policy jobdoc.RunCommandPolicy) func(jobdoc.Action) (jobdoc.Resolved, error) {
	if handlerDir == "" {
		return nil
	}
	abs, err := filepath.Abs(handlerDir)
	if err != nil {
		return nil
	}
	r, err := runner.New(runner.Config{HandlerDir: abs, RunCommand: policy, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil
	}
	return func(a jobdoc.Action) (jobdoc.Resolved, error) {
		if a.Path != "" && a.Path != jobdoc.DefaultPath {
			return jobdoc.Resolved{Rule: runner.RuleAllowedPath, Path: filepath.Join(a.Path, a.Handler), Note: " (if jobs.allowedPaths lists it on the device)"}, nil
		}
		res, err := r.Resolve(a)
		if err != nil {
			return jobdoc.Resolved{}, err
		}
		out := jobdoc.Resolved{Rule: res.Rule, Path: res.Path}
		if res.Rule == runner.RulePATH {
			out.Note = " (found in this machine's PATH; the agent's PATH decides on the device)"
		}
		return out, nil
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
