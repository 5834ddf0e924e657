package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	lambdatypes "github.com/aws/aws-sdk-go-v2/service/lambda/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/core"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

const (
	serialA = "10000000a1b2c3d4"
	serialB = "10000000a1b2c3d5"
)

// localEnv is a local stack served on a test server as fleet-sim serves
// it, with real aws-sdk-go-v2 clients whose endpoint is that server.
type localEnv struct {
	st   *stack.Stack
	aws  *stack.LocalAWS
	url  string
	cfg  aws.Config
	iot  *iot.Client
	data *iotdataplane.Client
	lam  *lambda.Client
	ddb  *dynamodb.Client
	s3   *s3.Client
}

func startLocal(t *testing.T) *localEnv {
	t.Helper()
	ctx := context.Background()
	st, err := stack.Start(ctx, stack.Options{Core: core.Options{Env: "local"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	_, err = st.DeployAllowlist(ctx, []byte(serialA+"\n"+serialB+"\n"))
	require.NoError(t, err)
	l := st.AWS
	url := l.URL
	cfg := aws.Config{
		Region: core.Region, BaseEndpoint: aws.String(url), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDLOCAL", "secret", ""),
	}
	return &localEnv{
		st: st, aws: l, url: url, cfg: cfg,
		iot: iot.NewFromConfig(cfg), data: iotdataplane.NewFromConfig(cfg), lam: lambda.NewFromConfig(cfg),
		ddb: dynamodb.NewFromConfig(cfg), s3: s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }),
	}
}

func TestLambdaInvoke(t *testing.T) {
	e := startLocal(t)
	ctx := context.Background()

	// The scan Lambda, daily scan (empty event): a real answer.
	out, err := e.lam.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("iot-fleet-local-certscan"), Payload: []byte(`{}`)})
	require.NoError(t, err)
	assert.Nil(t, out.FunctionError)
	assert.Equal(t, int32(200), out.StatusCode)
	var report map[string]any
	require.NoError(t, json.Unmarshal(out.Payload, &report), string(out.Payload))
	assert.Contains(t, report, "requested")

	// By ARN too.
	out, err = e.lam.Invoke(ctx, &lambda.InvokeInput{
		FunctionName: aws.String("arn:aws:lambda:local-1:000000000000:function:iot-fleet-local-ssmtoggle"),
		Payload:      []byte(`{"action":"bogus","device_id":"` + serialA + `"}`)})
	require.NoError(t, err, "a handler error is a successful invocation")
	require.NotNil(t, out.FunctionError)
	assert.Equal(t, "Unhandled", aws.ToString(out.FunctionError))
	var ferr struct{ ErrorMessage, ErrorType string }
	require.NoError(t, json.Unmarshal(out.Payload, &ferr), string(out.Payload))
	assert.Contains(t, ferr.ErrorMessage, "bogus")

	// The SSM toggle for a device that does not exist: the handler's own answer.
	out, err = e.lam.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("iot-fleet-local-ssmtoggle"),
		Payload: []byte(`{"action":"status","device_id":"` + serialA + `"}`)})
	require.NoError(t, err)
	t.Logf("ssmtoggle status: %s (function error %v)", out.Payload, aws.ToString(out.FunctionError))

	// Every function of the contract is served.
	for _, name := range []string{"preprovision", "allowlistsync", "certrotate", "certscan", "ssmtoggle", "ssmregistered", "ssmexpire", "revoke"} {
		assert.Contains(t, e.aws.Functions(), "iot-fleet-local-"+name)
	}

	_, err = e.lam.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("iot-fleet-local-nope"), Payload: []byte(`{}`)})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	var nf *lambdatypes.ResourceNotFoundException
	assert.ErrorAs(t, err, &nf)
	assert.Contains(t, err.Error(), "iot-fleet-local-ssmtoggle", "names the functions served")
	_, err = e.lam.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("iot-fleet-local-certscan"), Payload: []byte(`{not json`)})
	testenv.RequireAPIError(t, err, "InvalidRequestContentException", 400)
	_, err = e.lam.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("iot-fleet-local-certscan"), Qualifier: aws.String("7"), Payload: []byte(`{}`)})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	out, err = e.lam.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("iot-fleet-local-certscan"), InvocationType: lambdatypes.InvocationTypeDryRun})
	require.NoError(t, err)
	assert.Equal(t, int32(204), out.StatusCode)
	_, err = e.lam.ListFunctions(ctx, &lambda.ListFunctionsInput{})
	testenv.RequireAPIError(t, err, "UnknownOperationException", 404)
}

