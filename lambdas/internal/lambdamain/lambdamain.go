// Package lambdamain holds what the Lambda mains share: reading the
// environment contract, logging, and reporting an initialisation failure
// to the Lambda Runtime API so the invocation fails with a clear message.
package lambdamain

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
)

// Run is the body of a Lambda main: it reads the required and optional
// environment variables, calls build for the handler and starts it with
// lambda.Start. An unset required variable or an error from build fails
// the initialisation (see Fail).
func Run(required, optional []string, build func(log *slog.Logger, env map[string]string) (any, error)) {
	log := Logger()
	env, err := Env(os.Getenv, required, optional)
	if err != nil {
		Fail(log, err)
	}
	h, err := build(log, env)
	if err != nil {
		Fail(log, err)
	}
	lambda.Start(h)
}

// SerialPatternEnv is the optional variable holding the serial pattern.
const SerialPatternEnv = "SERIAL_PATTERN"

// SerialPattern compiles env's SERIAL_PATTERN, or the allowlist's default
// pattern when it is unset.
func SerialPattern(env map[string]string) (*regexp.Regexp, error) {
	pattern := env[SerialPatternEnv]
	if pattern == "" {
		pattern = allowlist.DefaultSerialPattern
	}
	re, err := allowlist.CompilePattern(pattern)
	if err != nil {
		return nil, fmt.Errorf("SERIAL_PATTERN: %w", err)
	}
	return re, nil
}

// AWSConfig loads the default AWS configuration (the Lambda's region and
// role credentials).
func AWSConfig(ctx context.Context) (aws.Config, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return aws.Config{}, fmt.Errorf("aws config: %w", err)
	}
	return cfg, nil
}

// AWSAndRegistry loads the AWS configuration (see AWSConfig) and opens the
// device registry in table.
func AWSAndRegistry(ctx context.Context, table string) (aws.Config, *registry.DynamoDB, error) {
	cfg, err := AWSConfig(ctx)
	if err != nil {
		return aws.Config{}, nil, err
	}
	store, err := registry.NewDynamoDB(dynamodb.NewFromConfig(cfg), table)
	if err != nil {
		return aws.Config{}, nil, err
	}
	return cfg, store, nil
}

// RegistryAndSSMState opens the device registry and the SSM state kept in
// the same table, over one DynamoDB client.
func RegistryAndSSMState(cfg aws.Config, table string) (*registry.DynamoDB, *ssmstate.DynamoDB, error) {
	ddb := dynamodb.NewFromConfig(cfg)
	reg, err := registry.NewDynamoDB(ddb, table)
	if err != nil {
		return nil, nil, err
	}
	state, err := ssmstate.NewDynamoDB(ddb, table, nil)
	if err != nil {
		return nil, nil, err
	}
	return reg, state, nil
}

// IoTDataClient is the IoT data-plane client, on the account's endpoint
// (a host, or a URL) when one is given; otherwise on the SDK's regional
// endpoint.
func IoTDataClient(cfg aws.Config, endpoint string) *iotdataplane.Client {
	if endpoint != "" && !strings.Contains(endpoint, "://") {
		endpoint = "https://" + endpoint
	}
	return iotdataplane.NewFromConfig(cfg, func(o *iotdataplane.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	})
}

// Logger returns the JSON logger the Lambdas log with (stdout goes to the
// function's CloudWatch log group).
func Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(os.Stdout, nil))
}

// Env reads the required and optional environment variables through
// getenv. The error names every required variable that is unset or empty.
func Env(getenv func(string) string, required, optional []string) (map[string]string, error) {
	vals := map[string]string{}
	var missing []string
	for _, k := range required {
		v := getenv(k)
		if v == "" {
			missing = append(missing, k)
		}
		vals[k] = v
	}
	for _, k := range optional {
		vals[k] = getenv(k)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing environment variable(s): %s", strings.Join(missing, ", "))
	}
	return vals, nil
}

// RuntimeAPIEnv is the variable Lambda sets to the Runtime API's host:port.
const RuntimeAPIEnv = "AWS_LAMBDA_RUNTIME_API"

// ReportInitError posts err to the Runtime API's init/error endpoint when
// the process runs under one. Lambda then fails the pending invocation with
// this message instead of a bare "Runtime exited".
func ReportInitError(ctx context.Context, api string, err error) error {
	if api == "" {
		return nil
	}
	body, jerr := json.Marshal(map[string]any{
		"errorMessage": err.Error(),
		"errorType":    "Runtime.InitError",
	})
	if jerr != nil {
		return jerr
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, rerr := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+api+"/2018-06-01/runtime/init/error", bytes.NewReader(body))
	if rerr != nil {
		return rerr
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")
	resp, herr := http.DefaultClient.Do(req)
	if herr != nil {
		return fmt.Errorf("report init error: %w", herr)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("report init error: runtime API answered %s", resp.Status)
	}
	return nil
}

// Fail logs an initialisation error, reports it to the Runtime API and
// exits with status 1.
func Fail(log *slog.Logger, err error) {
	log.Error("initialisation failed", "error", err.Error())
	if rerr := ReportInitError(context.Background(), os.Getenv(RuntimeAPIEnv), err); rerr != nil {
		log.Error("could not report the initialisation error", "error", rerr.Error())
	}
	os.Exit(1)
}
