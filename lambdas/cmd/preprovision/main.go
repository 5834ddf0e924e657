// Command preprovision is the fleet-provisioning pre-provisioning hook
// Lambda (runtime provided.al2023, handler binary "bootstrap", built with
// -tags lambda.norpc).
//
// Environment: REGISTRY_TABLE and DEVICE_POLICY (the device IoT policy,
// detached from a retired certificate) required, SERIAL_PATTERN (Go
// regexp, default ^[0-9a-f]{16}$), THING_NAME_PREFIX (optional; when set
// the thing name is recorded in the registry).
//
// Retiring a re-provisioned device's previous certificate calls
// iot:DescribeCertificate, iot:UpdateCertificate, iot:DetachPolicy and
// iot:DetachThingPrincipal.
package main

import (
	"context"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
	"github.com/iot-fleet/iot-fleet/lambdas/preprovision"
)

func main() {
	lambdamain.Run([]string{"REGISTRY_TABLE", "DEVICE_POLICY"}, []string{"SERIAL_PATTERN", "THING_NAME_PREFIX"}, build)
}

func build(log *slog.Logger, env map[string]string) (any, error) {
	re, err := lambdamain.SerialPattern(env)
	if err != nil {
		return nil, err
	}
	cfg, store, err := lambdamain.AWSAndRegistry(context.Background(), env["REGISTRY_TABLE"])
	if err != nil {
		return nil, err
	}
	h, err := preprovision.New(preprovision.Config{
		Registry:        store,
		IoT:             iot.NewFromConfig(cfg),
		DevicePolicy:    env["DEVICE_POLICY"],
		SerialPattern:   re,
		ThingNamePrefix: env["THING_NAME_PREFIX"],
		Logger:          log,
	})
	if err != nil {
		return nil, err
	}
	return h.Handle, nil
}