func TestDynamoDBRegistryView(t *testing.T) {
	e := startLocal(t)
	ctx := context.Background()
	// One device provisioned (thing, certificate) and one only allowed.
	_, _, err := e.st.Core.RegisterDevice(serialA)
	require.NoError(t, err)
	_, err = e.st.Registry.RecordProvisioned(ctx, serialA, "local-"+serialA, registry.Certificate{ID: strings.Repeat("a", 64), NotAfter: time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC)})
	require.NoError(t, err)

	// internal/registry's own DynamoDB store reads the view unchanged.
	view, err := registry.NewDynamoDB(e.ddb, "iot-fleet-local-registry")
	require.NoError(t, err)
	for _, serial := range []string{serialA, serialB} {
		want, err := e.st.Registry.Get(ctx, serial)
		require.NoError(t, err)
		got, err := view.Get(ctx, serial)
		require.NoError(t, err, serial)
		assert.Equal(t, want.State, got.State, serial)
		assert.Equal(t, want.CertificateID, got.CertificateID, serial)
		assert.Equal(t, want.ThingName, got.ThingName, serial)
		assert.True(t, want.CertNotAfter.Equal(got.CertNotAfter), "%s: %v != %v", serial, want.CertNotAfter, got.CertNotAfter)
		assert.True(t, want.UpdatedAt.Truncate(time.Second).Equal(got.UpdatedAt), serial)
	}
	_, err = view.Get(ctx, "10000000ffffffff")
	assert.ErrorIs(t, err, registry.ErrNotFound)

	// The SSM state lives in the same items, as ssmstate's DynamoDB store
	// reads it.
	_, err = e.st.SSM.State.Reserve(ctx, serialA, "req-1")
	require.NoError(t, err)
	expiry := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	_, err = e.st.SSM.State.SetActivation(ctx, serialA, "req-1", "act-1", expiry)
	require.NoError(t, err)
	ssmView, err := ssmstate.NewDynamoDB(e.ddb, "iot-fleet-local-registry", nil)
	require.NoError(t, err)
	rec, err := ssmView.Get(ctx, serialA)
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateActivating, rec.State)
	assert.Equal(t, "act-1", rec.ActivationID)
	assert.Equal(t, "req-1", rec.RequestID)
	assert.True(t, expiry.Equal(rec.ActivationExpiry), "%v != %v", expiry, rec.ActivationExpiry)
	rec, err = ssmView.Get(ctx, serialB)
	require.NoError(t, err)
	assert.Equal(t, ssmstate.StateInactive, rec.State)

	// Scan pages (one item per page here).
	var serials []string
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 5)
		p, err := view.Scan(ctx, cursor, 1)
		require.NoError(t, err)
		for _, d := range p.Devices {
			serials = append(serials, d.Serial)
		}
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	assert.Equal(t, []string{serialA, serialB}, serials)

	// Read-only: writes are refused, clearly.
	_, err = e.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String("iot-fleet-local-registry"),
		Item: map[string]ddbtypes.AttributeValue{"serial": &ddbtypes.AttributeValueMemberS{Value: serialA}}})
	testenv.RequireAPIError(t, err, "AccessDeniedException", 400)
	assert.Contains(t, err.Error(), "written only by the local stack's Lambdas")
	_, err = e.ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String("nope"),
		Key: map[string]ddbtypes.AttributeValue{"serial": &ddbtypes.AttributeValueMemberS{Value: serialA}}})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 400)
	var rnf *ddbtypes.ResourceNotFoundException
	assert.ErrorAs(t, err, &rnf)
	_, err = e.ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String("iot-fleet-local-registry"),
		Key: map[string]ddbtypes.AttributeValue{"id": &ddbtypes.AttributeValueMemberS{Value: serialA}}})
	testenv.RequireAPIError(t, err, "ValidationException", 400)
}

