// Command ssmregistered is the Lambda that records a device's SSM managed
// instance when it registers (EventBridge target; see lambdas/ssmregistered
// and docs/ssm.md).
//
// Environment: REGISTRY_TABLE, ENVIRONMENT, THING_NAME_PREFIX (required).
package main

import (
	"context"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmregistered"
)

func main() {
	lambdamain.Run([]string{"REGISTRY_TABLE", "ENVIRONMENT", "THING_NAME_PREFIX"}, nil, build)
}

func build(log *slog.Logger, env map[string]string) (any, error) {
	cfg, err := lambdamain.AWSConfig(context.Background())
	if err != nil {
		return nil, err
	}
	reg, state, err := lambdamain.RegistryAndSSMState(cfg, env["REGISTRY_TABLE"])
	if err != nil {
		return nil, err
	}
	h, err := ssmregistered.New(ssmregistered.Config{
		Registry: reg, State: state, SSM: ssm.NewFromConfig(cfg),
		Environment: env["ENVIRONMENT"], ThingNamePrefix: env["THING_NAME_PREFIX"], Logger: log,
	})
	if err != nil {
		return nil, err
	}
	return h.Handle, nil
}
