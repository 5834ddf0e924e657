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
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
)

func main() {
	lambdamain.Run(
		[]string{"REGISTRY_TABLE", "THING_GROUP", "DEVICE_POLICY", "THING_NAME_PREFIX"},
		[]string{"SERIAL_PATTERN"},
		build)
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
		return nil, err
	}
	return h.Handle, nil
}
