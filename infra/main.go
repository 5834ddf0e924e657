// Command infra is the iot-fleet Pulumi program (Pulumi.yaml: main: infra/).
// It reads the typed stack configuration, builds the Lambdas, and declares
// the environment as components (see package components).
package main

import (
	"os"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

func main() {
	deployedBy := os.Getenv(EnvDeployedBy)
	pulumi.Run(func(ctx *pulumi.Context) error {
		return run(ctx, programOptions{DeployedBy: deployedBy})
	})
}