func TestS3Buckets(t *testing.T) {
	e := startLocal(t)
	ctx := context.Background()
	bucket := "iot-fleet-local-artifacts"
	body := bytes.Repeat([]byte("artifact "), 1000)
	_, err := e.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("releases/v2.mender"), Body: bytes.NewReader(body),
		Metadata: map[string]string{"version": "2"}})
	require.NoError(t, err)
	got, err := e.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("releases/v2.mender")})
	require.NoError(t, err)
	data, err := io.ReadAll(got.Body)
	require.NoError(t, err)
	got.Body.Close()
	assert.Equal(t, body, data)
	assert.Equal(t, "2", got.Metadata["version"])
	head, err := e.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("releases/v2.mender")})
	require.NoError(t, err)
	assert.Equal(t, int64(len(body)), aws.ToInt64(head.ContentLength))

	_, err = e.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("missing")})
	testenv.RequireAPIError(t, err, "NoSuchKey", 404)
	_, err = e.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("someone-elses"), Key: aws.String("k"), Body: strings.NewReader("x")})
	testenv.RequireAPIError(t, err, "NoSuchBucket", 404)

	// Unsigned, the object is not readable: only through a presigned URL.
	resp, err := http.Get(e.url + "/" + bucket + "/releases/v2.mender")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	// Uploading allowlist.txt to the config bucket runs the allowlist sync.
	_, err = e.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(stack.ConfigBucket), Key: aws.String("allowlist.txt"),
		Body: strings.NewReader(serialA + "\n" + serialB + "\n10000000a1b2c3d6\n")})
	require.NoError(t, err)
	d, err := e.st.Registry.Get(ctx, "10000000a1b2c3d6")
	require.NoError(t, err, "the sync admitted the new serial")
	assert.Equal(t, registry.StateAllowed, d.State)
}

// startNext runs start-next for thing over the Jobs MQTT API and returns
// the execution's document as the device receives it.
func startNext(t *testing.T, e *localEnv, thing string) []byte {
	t.Helper()
	var answer []byte
	e.st.Core.Jobs().Handle(context.Background(), "$aws/things/"+thing+"/jobs/start-next", []byte(`{}`), func(topic string, payload []byte) {
		answer = payload
	})
	var msg struct {
		Execution struct {
			JobDocument json.RawMessage `json:"jobDocument"`
		} `json:"execution"`
	}
	require.NoError(t, json.Unmarshal(answer, &msg), string(answer))
	return msg.Execution.JobDocument
}

