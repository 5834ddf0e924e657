// Command preprovision is the fleet-provisioning pre-provisioning hook
// Lambda (runtime provided.al2023, handler binary "bootstrap", built with
// -tags lambda.norpc).
//
// Environment: REGISTRY_TABLE (required), SERIAL_PATTERN (Go regexp,
// default ^[0-9a-f]{16}$), THING_NAME_PREFIX (optional; when set the thing
// name is recorded in the registry).
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
	"github.com/iot-fleet/iot-fleet/lambdas/preprovision"
)

func main() {
	log := lambdamain.Logger()
	env, err := lambdamain.Env(os.Getenv, []string{"REGISTRY_TABLE"}, []string{"SERIAL_PATTERN", "THING_NAME_PREFIX"})
	if err != nil {
		lambdamain.Fail(log, err)
	}
	pattern := env["SERIAL_PATTERN"]
	if pattern == "" {
		pattern = allowlist.DefaultSerialPattern
	}
	re, err := allowlist.CompilePattern(pattern)
	if err != nil {
		lambdamain.Fail(log, fmt.Errorf("SERIAL_PATTERN: %w", err))
	}
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		lambdamain.Fail(log, fmt.Errorf("aws config: %w", err))
	}
	store, err := registry.NewDynamoDB(dynamodb.NewFromConfig(cfg), env["REGISTRY_TABLE"])
	if err != nil {
		lambdamain.Fail(log, err)
	}
	h, err := preprovision.New(preprovision.Config{
		Registry:        store,
		SerialPattern:   re,
		ThingNamePrefix: env["THING_NAME_PREFIX"],
		Logger:          log,
	})
	if err != nil {
		lambdamain.Fail(log, err)
	}
	lambda.Start(h.Handle)
}
