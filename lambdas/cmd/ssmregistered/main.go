// Command ssmregistered is the Lambda that records a device's SSM managed
// instance when it registers (EventBridge target; see lambdas/ssmregistered
// and docs/ssm.md).
//
// Environment: REGISTRY_TABLE, ENVIRONMENT, THING_NAME_PREFIX (required).
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmregistered"
)

func main() {
	log := lambdamain.Logger()
	env, err := lambdamain.Env(os.Getenv, []string{"REGISTRY_TABLE", "ENVIRONMENT", "THING_NAME_PREFIX"}, nil)
	if err != nil {
		lambdamain.Fail(log, err)
	}
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		lambdamain.Fail(log, fmt.Errorf("aws config: %w", err))
	}
	ddb := dynamodb.NewFromConfig(cfg)
	reg, err := registry.NewDynamoDB(ddb, env["REGISTRY_TABLE"])
	if err != nil {
		lambdamain.Fail(log, err)
	}
	state, err := ssmstate.NewDynamoDB(ddb, env["REGISTRY_TABLE"], nil)
	if err != nil {
		lambdamain.Fail(log, err)
	}
	h, err := ssmregistered.New(ssmregistered.Config{
		Registry: reg, State: state, SSM: ssm.NewFromConfig(cfg),
		Environment: env["ENVIRONMENT"], ThingNamePrefix: env["THING_NAME_PREFIX"], Logger: log,
	})
	if err != nil {
		lambdamain.Fail(log, err)
	}
	lambda.Start(h.Handle)
}
