// Command ssmexpire is the scheduled Lambda that deletes expired or used
// SSM activations and resets stale "activating" records (see
// lambdas/ssmexpire and docs/ssm.md).
//
// Environment: REGISTRY_TABLE, MANAGED_INSTANCE_ROLE, ENVIRONMENT,
// THING_NAME_PREFIX (required).
package main

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmexpire"
)

func main() {
	lambdamain.Run([]string{"REGISTRY_TABLE", "MANAGED_INSTANCE_ROLE", "ENVIRONMENT", "THING_NAME_PREFIX"}, nil, build)
}

func build(log *slog.Logger, env map[string]string) (any, error) {
	cfg, err := lambdamain.AWSConfig(context.Background())
	if err != nil {
		return nil, err
	}
	state, err := ssmstate.NewDynamoDB(dynamodb.NewFromConfig(cfg), env["REGISTRY_TABLE"], nil)
	if err != nil {
		return nil, err
	}
	h, err := ssmexpire.New(ssmexpire.Config{
		State: state, SSM: ssm.NewFromConfig(cfg), ManagedInstanceRole: env["MANAGED_INSTANCE_ROLE"],
		Environment: env["ENVIRONMENT"], ThingNamePrefix: env["THING_NAME_PREFIX"], Logger: log,
	})
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, ev json.RawMessage) (ssmexpire.Summary, error) {
		return h.Handle(ctx, ev)
	}, nil
}
