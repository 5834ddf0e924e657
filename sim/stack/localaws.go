package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	neturl "net/url"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/iot-fleet/iot-fleet/sim/controlplane"
	"github.com/iot-fleet/iot-fleet/sim/core"
	"github.com/iot-fleet/iot-fleet/sim/dynamodbapi"
	"github.com/iot-fleet/iot-fleet/sim/lambdaapi"
	"github.com/iot-fleet/iot-fleet/sim/rules"
	"github.com/iot-fleet/iot-fleet/sim/s3api"
)

// LocalAWS is the stack's one local AWS endpoint, served on a loopback
// port from Start to Close: the AWS IoT control and data plane, Lambda
// Invoke of the stack's real handlers, the registry table read-only over
// DynamoDB's API, and S3 for the artifacts and config buckets. The stack's
// own Lambdas reach it with their real aws-sdk-go-v2 clients, as they reach
// AWS; operators (fleetctl, the AWS CLI) use it as AWS_ENDPOINT_URL.
type LocalAWS struct {
	// URL is the endpoint, http://127.0.0.1:PORT.
	URL string
	// ArtifactsEndpoint is the URL of the artifacts endpoint, a second
	// listener that serves devices nothing but GETs of the presigned
	// artifact URLs jobs give them (s3api.PresignedHandler): a device
	// reaches no other API. ArtifactsURL is the base URL presigned URLs
	// name: ArtifactsEndpoint unless Options.ArtifactsURL says how devices
	// reach it (a forwarded port, another host name).
	ArtifactsEndpoint string
	ArtifactsURL      string
	// Store is the local S3.
	Store *s3api.Store

	handler   http.Handler
	lambda    *lambdaapi.Handler
	functions map[string]lambdaapi.Function
	srvs      []*http.Server
	ln        net.Listener // the endpoint
	artLn     net.Listener // the artifacts endpoint

	pubMu sync.Mutex
	pubs  []Message // the data plane's latest publishes (DataPlane.Messages), at most maxPublishRecord
}

// maxPublishRecord bounds the record of data-plane publishes a long
// running local IoT Core keeps: the latest ones are kept.
const maxPublishRecord = 10000

// ArtifactsBucket is the name of the local artifacts bucket of env.
func ArtifactsBucket(env string) string { return "iot-fleet-" + env + "-artifacts" }

// listenAWS opens the endpoint's listener (before the core starts, which
// reports the URL in its /status).
func listenAWS(opts Options) (*LocalAWS, error) {
	ln, artLn := opts.AWSListener, opts.ArtifactsListener
	var err error
	if ln == nil {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("stack: local AWS endpoint: %w", err)
		}
	}
	if artLn == nil {
		if artLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			ln.Close()
			return nil, fmt.Errorf("stack: artifacts endpoint: %w", err)
		}
	}
	l := &LocalAWS{URL: "http://" + ln.Addr().String(), ArtifactsEndpoint: "http://" + artLn.Addr().String(),
		ArtifactsURL: opts.ArtifactsURL, ln: ln, artLn: artLn}
	if l.ArtifactsURL == "" {
		l.ArtifactsURL = l.ArtifactsEndpoint
	}
	return l, nil
}

// newStore is the local S3 with the artifacts and config buckets.
func (l *LocalAWS) newStore(env string, log *slog.Logger) error {
	var err error
	l.Store, err = s3api.New(s3api.Options{Buckets: []string{ArtifactsBucket(env), ConfigBucket},
		BaseURL: func() string { return l.ArtifactsURL }, Logger: log})
	return err
}

