package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	neturl "net/url"
	"path/filepath"
	"strconv"
	"time"

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

// localAWS is the one local AWS endpoint of the stack: AWS IoT control and
// data plane, Lambda Invoke, the read-only registry table (DynamoDB) and
// the artifacts and config buckets (S3).
type localAWS struct {
	url          string
	artifactsURL string
	handler      http.Handler
	store        *s3api.Store
	functions    map[string]lambdaapi.Function
	artifacts    string // artifacts bucket name
}

// artifactsBucket is the local artifacts bucket of env.
func artifactsBucket(env string) string { return "iot-fleet-" + env + "-artifacts" }

// newLocalAWS wires the endpoint served at url for s. Presigned artifact
// URLs point at artifactsURL ("": url), the endpoint as devices reach it.
func newLocalAWS(s *stack.Stack, url, artifactsURL string, log *slog.Logger) (*localAWS, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := s.Core
	env := c.Names().Env
	if artifactsURL == "" {
		artifactsURL = url
	}
	l := &localAWS{url: url, artifactsURL: artifactsURL, functions: s.Functions(), artifacts: artifactsBucket(env)}
	var err error
	l.store, err = s3api.New(s3api.Options{Buckets: []string{l.artifacts, stack.ConfigBucket}, BaseURL: func() string { return artifactsURL }, Logger: log})
	if err != nil {
		return nil, err
	}
	// As the stack's S3 notification: uploading allowlist.txt to the
	// config bucket runs the allowlist sync.
	l.store.OnPut(stack.ConfigBucket, func(ctx context.Context, _, key string, obj s3api.Object) error {
		if key != allowlistsync.DefaultObjectKey {
			return nil
		}
		res, err := s.DeployAllowlistWithMetadata(ctx, obj.Data, obj.Metadata)
		if err != nil {
			return fmt.Errorf("allowlist sync: %w", err)
		}
		log.Info("allowlist uploaded to the config bucket: sync ran", "result", fmt.Sprintf("%+v", res))
		return nil
	})
	c.Jobs().SetPresigner(l.store.Presign)
	jobsAPI := awsiot.NewJobs(c.Jobs(), c.IoT())
	jobsAPI.SetDocumentSource(l.store.ReadURL)
	iotAPI := controlplane.New(c.IoT(), jobsAPI, c.Endpoint, log.With("component", "control-plane"))
	iotAPI.ServeCertificateIssuance(awsiot.NewIssuer(c.IoT(), c.CA()))
	iotAPI.ServeDataPlane(controlplane.DataPlane{
		Publish: func(topic string, payload []byte, qos byte) {
			// Topic rules see HTTP publishes too, as in AWS.
			if c.Rules().Match(topic) {
				c.Rules().Dispatch(rules.Message{Topic: topic, Payload: payload})
			}
			c.PublishQoS(topic, payload, qos)
		},
		Shadows: c.Shadows(),
		Now:     func() int64 { return time.Now().Unix() },
	})
	l.handler = controlplane.Endpoint{
		IoT: iotAPI,
		Lambda: lambdaapi.New(lambdaapi.Options{Functions: l.functions, Logger: log,
			ARNPrefix: fmt.Sprintf("arn:%s:lambda:%s:%s:function:", core.Partition, core.Region, core.AccountID)}),
		DynamoDB:   dynamodbapi.New(map[string]dynamodbapi.Table{stack.RegistryTableName(env): s.RegistryTable()}, log),
		S3:         l.store.Handler(),
		IsDynamoDB: dynamodbapi.Owns, IsLambda: lambdaapi.Owns,
		IsS3: func(r *http.Request) bool { return l.store.Owns(r.URL.Path) },
	}
	return l, nil
}

