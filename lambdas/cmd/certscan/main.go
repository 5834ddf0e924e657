// Command certscan is the certificate-expiry scan Lambda (runtime
// provided.al2023, handler binary "bootstrap", built with -tags
// lambda.norpc). The daily EventBridge Scheduler schedule invokes it with
// {}; an operator invokes it with {"thingName": "..."} or
// {"thingGroup": "..."} (see docs/rotation.md).
//
// Environment: REGISTRY_TABLE, THING_NAME_PREFIX (required);
// EXPIRY_WINDOW_DAYS (default 30), RESEND_AFTER_HOURS (default 20),
// CONCURRENCY (default 8), KEY_ALGORITHM (ecdsa-p256 or rsa-2048; default:
// each device's own), IOT_DATA_ENDPOINT (the account's IoT data endpoint
// host; default: the SDK's regional endpoint).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
)

func main() {
	lambdamain.Run([]string{"REGISTRY_TABLE", "THING_NAME_PREFIX"},
		[]string{"EXPIRY_WINDOW_DAYS", "RESEND_AFTER_HOURS", "CONCURRENCY", "KEY_ALGORITHM", "IOT_DATA_ENDPOINT"},
		build)
}

func build(log *slog.Logger, env map[string]string) (any, error) {
	windowDays, err := positive(env, "EXPIRY_WINDOW_DAYS", 30)
	if err != nil {
		return nil, err
	}
	resendHours, err := positive(env, "RESEND_AFTER_HOURS", 20)
	if err != nil {
		return nil, err
	}
	concurrency, err := positive(env, "CONCURRENCY", certscan.DefaultConcurrency)
	if err != nil {
		return nil, err
	}
	cfg, store, err := lambdamain.AWSAndRegistry(context.Background(), env["REGISTRY_TABLE"])
	if err != nil {
		return nil, err
	}
	h, err := certscan.New(certscan.Config{
		IoT:             iot.NewFromConfig(cfg),
		Data:            lambdamain.IoTDataClient(cfg, env["IOT_DATA_ENDPOINT"]),
		Registry:        store,
		ThingNamePrefix: env["THING_NAME_PREFIX"],
		Window:          time.Duration(windowDays) * 24 * time.Hour,
		ResendAfter:     time.Duration(resendHours) * time.Hour,
		Concurrency:     concurrency,
		KeyAlgorithm:    env["KEY_ALGORITHM"],
		Logger:          log,
	})
	if err != nil {
		return nil, err
	}
	return h.Handle, nil
}

// positive reads a positive integer variable, def when unset.
func positive(env map[string]string, name string, def int) (int, error) {
	v := env[name]
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s=%q: want a positive integer", name, v)
	}
	return n, nil
}