// serve wires the endpoint's handler over s and starts serving.
func (l *LocalAWS) serve(s *Stack) {
	c, log := s.Core, s.log
	env := c.Names().Env
	// As the stack's S3 notification: uploading allowlist.txt to the
	// config bucket runs the allowlist sync.
	l.Store.OnPut(ConfigBucket, func(ctx context.Context, _, key string, obj s3api.Object) error {
		if key != allowlistsync.DefaultObjectKey {
			return nil
		}
		res, err := s.syncUploaded(ctx, len(obj.Data))
		if err != nil {
			return fmt.Errorf("allowlist sync: %w", err)
		}
		log.Info("allowlist uploaded to the config bucket: sync ran", "result", fmt.Sprintf("%+v", res))
		return nil
	})
	c.Jobs().SetPresigner(l.Store.Presign)
	jobsAPI := awsiot.NewJobs(c.Jobs(), c.IoT())
	jobsAPI.SetDocumentSource(l.Store.ReadURL)
	iotAPI := controlplane.New(c.IoT(), jobsAPI, c.Endpoint, log.With("component", "control-plane"))
	iotAPI.ServeCertificateIssuance(awsiot.NewIssuer(c.IoT(), c.CA()))
	iotAPI.ServeDataPlane(controlplane.DataPlane{
		Publish: func(topic string, payload []byte, qos byte) {
			// Topic rules see HTTP publishes too, as in AWS.
			if c.Rules().Match(topic) {
				c.Rules().Dispatch(rules.Message{Topic: topic, Payload: payload})
			}
			c.PublishQoS(topic, payload, qos)
			l.record(Message{Topic: topic, Payload: slices.Clone(payload), QoS: int32(qos)})
		},
		Shadows: c.Shadows(),
		Now:     func() int64 { return time.Now().Unix() },
	})
	l.functions = s.Functions()
	l.lambda = lambdaapi.New(lambdaapi.Options{Functions: l.functions, Logger: log,
		ARNPrefix: fmt.Sprintf("arn:%s:lambda:%s:%s:function:", core.Partition, core.Region, core.AccountID)})
	l.handler = controlplane.Endpoint{
		IoT:        iotAPI,
		Lambda:     l.lambda,
		DynamoDB:   dynamodbapi.New(map[string]dynamodbapi.Table{RegistryTableName(env): s.RegistryTable()}, log),
		S3:         l.Store.Handler(),
		IsDynamoDB: dynamodbapi.Owns, IsLambda: lambdaapi.Owns,
		IsS3: func(r *http.Request) bool { return l.Store.Owns(r.URL.Path) },
	}
	for _, e := range []struct {
		name string
		ln   net.Listener
		h    http.Handler
	}{{"local AWS endpoint", l.ln, l.handler}, {"artifacts endpoint", l.artLn, l.Store.PresignedHandler()}} {
		srv := &http.Server{Handler: e.h, ReadHeaderTimeout: 10 * time.Second}
		l.srvs = append(l.srvs, srv)
		go func() {
			if err := srv.Serve(e.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error(e.name+" stopped", "error", err)
			}
		}()
	}
}

// Handler is the endpoint's HTTP handler (for a second listener).
func (l *LocalAWS) Handler() http.Handler { return l.handler }

// Functions are the Lambda functions Invoke answers, by name.
func (l *LocalAWS) Functions() map[string]lambdaapi.Function { return l.functions }