func TestJobsPresignedURLsAndDocumentSource(t *testing.T) {
	e := startLocal(t)
	ctx := context.Background()
	thing, _, err := e.st.Core.RegisterDevice(serialA)
	require.NoError(t, err)
	bucket := "iot-fleet-local-artifacts"
	artifact := []byte("mender artifact bytes")
	_, err = e.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("v2.mender"), Body: bytes.NewReader(artifact)})
	require.NoError(t, err)
	doc := `{"operation":"mender_install","url":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/` + bucket + `/v2.mender}"}`
	_, err = e.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("jobs/ota.json"), Body: strings.NewReader(doc)})
	require.NoError(t, err)

	_, err = e.iot.CreateJob(ctx, &iot.CreateJobInput{
		JobId: aws.String("ota-1"), DocumentSource: aws.String("https://s3.amazonaws.com/" + bucket + "/jobs/ota.json"),
		Targets:            []string{"arn:aws:iot:local-1:000000000000:thing/" + thing},
		PresignedUrlConfig: &iottypes.PresignedUrlConfig{RoleArn: aws.String("arn:aws:iam::000000000000:role/presign"), ExpiresInSec: aws.Int64(300)},
	})
	require.NoError(t, err)
	stored, err := e.iot.GetJobDocument(ctx, &iot.GetJobDocumentInput{JobId: aws.String("ota-1")})
	require.NoError(t, err)
	assert.Equal(t, doc, aws.ToString(stored.Document), "GetJobDocument: the document with its placeholder, as AWS keeps it")
	described, err := e.iot.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("ota-1")})
	require.NoError(t, err)
	require.NotNil(t, described.Job.PresignedUrlConfig)
	assert.Equal(t, int64(300), aws.ToInt64(described.Job.PresignedUrlConfig.ExpiresInSec))

	// The device receives a URL of the local S3 in place of the placeholder.
	var received struct{ URL string }
	raw := startNext(t, e, thing)
	require.NoError(t, json.Unmarshal(raw, &received), string(raw))
	require.True(t, strings.HasPrefix(received.URL, e.aws.ArtifactsEndpoint+"/"+bucket+"/v2.mender?"), received.URL)
	assert.Contains(t, received.URL, "X-Amz-Expires=300")
	resp, err := http.Get(received.URL)
	require.NoError(t, err)
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, artifact, got)
	// A tampered URL (longer validity) is refused.
	resp, err = http.Get(strings.Replace(received.URL, "X-Amz-Expires=300", "X-Amz-Expires=3000", 1))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	// What cannot work is refused at creation, naming why.
	target := []string{"arn:aws:iot:local-1:000000000000:thing/" + thing}
	_, err = e.iot.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bad-1"), DocumentSource: aws.String("https://s3.amazonaws.com/other-bucket/doc.json"), Targets: target})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	assert.Contains(t, err.Error(), "other-bucket")
	_, err = e.iot.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bad-2"), Targets: target,
		Document:           aws.String(`{"url":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/other-bucket/a}"}`),
		PresignedUrlConfig: &iottypes.PresignedUrlConfig{ExpiresInSec: aws.Int64(60)}})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	assert.Contains(t, err.Error(), "not served")
	_, err = e.iot.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bad-3"), Targets: target, Document: aws.String(`{}`),
		PresignedUrlConfig: &iottypes.PresignedUrlConfig{ExpiresInSec: aws.Int64(7200)}})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	assert.Contains(t, err.Error(), "expiresInSec")
}

func TestCreateCertificateFromCsrAndUnknownOperations(t *testing.T) {
	e := startLocal(t)
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	require.NoError(t, err)
	csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	out, err := e.iot.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(csr), SetAsActive: true})
	require.NoError(t, err)
	desc, err := e.iot.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: out.CertificateId})
	require.NoError(t, err)
	assert.Equal(t, iottypes.CertificateStatusActive, desc.CertificateDescription.Status)
	assert.Equal(t, aws.ToString(out.CertificatePem), aws.ToString(desc.CertificateDescription.CertificatePem))
	_, err = e.iot.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String("not a CSR")})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)

	ep, err := e.iot.DescribeEndpoint(ctx, &iot.DescribeEndpointInput{EndpointType: aws.String("iot:Data-ATS")})
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", aws.ToString(ep.EndpointAddress))

	_, err = e.iot.ListTopicRules(ctx, &iot.ListTopicRulesInput{})
	testenv.RequireAPIError(t, err, "UnknownOperationException", 404)
	assert.Contains(t, err.Error(), "/rules")
}

