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
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
)

func main() {
	log := lambdamain.Logger()
	env, err := lambdamain.Env(os.Getenv, []string{"REGISTRY_TABLE", "THING_NAME_PREFIX"},
		[]string{"EXPIRY_WINDOW_DAYS", "RESEND_AFTER_HOURS", "CONCURRENCY", "KEY_ALGORITHM", "IOT_DATA_ENDPOINT"})
	if err != nil {
		lambdamain.Fail(log, err)
	}
	windowDays, err := positive(env, "EXPIRY_WINDOW_DAYS", 30)
	if err != nil {
		lambdamain.Fail(log, err)
	}
	resendHours, err := positive(env, "RESEND_AFTER_HOURS", 20)
	if err != nil {
		lambdamain.Fail(log, err)
	}
	concurrency, err := positive(env, "CONCURRENCY", certscan.DefaultConcurrency)
	if err != nil {
		lambdamain.Fail(log, err)
	}
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		lambdamain.Fail(log, fmt.Errorf("aws config: %w", err))
	}
	store, err := registry.NewDynamoDB(dynamodb.NewFromConfig(cfg), env["REGISTRY_TABLE"])
	if err != nil {
		lambdamain.Fail(log, err)
	}
	endpoint := env["IOT_DATA_ENDPOINT"]
	data := iotdataplane.NewFromConfig(cfg, func(o *iotdataplane.Options) {
		if endpoint != "" {
			if !strings.Contains(endpoint, "://") {
				endpoint = "https://" + endpoint
			}
			o.BaseEndpoint = aws.String(endpoint)
		}
	})
	h, err := certscan.New(certscan.Config{
		IoT:             iot.NewFromConfig(cfg),
		Data:            data,
		Registry:        store,
		ThingNamePrefix: env["THING_NAME_PREFIX"],
		Window:          time.Duration(windowDays) * 24 * time.Hour,
		ResendAfter:     time.Duration(resendHours) * time.Hour,
		Concurrency:     concurrency,
		KeyAlgorithm:    env["KEY_ALGORITHM"],
		Logger:          log,
	})
	if err != nil {
		lambdamain.Fail(log, err)
	}
	lambda.Start(h.Handle)
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
