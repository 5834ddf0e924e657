package fleetctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/iot-fleet/iot-fleet/infra/stackconfig"
)

// globalFlags are the flags every command shares: which stack, and how to
// print.
type globalFlags struct {
	stack       string // Pulumi stack name (dev, prod)
	projectDir  string // where Pulumi.yaml and Pulumi.<stack>.yaml are
	outputsFile string // stack outputs as `pulumi stack output --json` prints them
	localDir    string // the local IoT Core's directory (DIR/outputs.json, its endpoint)
	output      string // table | json
}

func (g *globalFlags) register(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVarP(&g.stack, "stack", "s", "", "Pulumi stack (reads Pulumi.<stack>.yaml and the stack's outputs)")
	f.StringVar(&g.projectDir, "project-dir", ".", "directory of Pulumi.yaml and the stack files")
	f.StringVar(&g.outputsFile, "outputs", "", "stack outputs as JSON (pulumi stack output --json > FILE); default: ask pulumi")
	f.StringVar(&g.localDir, "local", "", "the local IoT Core's directory (fleet-sim serve --dir DIR): its outputs.json, and its endpoint for every AWS client")
	f.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
}

func (g *globalFlags) validate() error {
	if g.output != "table" && g.output != "json" {
		return usageError{fmt.Errorf("--output must be table or json, got %q", g.output)}
	}
	if g.localDir != "" && (g.outputsFile != "" || g.stack != "") {
		return usageError{errors.New("--local reads the local IoT Core's outputs: give it without --stack or --outputs")}
	}
	return nil
}

// stackConfig reads and validates Pulumi.<stack>.yaml with the Pulumi
// program's own parser, so fleetctl applies the settings the stack applies.
// Without --stack it returns the defaults of a stack with no settings.
func (g *globalFlags) stackConfig() (stackconfig.Config, error) {
	values := map[string]string{}
	if g.stack != "" {
		path := filepath.Join(g.projectDir, "Pulumi."+g.stack+".yaml")
		b, err := os.ReadFile(path)
		if err != nil {
			return stackconfig.Config{}, fmt.Errorf("stack %s: %w", g.stack, err)
		}
		if values, err = parseStackFile(b); err != nil {
			return stackconfig.Config{}, fmt.Errorf("%s: %w", path, err)
		}
	} else {
		// The program requires these two; they do not matter here.
		values[stackconfig.KeyRegion] = "us-east-1"
		values[stackconfig.KeyEnvironment] = "local"
	}
	c, err := stackconfig.FromMap(values)
	if err != nil {
		return stackconfig.Config{}, withCode(ExitInvalid, err)
	}
	return c, nil
}

// parseStackFile returns the config map of a Pulumi stack file with every
// value as the string Pulumi would pass to the program (secrets are left
// out: fleetctl needs none).
func parseStackFile(b []byte) (map[string]string, error) {
	var doc struct {
		Config map[string]yaml.Node `yaml:"config"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	out := make(map[string]string, len(doc.Config))
	for k, n := range doc.Config {
		if n.Kind != yaml.ScalarNode {
			continue // secure values and objects
		}
		out[k] = n.Value
	}
	return out, nil
}

// outputs returns the stack outputs: from --outputs, or from
// `pulumi stack output --json --stack S`.
func (g *globalFlags) outputs(ctx context.Context) (Outputs, error) {
	var raw []byte
	switch {
	case g.localDir != "":
		b, err := os.ReadFile(filepath.Join(g.localDir, LocalOutputsFile))
		if err != nil {
			return nil, fmt.Errorf("--local: %w (is fleet-sim serve --dir %s running?)", err, g.localDir)
		}
		raw = b
	case g.outputsFile != "":
		b, err := os.ReadFile(g.outputsFile)
		if err != nil {
			return nil, fmt.Errorf("stack outputs: %w", err)
		}
		raw = b
	case g.stack != "":
		cmd := exec.CommandContext(ctx, "pulumi", "stack", "output", "--json", "--stack", g.stack, "--cwd", g.projectDir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("pulumi stack output --stack %s: %w: %s", g.stack, err, bytes.TrimSpace(stderr.Bytes()))
		}
		raw = b
	default:
		return nil, usageError{fmt.Errorf("no stack: give --stack NAME, --outputs FILE or --local DIR")}
	}
	var m Outputs
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("stack outputs: not a JSON object: %w", err)
	}
	return m, nil
}

// hasOutputs reports whether the command line names where the stack
// outputs are.
func (g *globalFlags) hasOutputs() bool {
	return g.localDir != "" || g.outputsFile != "" || g.stack != ""
}

// fleet validates the global flags, reads the stack outputs and connects.
func (g *globalFlags) fleet(cmd *cobra.Command) (*Fleet, error) {
	if err := g.validate(); err != nil {
		return nil, err
	}
	outputs, err := g.outputs(cmd.Context())
	if err != nil {
		return nil, err
	}
	return g.connect(cmd, outputs)
}

// connect connects to the stack of outputs, in the stack's region when
// --stack names it.
func (g *globalFlags) connect(cmd *cobra.Command, outputs Outputs) (*Fleet, error) {
	region := ""
	if g.stack != "" {
		cfg, err := g.stackConfig()
		if err != nil {
			return nil, err
		}
		region = cfg.Region
	}
	f, err := Connect(cmd.Context(), outputs, region)
	if err != nil {
		return nil, err
	}
	f.Progress = cmd.ErrOrStderr()
	return f, nil
}