func (l *LocalAWS) close() error {
	if l.srvs == nil {
		return errors.Join(l.ln.Close(), l.artLn.Close())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	for _, srv := range l.srvs {
		errs = append(errs, srv.Shutdown(ctx))
	}
	// Event invocations still running or waiting for a retry end with
	// the stack.
	l.lambda.Close()
	return errors.Join(errs...)
}

// localCredentials sign the stack's own requests; the endpoint accepts and
// does not check them.
var localCredentials = credentials.NewStaticCredentialsProvider("AKIDLOCALSTACK", "local-stack-secret", "")

// newIoTClient is the Lambdas' IoT client for the endpoint: a real
// aws-sdk-go-v2 client with the SDK's standard retries, as in AWS.
func newIoTClient(url string) *iot.Client {
	return iot.New(iot.Options{BaseEndpoint: aws.String(url), Region: core.Region, Credentials: localCredentials})
}

// record keeps m as the latest data-plane publish, dropping the oldest
// beyond maxPublishRecord.
func (l *LocalAWS) record(m Message) {
	l.pubMu.Lock()
	defer l.pubMu.Unlock()
	if len(l.pubs) >= maxPublishRecord {
		l.pubs = slices.Delete(l.pubs, 0, len(l.pubs)-maxPublishRecord+1)
	}
	l.pubs = append(l.pubs, m)
}

// published returns the data plane's latest publishes (at most
// maxPublishRecord), in order.
func (l *LocalAWS) published() []Message {
	l.pubMu.Lock()
	defer l.pubMu.Unlock()
	return slices.Clone(l.pubs)
}

// newDataClient is the Lambdas' IoT data-plane client for the endpoint: a
// real aws-sdk-go-v2 client with the SDK's standard retries, as in AWS.
func newDataClient(url string) *iotdataplane.Client {
	return iotdataplane.New(iotdataplane.Options{BaseEndpoint: aws.String(url), Region: core.Region, Credentials: localCredentials})
}

// newS3Client is the Lambdas' S3 client for the endpoint (path-style
// addressing: the local S3 serves no bucket host names).
func newS3Client(url string) *s3.Client {
	return s3.New(s3.Options{BaseEndpoint: aws.String(url), Region: core.Region, Credentials: localCredentials, UsePathStyle: true})
}

// Outputs are the local stack's outputs as `pulumi stack output --json`
// prints a deployed stack's (the keys infra exports), plus what reaching
// the local IoT Core takes: localEndpoint (the URL for AWS_ENDPOINT_URL),
// iotDataPort (the MQTT/TLS port, a number) and the PEM files fleet-sim
// writes in dir.
func (s *Stack) Outputs(dir string) (map[string]any, error) {
	n := s.Core.Names()
	host, port, err := mqttHostPort(s.Core.Endpoint())
	if err != nil {
		return nil, err
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
		"artifactsBucket":        ArtifactsBucket(n.Env),
		"configBucket":           ConfigBucket,
		"allowlistKey":           allowlistsync.DefaultObjectKey,
		"registryTable":          RegistryTableName(n.Env),
		"registryTableArn":       arn("dynamodb", "table/"+RegistryTableName(n.Env)),
		"ssmManagedInstanceRole": ManagedInstanceRoleName(n.Env),
		// The role AWS IoT Jobs would assume to presign (presignedUrlConfig
		// roleArn): accepted by the local IoT Core, which presigns itself.
		"otaPresignRoleArn": fmt.Sprintf("arn:%s:iam::%s:role/iot-fleet-%s-presign", core.Partition, core.AccountID, n.Env),
		"iotDataEndpoint":   host,
		"region":            core.Region,
		"localEndpoint":     s.AWS.URL,
		"artifactsEndpoint": s.AWS.ArtifactsEndpoint,
		"iotDataPort":       port,
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
		if fn := FunctionName(n.Env, name); s.AWS.functions[fn] != nil {
			out[key] = fn
		}
	}
	return out, nil
}

// AgentConfig is a fleet-agent configuration for the local IoT Core: its
// MQTT endpoint, the root CA and claim files fleet-sim writes in dir, the
// template, and OTA artifacts from the local artifacts bucket (plain HTTP,
// at the artifacts URL). stateDir is dir/agent; give each agent its own
// with --state-dir.
func (s *Stack) AgentConfig(dir string) (map[string]any, error) {
	host, port, err := mqttHostPort(s.Core.Endpoint())
	if err != nil {
		return nil, err
	}
	u, err := neturl.Parse(s.AWS.ArtifactsURL)
	if err != nil {
		return nil, fmt.Errorf("artifacts URL %q: %w", s.AWS.ArtifactsURL, err)
	}
	return map[string]any{
		"endpoint":   host,
		"port":       port,
		"rootCAFile": filepath.Join(dir, "root-ca.pem"),
		"stateDir":   filepath.Join(dir, "agent"),
		"provisioning": map[string]any{
			"claimCertFile": filepath.Join(dir, "claim.pem"),
			"claimKeyFile":  filepath.Join(dir, "claim.key"),
			"templateName":  s.Core.Names().TemplateName,
		},
		"ota": map[string]any{
			"allowHTTP":    true,
			"allowedHosts": []string{u.Host},
		},
	}, nil
}

func mqttHostPort(endpoint string) (string, int, error) {
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		return "", 0, fmt.Errorf("MQTT endpoint %q: %w", endpoint, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return "", 0, fmt.Errorf("MQTT endpoint %q: %w", endpoint, err)
	}
	return host, n, nil
}
