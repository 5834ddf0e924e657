package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/infra/components"
	"github.com/iot-fleet/iot-fleet/infra/lambdabuild"
	"github.com/iot-fleet/iot-fleet/infra/stackconfig"
	"github.com/iot-fleet/iot-fleet/internal/allowlist"
)

// programOptions override where the program finds and puts files.
type programOptions struct {
	// Root is the project root (Pulumi.yaml, go.mod, allowlist.txt).
	// Empty means the engine's root directory, else the nearest parent of
	// the working directory holding Pulumi.yaml.
	Root string
	// BuildDir receives the Lambda zips; empty means <root>/infra/.build.
	BuildDir string
	// Prebuilt, when set, are the Lambda packages to deploy instead of
	// building them (tests build once and run the program many times).
	Prebuilt map[string]lambdabuild.Artifact
	// DeployedBy is who deploys (main passes $GITHUB_ACTOR, which GitHub
	// Actions sets); when set it becomes the allowlist object's
	// deployed-by metadata.
	DeployedBy string
}

// EnvDeployedBy is the environment variable main reads DeployedBy from.
const EnvDeployedBy = "GITHUB_ACTOR"

// deployedByRE is what a deployed-by value may be: a GitHub login (letters,
// digits, '-'), an app's "name[bot]", or an operator's name or ticket-like
// id; S3 metadata values travel in HTTP headers, so nothing else.
var deployedByRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@\[\]-]{0,63}$`)

// IoT endpoint types the stack exports.
const (
	endpointData        = "iot:Data-ATS"
	endpointCredentials = "iot:CredentialProvider"
)

// run is the Pulumi program.
func run(ctx *pulumi.Context, opts programOptions) error {
	outputs, err := declare(ctx, opts)
	if err != nil {
		return err
	}
	for name, value := range outputs {
		ctx.Export(name, value)
	}
	return nil
}

// declare validates the configuration and the allowlist, builds the
// Lambdas, declares the stack and returns its outputs. Everything that can
// be checked locally is checked before the first resource is declared, so
// bad input fails the deployment without changing anything.
func declare(ctx *pulumi.Context, opts programOptions) (pulumi.Map, error) {
	cfg, err := stackconfig.FromContext(ctx)
	if err != nil {
		return nil, err
	}
	if opts.DeployedBy != "" && !deployedByRE.MatchString(opts.DeployedBy) {
		return nil, fmt.Errorf("%s=%q: not a user name (letters, digits, '.', '_', '@', '-', '[', ']'; at most 64)", EnvDeployedBy, opts.DeployedBy)
	}
	root, err := projectRoot(ctx.RootDirectory(), opts.Root)
	if err != nil {
		return nil, err
	}
	allowlistPath := filepath.Join(root, cfg.AllowlistPath)
	if err := validateAllowlist(allowlistPath, cfg.SerialPattern); err != nil {
		return nil, err
	}

	partition, err := aws.GetPartition(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("aws partition: %w", err)
	}
	region, err := aws.GetRegion(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("aws region: %w", err)
	}
	if region.Name != cfg.Region {
		return nil, fmt.Errorf("%s is %q but the AWS provider deploys to %q", stackconfig.KeyRegion, cfg.Region, region.Name)
	}
	identity, err := aws.GetCallerIdentity(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("aws account: %w", err)
	}
	dataEndpoint, err := iot.GetEndpoint(ctx, &iot.GetEndpointArgs{EndpointType: pulumi.StringRef(endpointData)})
	if err != nil {
		return nil, fmt.Errorf("iot data endpoint: %w", err)
	}
	credentialsEndpoint, err := iot.GetEndpoint(ctx, &iot.GetEndpointArgs{EndpointType: pulumi.StringRef(endpointCredentials)})
	if err != nil {
		return nil, fmt.Errorf("iot credentials endpoint: %w", err)
	}

	artifacts := opts.Prebuilt
	if artifacts == nil {
		if artifacts, err = buildLambdas(ctx.Context(), root, opts.BuildDir); err != nil {
			return nil, err
		}
	}

	stack, err := components.NewStack(ctx, cfg.Prefix(), components.StackArgs{
		Config:        cfg,
		Partition:     partition.Partition,
		Region:        region.Name,
		AccountID:     identity.AccountId,
		Lambdas:       artifacts,
		AllowlistPath: allowlistPath,
		DataEndpoint:  dataEndpoint.EndpointAddress,
		DeployedBy:    opts.DeployedBy,
	})
	if err != nil {
		return nil, err
	}
	outputs := stack.Outputs()
	outputs["iotDataEndpoint"] = pulumi.String(dataEndpoint.EndpointAddress)
	outputs["iotCredentialsEndpoint"] = pulumi.String(credentialsEndpoint.EndpointAddress)
	outputs["region"] = pulumi.String(region.Name)
	return outputs, nil
}

// buildLambdas builds every Lambda of the stack from
// <root>/lambdas/cmd/<name> into buildDir (default <root>/infra/.build).
func buildLambdas(ctx context.Context, root, buildDir string) (map[string]lambdabuild.Artifact, error) {
	if buildDir == "" {
		buildDir = filepath.Join(root, "infra", ".build")
	}
	artifacts := map[string]lambdabuild.Artifact{}
	for _, name := range components.LambdaNames() {
		art, err := lambdabuild.Build(ctx, lambdabuild.Spec{
			Name:      name,
			ModuleDir: root,
			Package:   "./lambdas/cmd/" + name,
			OutDir:    buildDir,
		})
		if err != nil {
			return nil, err
		}
		artifacts[name] = art
	}
	return artifacts, nil
}

// validateAllowlist parses the allowlist file with the parser the sync
// Lambda uses; the error names the file and the bad line.
func validateAllowlist(path, serialPattern string) error {
	pattern, err := allowlist.CompilePattern(serialPattern)
	if err != nil {
		return fmt.Errorf("%s: %w", stackconfig.KeySerialPattern, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", stackconfig.KeyAllowlistPath, err)
	}
	defer f.Close()
	if _, err := allowlist.Parse(f, pattern); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// projectRoot picks the project root: explicit, else the engine's root
// directory, else the nearest parent of the working directory holding
// Pulumi.yaml.
func projectRoot(engineRoot, explicit string) (string, error) {
	for _, dir := range []string{explicit, engineRoot} {
		if dir != "" {
			return filepath.Abs(dir)
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("project root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "Pulumi.yaml")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("project root: no Pulumi.yaml in the working directory or its parents")
		}
		dir = parent
	}
}
