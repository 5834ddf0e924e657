// Command allowlistsync is the allowlist sync Lambda (runtime
// provided.al2023, handler binary "bootstrap", built with -tags
// lambda.norpc), triggered by the S3 ObjectCreated notification of the
// config bucket for allowlist.txt.
//
// Environment: REGISTRY_TABLE, THING_GROUP, DEVICE_POLICY,
// THING_NAME_PREFIX (all required), SERIAL_PATTERN (Go regexp, default
// ^[0-9a-f]{16}$).
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
)

func main() {
	log := lambdamain.Logger()
	env, err := lambdamain.Env(os.Getenv,
		[]string{"REGISTRY_TABLE", "THING_GROUP", "DEVICE_POLICY", "THING_NAME_PREFIX"},
		[]string{"SERIAL_PATTERN"})
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
	h, err := allowlistsync.New(allowlistsync.Config{
		S3:              s3.NewFromConfig(cfg),
		IoT:             iot.NewFromConfig(cfg),
		Registry:        store,
		SerialPattern:   re,
		ThingGroup:      env["THING_GROUP"],
		DevicePolicy:    env["DEVICE_POLICY"],
		ThingNamePrefix: env["THING_NAME_PREFIX"],
		Logger:          log,
	})
	if err != nil {
		lambdamain.Fail(log, err)
	}
	lambda.Start(h.Handle)
}
