package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iotdataplane"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// LocalOutputsFile is the stack outputs file the local IoT Core writes
// into its directory (fleet-sim serve --dir DIR).
const LocalOutputsFile = "outputs.json"

// Stack output names fleetctl reads.
const (
	OutLocalEndpoint   = "localEndpoint" // the local IoT Core's AWS endpoint (local stack only)
	OutRegion          = "region"
	OutThingGroup      = "thingGroup"
	OutThingGroupArn   = "thingGroupArn"
	OutRegistryTable   = "registryTable"
	OutArtifactsBucket = "artifactsBucket"
	OutPresignRoleArn  = "otaPresignRoleArn"
	OutSSMToggle       = "ssmToggleLambda"
	OutCertScan        = "certScanLambda"
	OutRevoke          = "revokeLambda"
	OutIoTDataEndpoint = "iotDataEndpoint"
)

// Outputs are a stack's outputs, as `pulumi stack output --json` prints
// them.
type Outputs map[string]any

// String returns a string output, or an error naming it.
func (o Outputs) String(name string) (string, error) {
	v, ok := o[name]
	if !ok {
		return "", fmt.Errorf("stack outputs: no %q (deploy the stack with this version of iot-fleet)", name)
	}
	switch s := v.(type) {
	case string:
		if s != "" {
			return s, nil
		}
	case float64:
		return strconv.FormatFloat(s, 'f', -1, 64), nil
	}
	return "", fmt.Errorf("stack outputs: %q is not a non-empty string", name)
}

// optional returns a string output or "".
func (o Outputs) optional(name string) string {
	s, _ := o.String(name)
	return s
}

// Fleet is a stack as fleetctl operates it: its outputs and the AWS
// clients, all pointed at the same place (AWS, or the local IoT Core's
// one endpoint).
type Fleet struct {
	Outputs  Outputs
	IoT      *iot.Client
	Data     *iotdataplane.Client
	Lambda   *lambda.Client
	S3       *s3.Client
	DynamoDB *dynamodb.Client
	// STS answers who the caller is (fleetctl revoke records it).
	STS *sts.Client
	// Progress receives progress lines of long operations (nil: none).
	Progress io.Writer
	// Poll is the interval of the waits (default 2s).
	Poll time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Local is true when the clients talk to the local IoT Core.
	Local bool
}

// Connect builds the clients for a stack's outputs. With the output
// localEndpoint (the local IoT Core's outputs.json) every client talks to
// that endpoint with placeholder credentials and region (the local IoT
// Core checks none); otherwise the AWS SDK's usual settings apply
// (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, ...), the region defaulting
// to the output region, then to defaultRegion.
func Connect(ctx context.Context, outputs Outputs, defaultRegion string) (*Fleet, error) {
	var opts []func(*config.LoadOptions) error
	local := outputs.optional(OutLocalEndpoint)
	region := outputs.optional(OutRegion)
	if region == "" {
		region = defaultRegion
	}
	if local != "" {
		if region == "" {
			region = "local-1"
		}
		opts = append(opts, config.WithRegion(region), config.WithBaseEndpoint(local),
			// The local IoT Core checks no signature: never send it an
			// operator's real access key id.
			config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("fleetctl-local", "fleetctl-local", "")))
	} else if region != "" && os.Getenv("AWS_REGION") == "" && os.Getenv("AWS_DEFAULT_REGION") == "" {
		opts = append(opts, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws config: %w", err)
	}
	custom := cfg.BaseEndpoint != nil
	dataEndpoint := outputs.optional(OutIoTDataEndpoint)
	f := &Fleet{
		Outputs: outputs, Local: local != "",
		IoT:      iot.NewFromConfig(cfg),
		Lambda:   lambda.NewFromConfig(cfg),
		DynamoDB: dynamodb.NewFromConfig(cfg),
		STS:      sts.NewFromConfig(cfg),
		// A custom endpoint serves buckets by path, not by host name.
		S3: s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = custom }),
		Data: iotdataplane.NewFromConfig(cfg, func(o *iotdataplane.Options) {
			// AWS IoT's data plane has an account-specific endpoint (the
			// stack output iotDataEndpoint).
			if !custom && o.BaseEndpoint == nil && dataEndpoint != "" && os.Getenv("AWS_ENDPOINT_URL_IOT_DATA_PLANE") == "" {
				o.BaseEndpoint = aws.String("https://" + dataEndpoint)
			}
		}),
	}
	return f, nil
}

func (f *Fleet) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

func (f *Fleet) poll() time.Duration {
	if f.Poll > 0 {
		return f.Poll
	}
	return 2 * time.Second
}

func (f *Fleet) progressf(format string, args ...any) {
	if f.Progress != nil {
		fmt.Fprintf(f.Progress, format+"\n", args...)
	}
}

// Registry is the stack's device registry (DynamoDB table registryTable).
func (f *Fleet) Registry() (*registry.DynamoDB, error) {
	table, err := f.Outputs.String(OutRegistryTable)
	if err != nil {
		return nil, err
	}
	return registry.NewDynamoDB(f.DynamoDB, table)
}

// timedOut turns the end of a wait's own deadline into ExitTimedOut with
// what was awaited; other errors pass.
func timedOut(err error, what string, limit time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return withCode(ExitTimedOut, fmt.Errorf("%s: still not done after %s (it goes on without fleetctl; look again later)", what, limit))
	}
	return err
}
