package main

import (
	"testing"

	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
)

// The packaged bootstrap refuses a KEEP_VERSIONS that leaves no room for
// the next version, naming the variable.
func TestBootstrapRejectsBadConfiguration(t *testing.T) {
	bin := lambdatest.BuildBootstrap(t, "./lambdas/cmd/templateversions")
	lambdatest.RequireInitError(t, bin, map[string]string{"AWS_REGION": "us-east-1", "TEMPLATE_NAME": "iot-fleet-dev", "KEEP_VERSIONS": "5"},
		"KEEP_VERSIONS: templateversions: keep 5: must be 1 to 4, leaving room for the next version")
	lambdatest.RequireInitError(t, bin, map[string]string{"AWS_REGION": "us-east-1", "TEMPLATE_NAME": "iot-fleet-dev", "KEEP_VERSIONS": "four"},
		`KEEP_VERSIONS="four": want an integer from 1 to 4`)
}
