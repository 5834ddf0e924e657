// Command revoke is the emergency revoke Lambda (runtime provided.al2023,
// handler binary "bootstrap", built with -tags lambda.norpc), invoked by
// an operator (fleetctl revoke, aws lambda invoke) with
// {"serial": "...", "reason": "...", "by": "..."} (or "thingName" instead
// of "serial"); see lambdas/revoke.
//
// Environment: REGISTRY_TABLE, THING_GROUP, DEVICE_POLICY,
// THING_NAME_PREFIX (all required), SERIAL_PATTERN (Go regexp, default
// ^[0-9a-f]{16}$).
//
// Revoking a device turns SSM off for it, from the SSM state kept in the
// registry table: ssm:DeleteActivation, ssm:DeregisterManagedInstance and
// ssm:DescribeInstanceInformation.
package main

import (
	"context"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
	"github.com/iot-fleet/iot-fleet/lambdas/revoke"
)

func main() {
	lambdamain.Run(
		[]string{"REGISTRY_TABLE", "THING_GROUP", "DEVICE_POLICY", "THING_NAME_PREFIX"},
		[]string{lambdamain.SerialPatternEnv},
		build)
}

func build(log *slog.Logger, env map[string]string) (any, error) {
	re, err := lambdamain.SerialPattern(env)
	if err != nil {
		return nil, err
	}
	cfg, err := lambdamain.AWSConfig(context.Background())
	if err != nil {
		return nil, err
	}
	store, state, err := lambdamain.RegistryAndSSMState(cfg, env["REGISTRY_TABLE"])
	if err != nil {
		return nil, err
	}
	h, err := revoke.New(revoke.Config{
		IoT:             iot.NewFromConfig(cfg),
		Registry:        store,
		SSM:             ssm.NewFromConfig(cfg),
		SSMState:        state,
		SerialPattern:   re,
		ThingGroup:      env["THING_GROUP"],
		DevicePolicy:    env["DEVICE_POLICY"],
		ThingNamePrefix: env["THING_NAME_PREFIX"],
		Logger:          log,
	})
	if err != nil {
		return nil, err
	}
	return h.Handle, nil
}
