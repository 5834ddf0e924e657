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
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
)

func main() {
	lambdamain.Run(
		[]string{"REGISTRY_TABLE", "DEVICE_POLICY", "THING_NAME_PREFIX"},
		[]string{"IOT_DATA_ENDPOINT"},
		build)
}

func build(log *slog.Logger, env map[string]string) (any, error) {
	cfg, store, err := lambdamain.AWSAndRegistry(context.Background(), env["REGISTRY_TABLE"])
	if err != nil {
		return nil, err
	}
	h, err := certrotate.New(certrotate.Config{
		IoT:             iot.NewFromConfig(cfg),
		Data:            lambdamain.IoTDataClient(cfg, env["IOT_DATA_ENDPOINT"]),
		Registry:        store,
		DevicePolicy:    env["DEVICE_POLICY"],
		ThingNamePrefix: env["THING_NAME_PREFIX"],
		Logger:          log,
	})
	if err != nil {
		return nil, err
	}
	return h.Handle, nil
}