// outputs are the local stack's outputs as `pulumi stack output --json`
// prints a deployed stack's (the keys infra exports), plus what reaching
// the local IoT Core takes: localEndpoint (the URL for AWS_ENDPOINT_URL),
// iotDataPort (the MQTT/TLS port, a number) and the PEM files in dir.
func (l *localAWS) outputs(s *stack.Stack, dir string) (map[string]any, error) {
	n := s.Core.Names()
	host, port, err := net.SplitHostPort(s.Core.Endpoint())
	if err != nil {
		return nil, fmt.Errorf("MQTT endpoint %q: %w", s.Core.Endpoint(), err)
	}
	portN, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("MQTT endpoint %q: %w", s.Core.Endpoint(), err)
	}
	arn := func(service, resource string) string {
		return fmt.Sprintf("arn:%s:%s:%s:%s:%s", core.Partition, service, core.Region, core.AccountID, resource)
	}
	out := map[string]any{
		"provisioningTemplate":   n.TemplateName,
		"claimPolicy":            n.ClaimPolicy,
		"devicePolicy":           n.DevicePolicy,
		"thingGroup":             n.ThingGroup,
		"thingGroupArn":          arn("iot", "thinggroup/"+n.ThingGroup),
		"artifactsBucket":        l.artifacts,
		"configBucket":           stack.ConfigBucket,
		"allowlistKey":           allowlistsync.DefaultObjectKey,
		"registryTable":          stack.RegistryTableName(n.Env),
		"registryTableArn":       arn("dynamodb", "table/"+stack.RegistryTableName(n.Env)),
		"ssmManagedInstanceRole": stack.ManagedInstanceRoleName(n.Env),
		// The role AWS IoT Jobs would assume to presign (presignedUrlConfig
		// roleArn): accepted by the local IoT Core, which presigns itself.
		"otaPresignRoleArn": fmt.Sprintf("arn:%s:iam::%s:role/iot-fleet-%s-presign", core.Partition, core.AccountID, n.Env),
		"iotDataEndpoint":   host,
		"region":            core.Region,
		"localEndpoint":     l.url,
		"iotDataPort":       portN,
		"rootCAFile":        filepath.Join(dir, "root-ca.pem"),
		"claimCertFile":     filepath.Join(dir, "claim.pem"),
		"claimKeyFile":      filepath.Join(dir, "claim.key"),
	}
	for key, name := range map[string]string{
		"preprovisionLambda": "preprovision", "allowlistSyncLambda": "allowlistsync", "ssmToggleLambda": "ssmtoggle",
		"ssmRegisteredLambda": "ssmregistered", "ssmExpireLambda": "ssmexpire", "certRotateLambda": "certrotate",
		"certScanLambda": "certscan", "revokeLambda": "revoke",
	} {
		// Only the functions the local stack runs (Invoke answers them).
		if fn := stack.FunctionName(n.Env, name); l.functions[fn] != nil {
			out[key] = fn
		}
	}
	return out, nil
}

// agentConfig is a fleet-agent configuration for the local IoT Core: its
// MQTT endpoint, root CA, claim and template, and OTA artifacts from the
// local artifacts bucket (plain HTTP, at the artifacts URL). stateDir is dir/agent;
// give each agent its own with --state-dir.
func (l *localAWS) agentConfig(s *stack.Stack, dir string) (map[string]any, error) {
	host, port, err := net.SplitHostPort(s.Core.Endpoint())
	if err != nil {
		return nil, fmt.Errorf("MQTT endpoint %q: %w", s.Core.Endpoint(), err)
	}
	portN, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("MQTT endpoint %q: %w", s.Core.Endpoint(), err)
	}
	u, err := neturl.Parse(l.artifactsURL)
	if err != nil {
		return nil, fmt.Errorf("artifacts URL %q: %w", l.artifactsURL, err)
	}
	artifactsHost := u.Host
	return map[string]any{
		"endpoint":   host,
		"port":       portN,
		"rootCAFile": filepath.Join(dir, "root-ca.pem"),
		"stateDir":   filepath.Join(dir, "agent"),
		"provisioning": map[string]any{
			"claimCertFile": filepath.Join(dir, "claim.pem"),
			"claimKeyFile":  filepath.Join(dir, "claim.key"),
			"templateName":  s.Core.Names().TemplateName,
		},
		"ota": map[string]any{
			"allowHTTP":    true,
			"allowedHosts": []string{artifactsHost},
		},
	}, nil
}

// jsonFile renders v as an indented JSON file.
func jsonFile(v map[string]any) ([]byte, error) {
	b, err := json.MarshalIndent(maps.Clone(v), "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
