// Command ssmtoggle is the SSM-on-demand toggle Lambda (runtime
// provided.al2023, handler binary "bootstrap", built with -tags
// lambda.norpc). See lambdas/ssmtoggle and docs/ssm.md.
//
// Environment: REGISTRY_TABLE, MANAGED_INSTANCE_ROLE (IAM role name),
// ENVIRONMENT (dev|prod), THING_NAME_PREFIX ("<env>-"), IOT_DATA_ENDPOINT
// (host of the account's iot:Data-ATS endpoint) are required;
// SERIAL_PATTERN (default ^[0-9a-f]{16}$), ACTIVATION_EXPIRY_HOURS
// (default 2, 1..720) and CONCURRENCY (default 8) are optional. The region
// sent to devices is the Lambda's AWS_REGION.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

func intEnv(name, v string, def, lo, hi int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s must be an integer between %d and %d, got %q", name, lo, hi, v)
	}
	return n, nil
}

func main() {
	lambdamain.Run(
		[]string{"REGISTRY_TABLE", "MANAGED_INSTANCE_ROLE", "ENVIRONMENT", "THING_NAME_PREFIX", "IOT_DATA_ENDPOINT"},
		[]string{"SERIAL_PATTERN", "ACTIVATION_EXPIRY_HOURS", "CONCURRENCY"},
		build)
}

func build(log *slog.Logger, env map[string]string) (any, error) {
	re, err := lambdamain.SerialPattern(env)
	if err != nil {
		return nil, err
	}
	hours, err := intEnv("ACTIVATION_EXPIRY_HOURS", env["ACTIVATION_EXPIRY_HOURS"], 2, 1, 720)
	if err != nil {
		return nil, err
	}
	conc, err := intEnv("CONCURRENCY", env["CONCURRENCY"], ssmtoggle.DefaultConcurrency, 1, 64)
	if err != nil {
		return nil, err
	}
	cfg, err := lambdamain.AWSConfig(context.Background())
	if err != nil {
		return nil, err
	}
	reg, state, err := lambdamain.RegistryAndSSMState(cfg, env["REGISTRY_TABLE"])
	if err != nil {
		return nil, err
	}
	h, err := ssmtoggle.New(ssmtoggle.Config{
		Registry: reg, State: state, SSM: ssm.NewFromConfig(cfg), IoT: iot.NewFromConfig(cfg),
		Data:                lambdamain.IoTDataClient(cfg, env["IOT_DATA_ENDPOINT"]),
		ManagedInstanceRole: env["MANAGED_INSTANCE_ROLE"], Region: cfg.Region, Environment: env["ENVIRONMENT"],
		ThingNamePrefix: env["THING_NAME_PREFIX"], SerialPattern: re,
		ActivationTTL: time.Duration(hours) * time.Hour, Concurrency: conc, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	return h.Handle, nil
}