func TestDataPlane(t *testing.T) {
	e := startLocal(t)
	ctx := context.Background()
	thing, creds, err := e.st.Core.RegisterDevice(serialA)
	require.NoError(t, err)

	// A device subscribed to its command topic receives HTTP publishes.
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(e.st.Core.RootCAPEM()))
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	require.NoError(t, err)
	got := make(chan paho.Message, 10)
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tls://" + e.st.Core.Endpoint()).SetClientID(thing).SetAutoReconnect(false).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}))
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	defer cl.Disconnect(0)
	topic := "cmd/" + protocol.Application + "/" + thing + "/hello"
	tok = cl.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) { got <- m })
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	for _, qos := range []int32{0, 1} {
		_, err = e.data.Publish(ctx, &iotdataplane.PublishInput{Topic: aws.String(topic), Qos: qos, Payload: []byte(`{"n":1}`)})
		require.NoError(t, err)
		select {
		case m := <-got:
			assert.Equal(t, `{"n":1}`, string(m.Payload()))
			assert.Equal(t, byte(qos), m.Qos(), "delivered at the publish's QoS")
		case <-time.After(10 * time.Second):
			t.Fatalf("QoS %d publish not delivered", qos)
		}
	}
	_, err = e.data.Publish(ctx, &iotdataplane.PublishInput{Topic: aws.String("cmd/+/x"), Payload: []byte(`{}`)})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	_, err = e.data.Publish(ctx, &iotdataplane.PublishInput{Topic: aws.String("$aws/things/" + thing + "/jobs/notify-next"), Payload: []byte(`{}`)})
	testenv.RequireAPIError(t, err, "UnauthorizedException", 401)
	// A publish on a shadow topic is a shadow request.
	_, err = e.data.Publish(ctx, &iotdataplane.PublishInput{Topic: aws.String("$aws/things/" + thing + "/shadow/name/via-mqtt/update"),
		Payload: []byte(`{"state":{"reported":{"up":true}}}`)})
	require.NoError(t, err)
	_, err = e.data.GetThingShadow(ctx, &iotdataplane.GetThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String("via-mqtt")})
	require.NoError(t, err)

	// Named shadows: the same service the devices use over MQTT.
	_, err = e.data.GetThingShadow(ctx, &iotdataplane.GetThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String("fleet-agent")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	up, err := e.data.UpdateThingShadow(ctx, &iotdataplane.UpdateThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String("fleet-agent"),
		Payload: []byte(`{"state":{"desired":{"logLevel":"debug"}}}`)})
	require.NoError(t, err)
	var accepted struct{ Version int }
	require.NoError(t, json.Unmarshal(up.Payload, &accepted))
	assert.Equal(t, 1, accepted.Version)
	sh, err := e.data.GetThingShadow(ctx, &iotdataplane.GetThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String("fleet-agent")})
	require.NoError(t, err)
	var doc struct {
		State struct {
			Desired map[string]any `json:"desired"`
			Delta   map[string]any `json:"delta"`
		} `json:"state"`
		Version int `json:"version"`
	}
	require.NoError(t, json.Unmarshal(sh.Payload, &doc), string(sh.Payload))
	assert.Equal(t, "debug", doc.State.Desired["logLevel"])
	assert.Equal(t, 1, doc.Version)
	_, err = e.data.UpdateThingShadow(ctx, &iotdataplane.UpdateThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String("fleet-agent"),
		Payload: []byte(`{"state":{"desired":{"logLevel":"info"}},"version":7}`)})
	testenv.RequireAPIError(t, err, "ConflictException", 409)
	_, err = e.data.UpdateThingShadow(ctx, &iotdataplane.UpdateThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String("fleet-agent"),
		Payload: []byte(`not json`)})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	names, err := e.data.ListNamedShadowsForThing(ctx, &iotdataplane.ListNamedShadowsForThingInput{ThingName: aws.String(thing)})
	require.NoError(t, err)
	assert.Equal(t, []string{"fleet-agent", "via-mqtt"}, names.Results)
	page, err := e.data.ListNamedShadowsForThing(ctx, &iotdataplane.ListNamedShadowsForThingInput{ThingName: aws.String(thing), PageSize: aws.Int32(1)})
	require.NoError(t, err)
	assert.Equal(t, []string{"fleet-agent"}, page.Results)
	require.NotNil(t, page.NextToken)
	page, err = e.data.ListNamedShadowsForThing(ctx, &iotdataplane.ListNamedShadowsForThingInput{ThingName: aws.String(thing), PageSize: aws.Int32(1), NextToken: page.NextToken})
	require.NoError(t, err)
	assert.Equal(t, []string{"via-mqtt"}, page.Results)
	assert.Nil(t, page.NextToken)
	_, err = e.data.DeleteThingShadow(ctx, &iotdataplane.DeleteThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String("fleet-agent")})
	require.NoError(t, err)
	_, err = e.data.GetThingShadow(ctx, &iotdataplane.GetThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String("fleet-agent")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	_, err = e.data.DeleteThingShadow(ctx, &iotdataplane.DeleteThingShadowInput{ThingName: aws.String(thing), ShadowName: aws.String("fleet-agent")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
}

func TestOutputsAndAgentConfig(t *testing.T) {
	e := startLocal(t)
	dir := t.TempDir()
	out, err := e.st.Outputs(dir)
	require.NoError(t, err)
	for key, want := range map[string]any{
		"thingGroup": "iot-fleet-local", "thingGroupArn": "arn:aws:iot:local-1:000000000000:thinggroup/iot-fleet-local",
		"registryTable": "iot-fleet-local-registry", "artifactsBucket": "iot-fleet-local-artifacts", "configBucket": stack.ConfigBucket,
		"ssmToggleLambda": "iot-fleet-local-ssmtoggle", "certScanLambda": "iot-fleet-local-certscan", "certRotateLambda": "iot-fleet-local-certrotate",
		"allowlistSyncLambda": "iot-fleet-local-allowlistsync", "revokeLambda": "iot-fleet-local-revoke", "iotDataEndpoint": "127.0.0.1", "region": "local-1", "localEndpoint": e.url,
		"devicePolicy": "iot-fleet-local-device", "provisioningTemplate": "iot-fleet-local",
		"otaPresignRoleArn": "arn:aws:iam::000000000000:role/iot-fleet-local-presign",
	} {
		assert.Equal(t, want, out[key], key)
	}
	assert.IsType(t, 0, out["iotDataPort"])
	// Every Lambda output names a function Invoke answers.
	for key, v := range out {
		if strings.HasSuffix(key, "Lambda") {
			assert.Contains(t, e.aws.Functions(), v, key)
		}
	}
	agent, err := e.st.AgentConfig(dir)
	require.NoError(t, err)
	data, err := jsonFile(agent)
	require.NoError(t, err)
	cfg, err := config.ParseValid(data, func(c *config.Config) { c.Provisioning.Serial = serialA })
	require.NoError(t, err, "agent.json is a valid fleet-agent configuration: %s", data)
	assert.Equal(t, out["iotDataPort"], cfg.Port)
	assert.Equal(t, "iot-fleet-local", cfg.Provisioning.TemplateName)
	assert.True(t, cfg.OTA.AllowHTTP)
}

// TestAWSCLIAgainstLocalEndpoint drives every service of the local
// endpoint with the AWS CLI, where it is installed, through the one
// AWS_ENDPOINT_URL.
func TestAWSCLIAgainstLocalEndpoint(t *testing.T) {
	cli, err := exec.LookPath("aws")
	if err != nil {
		t.Skip("the AWS CLI is not installed")
	}
	e := startLocal(t)
	thing, _, err := e.st.Core.RegisterDevice(serialA)
	require.NoError(t, err)
	home := t.TempDir() // no operator config or credentials leak in
	env := []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "AWS_ACCESS_KEY_ID=AKIDLOCAL", "AWS_SECRET_ACCESS_KEY=secret",
		"AWS_DEFAULT_REGION=local-1", "AWS_CONFIG_FILE=" + home + "/config", "AWS_SHARED_CREDENTIALS_FILE=" + home + "/credentials",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_ENDPOINT_URL=" + e.url}
	run := func(args ...string) (string, string, error) {
		cmd := exec.Command(cli, args...)
		cmd.Env = env
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	out, stderr, err := run("iot", "describe-endpoint", "--endpoint-type", "iot:Data-ATS")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "127.0.0.1")

	resp := filepath.Join(home, "resp.json")
	out, stderr, err = run("lambda", "invoke", "--function-name", "iot-fleet-local-ssmtoggle",
		"--payload", `{"action":"status","device_id":"`+serialA+`"}`, resp)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, `"StatusCode": 200`)
	body, err := os.ReadFile(resp)
	require.NoError(t, err)
	assert.Contains(t, string(body), `"state":"inactive"`)

	out, stderr, err = run("dynamodb", "get-item", "--table-name", "iot-fleet-local-registry", "--key", `{"serial":{"S":"`+serialA+`"}}`)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, `"S": "allowed"`)
	_, stderr, err = run("dynamodb", "delete-item", "--table-name", "iot-fleet-local-registry", "--key", `{"serial":{"S":"`+serialA+`"}}`)
	require.Error(t, err)
	assert.Contains(t, stderr, "AccessDeniedException")

	artifact := filepath.Join(home, "v2.mender")
	require.NoError(t, os.WriteFile(artifact, []byte("artifact"), 0o600))
	_, stderr, err = run("s3", "cp", artifact, "s3://iot-fleet-local-artifacts/releases/v2.mender")
	require.NoError(t, err, stderr)
	obj, err := e.aws.Store.Get("iot-fleet-local-artifacts", "releases/v2.mender")
	require.NoError(t, err)
	assert.Equal(t, "artifact", string(obj.Data))

	_, stderr, err = run("iot-data", "publish", "--topic", "cmd/"+protocol.Application+"/"+thing+"/hello", "--qos", "1", "--payload", `{"n":1}`)
	require.NoError(t, err, stderr)
	_, stderr, err = run("iot-data", "get-thing-shadow", "--thing-name", thing, "--shadow-name", "fleet-agent", filepath.Join(home, "shadow.json"))
	require.Error(t, err)
	assert.Contains(t, stderr, "ResourceNotFoundException")
}

