// Command templateversions is the provisioning-template version pruning
// Lambda (runtime provided.al2023, handler binary "bootstrap", built with
// -tags lambda.norpc). The stack invokes it, through an
// aws.lambda.Invocation, before every update of the template body (see
// lambdas/templateversions and infra/README.md).
//
// Environment: TEMPLATE_NAME (required); KEEP_VERSIONS (1-4, default 4).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdamain"
	"github.com/iot-fleet/iot-fleet/lambdas/templateversions"
)

func main() {
	lambdamain.Run([]string{"TEMPLATE_NAME"}, []string{"KEEP_VERSIONS"}, build)
}

func build(log *slog.Logger, env map[string]string) (any, error) {
	keep := templateversions.DefaultKeep
	if v := env["KEEP_VERSIONS"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("KEEP_VERSIONS=%q: want an integer from 1 to %d", v, templateversions.MaxVersions-1)
		}
		keep = n
	}
	cfg, err := lambdamain.AWSConfig(context.Background())
	if err != nil {
		return nil, err
	}
	h, err := templateversions.New(templateversions.Config{
		IoT: iot.NewFromConfig(cfg), TemplateName: env["TEMPLATE_NAME"], Keep: keep, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("KEEP_VERSIONS: %w", err)
	}
	return h.Handle, nil
}
