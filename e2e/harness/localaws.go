package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/iot-fleet/iot-fleet/sim/controlplane"
	"github.com/iot-fleet/iot-fleet/sim/core"
	"github.com/iot-fleet/iot-fleet/sim/dynamodbapi"
	"github.com/iot-fleet/iot-fleet/sim/lambdaapi"
	"github.com/iot-fleet/iot-fleet/sim/rules"
	"github.com/iot-fleet/iot-fleet/sim/s3api"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

// LocalAWS is the fleet's one local AWS endpoint, wired as `fleet-sim
// serve` wires it (AWS IoT control and data plane, Lambda Invoke of the
// stack's real handlers, the registry table read-only over DynamoDB's
// API, S3 for the artifacts and config buckets), served on 127.0.0.1 for
// operator tools (fleetctl) in the tests and the demo.
type LocalAWS struct {
	// URL is the endpoint (AWS_ENDPOINT_URL).
	URL string
	// Outputs are the local stack's outputs, as fleet-sim serve writes
	// them to DIR/outputs.json; OutputsDir holds that file (fleetctl
	// --local OutputsDir).
	Outputs    map[string]any
	OutputsDir string
	// ArtifactsHost is the host:port presigned artifact URLs point at
	// (an OTA device's ota.allowedHosts, with ota.allowHTTP).
	ArtifactsHost string
	// Store is the local S3.
	Store *s3api.Store

	srv *http.Server
}

// ServeAWS serves the local AWS endpoint of f on a free loopback port and
// writes f.Dir/aws/outputs.json. Close it before f.
func (f *Fleet) ServeAWS() (*LocalAWS, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("harness: local AWS endpoint: %w", err)
	}
	url := "http://" + ln.Addr().String()
	l := &LocalAWS{URL: url, ArtifactsHost: ln.Addr().String(), OutputsDir: filepath.Join(f.Dir, "aws")}
	h, err := l.wire(f.Stack)
	if err != nil {
		ln.Close()
		return nil, err
	}
	l.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := l.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			f.log.Error("harness: local AWS endpoint stopped", "error", err)
		}
	}()
	if err := l.writeOutputs(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Close stops serving.
func (l *LocalAWS) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return l.srv.Shutdown(ctx)
}

func (l *LocalAWS) wire(s *stack.Stack) (http.Handler, error) {
	c := s.Core
	env := c.Names().Env
	artifacts := "iot-fleet-" + env + "-artifacts"
	store, err := s3api.New(s3api.Options{Buckets: []string{artifacts, stack.ConfigBucket}, BaseURL: func() string { return l.URL }})
	if err != nil {
		return nil, fmt.Errorf("harness: local S3: %w", err)
	}
	l.Store = store
	store.OnPut(stack.ConfigBucket, func(ctx context.Context, _, key string, obj s3api.Object) error {
		if key != allowlistsync.DefaultObjectKey {
			return nil
		}
		_, err := s.DeployAllowlistWithMetadata(ctx, obj.Data, obj.Metadata)
		return err
	})
	c.Jobs().SetPresigner(store.Presign)
	jobsAPI := awsiot.NewJobs(c.Jobs(), c.IoT())
	jobsAPI.SetDocumentSource(store.ReadURL)
	iotAPI := controlplane.New(c.IoT(), jobsAPI, c.Endpoint, nil)
	iotAPI.ServeCertificateIssuance(awsiot.NewIssuer(c.IoT(), c.CA()))
	iotAPI.ServeDataPlane(controlplane.DataPlane{
		Publish: func(topic string, payload []byte, qos byte) {
			if c.Rules().Match(topic) {
				c.Rules().Dispatch(rules.Message{Topic: topic, Payload: payload})
			}
			c.PublishQoS(topic, payload, qos)
		},
		Shadows: c.Shadows(),
		Now:     func() int64 { return time.Now().Unix() },
	})
	functions := s.Functions()
	outputs := map[string]any{
		"thingGroup":        c.Names().ThingGroup,
		"thingGroupArn":     fmt.Sprintf("arn:%s:iot:%s:%s:thinggroup/%s", core.Partition, core.Region, core.AccountID, c.Names().ThingGroup),
		"artifactsBucket":   artifacts,
		"configBucket":      stack.ConfigBucket,
		"registryTable":     stack.RegistryTableName(env),
		"iotDataEndpoint":   strings.Split(c.Endpoint(), ":")[0],
		"region":            core.Region,
		"localEndpoint":     l.URL,
		"otaPresignRoleArn": fmt.Sprintf("arn:%s:iam::%s:role/iot-fleet-%s-ota-presign", core.Partition, core.AccountID, env),
	}
	for key, name := range map[string]string{
		"allowlistSyncLambda": "allowlistsync", "ssmToggleLambda": "ssmtoggle", "certRotateLambda": "certrotate",
		"certScanLambda": "certscan", "revokeLambda": "revoke",
	} {
		if fn := stack.FunctionName(env, name); functions[fn] != nil {
			outputs[key] = fn
		}
	}
	l.Outputs = outputs
	return controlplane.Endpoint{
		IoT: iotAPI,
		Lambda: lambdaapi.New(lambdaapi.Options{Functions: functions,
			ARNPrefix: fmt.Sprintf("arn:%s:lambda:%s:%s:function:", core.Partition, core.Region, core.AccountID)}),
		DynamoDB:   dynamodbapi.New(map[string]dynamodbapi.Table{stack.RegistryTableName(env): s.RegistryTable()}, nil),
		S3:         store.Handler(),
		IsDynamoDB: dynamodbapi.Owns, IsLambda: lambdaapi.Owns,
		IsS3: func(r *http.Request) bool { return store.Owns(r.URL.Path) },
	}, nil
}

func (l *LocalAWS) writeOutputs() error {
	b, err := json.MarshalIndent(l.Outputs, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(l.OutputsDir, 0o700); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(l.OutputsDir, "outputs.json"), b, 0o644); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	return nil
}