// TestArtifactsURL: presigned URLs can name the endpoint as devices reach
// it (a forwarded port, another host name): the signature does not cover
// the host, and agent.json allows that host.
func TestArtifactsURL(t *testing.T) {
	ctx := context.Background()
	st, err := stack.Start(ctx, stack.Options{Core: core.Options{Env: "local"}, ArtifactsURL: "http://artifacts.vm.internal"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	l := st.AWS
	_, err = l.Store.Put(ctx, "iot-fleet-local-artifacts", "a.mender", []byte("bytes"), "", nil)
	require.NoError(t, err)
	u, err := l.Store.Presign("https://s3.amazonaws.com/iot-fleet-local-artifacts/a.mender", time.Minute)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(u, "http://artifacts.vm.internal/iot-fleet-local-artifacts/a.mender?"), u)
	// Fetched through a forward: the request reaches the endpoint with the
	// device's Host.
	req, err := http.NewRequest(http.MethodGet, l.URL+strings.TrimPrefix(u, "http://artifacts.vm.internal"), nil)
	require.NoError(t, err)
	req.Host = "artifacts.vm.internal"
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "bytes", string(body))

	agent, err := st.AgentConfig(t.TempDir())
	require.NoError(t, err)
	assert.Equal(t, []string{"artifacts.vm.internal"}, agent["ota"].(map[string]any)["allowedHosts"])
}

