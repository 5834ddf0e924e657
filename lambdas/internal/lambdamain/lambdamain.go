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
	"strings"
	"time"
)

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
