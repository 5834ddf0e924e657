// Command allowlistsync is the allowlist sync Lambda (runtime
// provided.al2023, handler binary "bootstrap", built with -tags
// lambda.norpc), triggered by the S3 ObjectCreated notification of the
// config bucket for allowlist.txt.
//
// Environment: REGISTRY_TABLE, THING_GROUP, DEVICE_POLICY,
// THING_NAME_PREFIX (all required), SERIAL_PATTERN (Go regexp, default
// ^[0-9a-f]{16}$), MAX_REVOCATIONS_PER_SYNC (positive integer; unset: max(5,
// ceil(10% of the provisioned fleet))).
//
// Revoking a device turns SSM off for it, from the SSM state kept in the
// registry table: ssm:DeleteActivation, ssm:DeregisterManagedInstance and
// ssm:DescribeInstanceInformation.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
)

func main() {
	lambdamain.Run(
		[]string{"REGISTRY_TABLE", "THING_GROUP", "DEVICE_POLICY", "THING_NAME_PREFIX"},
		[]string{"SERIAL_PATTERN", maxRevocationsEnv},
		build)
}

const maxRevocationsEnv = "MAX_REVOCATIONS_PER_SYNC"

// maxRevocations reads MAX_REVOCATIONS_PER_SYNC: unset is 0 (the default
// limit), anything else must be a positive integer.
func maxRevocations(env map[string]string) (int, error) {
	v := env[maxRevocationsEnv]
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s=%q: want a positive integer (unset for the default max(5, ceil(10%% of the admitted fleet)))", maxRevocationsEnv, v)
	}
	return n, nil
}

func build(log *slog.Logger, env map[string]string) (any, error) {
	re, err := lambdamain.SerialPattern(env)
	if err != nil {
		return nil, err
	}
	limit, err := maxRevocations(env)
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
	h, err := allowlistsync.New(allowlistsync.Config{
		S3:              s3.NewFromConfig(cfg),
		IoT:             iot.NewFromConfig(cfg),
		SSM:             ssm.NewFromConfig(cfg),
		SSMState:        state,
		MaxRevocations:  limit,
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
