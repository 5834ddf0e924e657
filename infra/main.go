// Command infra is the iot-fleet Pulumi program (Pulumi.yaml: main: infra/).
// It reads the typed stack configuration, builds the Lambdas, and declares
// the environment as components (see package components).
package main

import "github.com/pulumi/pulumi/sdk/v3/go/pulumi"

func main() {
	pulumi.Run(func(ctx *pulumi.Context) error {
		return run(ctx, programOptions{})
	})
}