// TestInvokeRevoke: the emergency revoke Lambda through Invoke revokes a
// connected device's certificate and records who and why.
func TestInvokeRevoke(t *testing.T) {
	e := startLocal(t)
	ctx := context.Background()
	thing, creds, err := e.st.Core.RegisterDevice(serialA)
	require.NoError(t, err)
	_, err = e.st.Registry.RecordProvisioned(ctx, serialA, thing, registry.Certificate{ID: creds.CertificateID, NotAfter: time.Now().Add(time.Hour)})
	require.NoError(t, err)

	out, err := e.lam.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("iot-fleet-local-revoke"),
		Payload: []byte(`{"serial":"` + serialA + `","reason":"stolen","by":"alice"}`)})
	require.NoError(t, err)
	require.Nil(t, out.FunctionError, string(out.Payload))
	var resp struct {
		Serial, State, CertificateID string
	}
	require.NoError(t, json.Unmarshal(out.Payload, &resp), string(out.Payload))
	assert.Equal(t, serialA, resp.Serial)
	assert.Equal(t, "revoked", resp.State)
	desc, err := e.iot.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(creds.CertificateID)})
	require.NoError(t, err)
	assert.Equal(t, iottypes.CertificateStatusRevoked, desc.CertificateDescription.Status)

	// A bad request is the function's error, as Lambda reports it.
	out, err = e.lam.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("iot-fleet-local-revoke"), Payload: []byte(`{"reason":"x","by":"y"}`)})
	require.NoError(t, err)
	assert.Equal(t, "Unhandled", aws.ToString(out.FunctionError))
}
