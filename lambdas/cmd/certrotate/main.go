// Command certrotate is the certificate-rotation Lambda (runtime
// provided.al2023, handler binary "bootstrap", built with -tags
// lambda.norpc). The topic rule on dt/fleet/+/rotate/+ invokes it with
// certrotate.Event (see certrotate.RuleSQL).
//
// Environment: REGISTRY_TABLE, DEVICE_POLICY, THING_NAME_PREFIX (required),
// IOT_DATA_ENDPOINT (optional: the account's IoT data endpoint host, the
// stack's iotDataEndpoint output; default: the SDK's regional endpoint).
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
)

func main() {
	log := lambdamain.Logger()
	env, err := lambdamain.Env(os.Getenv, []string{"REGISTRY_TABLE", "DEVICE_POLICY", "THING_NAME_PREFIX"}, []string{"IOT_DATA_ENDPOINT"})
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
	h, err := certrotate.New(certrotate.Config{
		IoT:             iot.NewFromConfig(cfg),
		Data:            dataClient(cfg, env["IOT_DATA_ENDPOINT"]),
		Registry:        store,
		DevicePolicy:    env["DEVICE_POLICY"],
		ThingNamePrefix: env["THING_NAME_PREFIX"],
		Logger:          log,
	})
	if err != nil {
		lambdamain.Fail(log, err)
	}
	lambda.Start(h.Handle)
}

// dataClient is the IoT data-plane client, on the account's endpoint when
// one is given.
func dataClient(cfg aws.Config, endpoint string) *iotdataplane.Client {
	return iotdataplane.NewFromConfig(cfg, func(o *iotdataplane.Options) {
		if endpoint != "" {
			if !strings.Contains(endpoint, "://") {
				endpoint = "https://" + endpoint
			}
			o.BaseEndpoint = aws.String(endpoint)
		}
	})
}
