// Package stack runs the cloud side of iot-fleet locally: the local IoT Core
// plus the real Lambda handlers, wired the way the Pulumi program wires them
// in AWS. The Lambdas reach AWS IoT's control plane with their real
// aws-sdk-go-v2 *iot.Client, over HTTP, at the stack's own loopback
// endpoint (sim/controlplane over the simulator's control plane; see
// ControlPlaneEndpoint). The pre-provisioning hook is lambdas/preprovision
// over the device registry and that endpoint (it retires a re-provisioned
// device's previous certificate there, which closes its connections);
// uploading allowlist.txt stores it (with its metadata) in a local config
// bucket and invokes lambdas/allowlistsync with the S3 notification AWS
// would send, and the sync revokes devices through the endpoint and turns
// SSM off for them in the local Systems Manager (ssm.go); lambdas/revoke
// revokes one device now (Revoke). The IoT data plane (the Lambdas'
// Publish) is the broker's, in-process (DataPlane); Systems Manager and S3
// are in-process stand-ins (the simulator does not emulate them).
package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"sync"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/lambdas/preprovision"
	"github.com/iot-fleet/iot-fleet/lambdas/revoke"
	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

// ConfigBucket is the name of the local config bucket.
const ConfigBucket = "iot-fleet-config-local"

// Options configure the local stack.
type Options struct {
	// Core configures the local IoT Core. Its PreProvisioningHook and
	// AllowedSerials are ignored: the core runs the real hook, and
	// admission comes from DeployAllowlist.
	Core core.Options
	// SerialPattern is the stack's serial pattern; default
	// allowlist.DefaultSerialPattern.
	SerialPattern string
	// Logger receives the Lambdas' decision lines.
	Logger *slog.Logger
	// SSM configures SSM on demand (ssm.go).
	SSM SSMOptions
	// Rotation configures certificate rotation (rotation.go).
	Rotation RotationOptions
	// MaxRevocationsPerSync is the allowlist sync's revocation limit (the
	// stack config maxRevocationsPerSync); 0: the default.
	MaxRevocationsPerSync int
}

// Stack is a running local cloud side.
type Stack struct {
	Core     *core.Core
	Registry *registry.Memory
	// IoT is the simulator's control plane behind ControlPlaneEndpoint:
	// tests inject faults (FailNext) and read the calls served there.
	IoT *awsiot.Client
	// ControlPlaneEndpoint is the URL (http://127.0.0.1:PORT) of the
	// AWS IoT control plane the stack's Lambdas call; IoTClient is their
	// client for it.
	ControlPlaneEndpoint string
	IoTClient            *iot.Client
	// SSM is SSM on demand: the toggle, registered and expiry Lambdas
	// over a fake Systems Manager (ssm.go).
	SSM *SSM
	// Rotation is certificate rotation: the topic rule, the rotation and
	// scan Lambdas (rotation.go).
	Rotation *Rotation

	bucket   *bucket
	sync     *allowlistsync.Handler
	revoke   *revoke.Handler
	hold     *holdableIoT
	endpoint *endpoint
	log      *slog.Logger

	mu    sync.Mutex
	stops []context.CancelFunc // followers (follow.go)
	wg    sync.WaitGroup
}

// Start starts the local IoT Core with the real hook and allowlist sync.
func Start(ctx context.Context, opts Options) (*Stack, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	expr := opts.SerialPattern
	if expr == "" {
		expr = allowlist.DefaultSerialPattern
	}
	pattern, err := allowlist.CompilePattern(expr)
	if err != nil {
		return nil, fmt.Errorf("stack: serial pattern: %w", err)
	}
	coreOpts := opts.Core
	coreOpts.SerialPattern = expr
	// The core runs the real pre-provisioning hook over its device registry.
	coreOpts.PreProvisioningHook = nil
	coreOpts.AllowedSerials = nil
	c, err := core.Start(ctx, coreOpts)
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	ep, err := startEndpoint(c, log)
	if err != nil {
		c.Close()
		return nil, err
	}
	reg := c.DeviceRegistry()
	iotc := newIoTClient(ep.url)
	b := &bucket{name: ConfigBucket, objects: map[string]object{}}
	s := &Stack{Core: c, Registry: reg, IoT: c.IoT(), ControlPlaneEndpoint: ep.url, IoTClient: iotc,
		bucket: b, hold: &holdableIoT{Client: iotc}, endpoint: ep, log: log}
	if err := s.wire(opts, pattern); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// wire builds the Lambda handlers over the stack's clients.
func (s *Stack) wire(opts Options, pattern *regexp.Regexp) error {
	c, reg, names, log := s.Core, s.Registry, s.Core.Names(), s.log
	// The hook the core runs: the real one, over the real client.
	hook, err := preprovision.New(preprovision.Config{
		Registry: reg, IoT: s.IoTClient, DevicePolicy: names.DevicePolicy,
		SerialPattern: pattern, ThingNamePrefix: names.ThingNamePrefix, Logger: log.With("lambda", "preprovision"),
	})
	if err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	c.SetPreProvisioningHook(hook.Handle)
	if s.SSM, err = newSSM(s, opts.SSM, pattern, log); err != nil {
		return err
	}
	if s.sync, err = allowlistsync.New(allowlistsync.Config{
		S3: s.bucket, IoT: s.hold, Registry: reg, SerialPattern: pattern,
		SSM: s.SSM.Service, SSMState: s.SSM.State, MaxRevocations: opts.MaxRevocationsPerSync,
		ThingGroup: names.ThingGroup, DevicePolicy: names.DevicePolicy, ThingNamePrefix: names.ThingNamePrefix,
		Logger: log.With("lambda", "allowlistsync"),
	}); err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	if s.revoke, err = revoke.New(revoke.Config{
		IoT: s.hold, Registry: reg, SSM: s.SSM.Service, SSMState: s.SSM.State, SerialPattern: pattern,
		ThingGroup: names.ThingGroup, DevicePolicy: names.DevicePolicy, ThingNamePrefix: names.ThingNamePrefix,
		Logger: log.With("lambda", "revoke"),
	}); err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	if s.Rotation, err = newRotation(s, opts.Rotation, log); err != nil {
		return err
	}
	return nil
}

// Revoke invokes the emergency revoke Lambda (lambdas/revoke): the device
// is revoked now (its certificate REVOKED, which closes its connections,
// its thing deleted, SSM off), the registry records why, who and when, and
// later allowlist deploys do not admit it again until a readmit=TOKEN line
// with a new token.
func (s *Stack) Revoke(ctx context.Context, req revoke.Request) (revoke.Response, error) {
	return s.revoke.Handle(ctx, req)
}

// DeployAllowlist does locally what `pulumi up` does with a changed
// allowlist.txt: it uploads the object to the config bucket and invokes the
// sync Lambda with the S3 ObjectCreated notification.
func (s *Stack) DeployAllowlist(ctx context.Context, content []byte) (allowlistsync.Result, error) {
	return s.DeployAllowlistWithMetadata(ctx, content, nil)
}

// DeployAllowlistWithMetadata is DeployAllowlist with the object's user
// metadata (e.g. allowlistsync.MetadataConfirm, which the stack config
// allowlistConfirmRevocations sets, and allowlistsync.MetadataDeployedBy).
func (s *Stack) DeployAllowlistWithMetadata(ctx context.Context, content []byte, metadata map[string]string) (allowlistsync.Result, error) {
	s.bucket.put(allowlistsync.DefaultObjectKey, content, metadata)
	ev := events.S3Event{Records: []events.S3EventRecord{{
		EventSource: "aws:s3",
		EventName:   "ObjectCreated:Put",
		AWSRegion:   core.Region,
		S3: events.S3Entity{
			Bucket: events.S3Bucket{Name: s.bucket.name},
			Object: events.S3Object{Key: allowlistsync.DefaultObjectKey, URLDecodedKey: allowlistsync.DefaultObjectKey, Size: int64(len(content))},
		},
	}}}
	return s.sync.Handle(ctx, ev)
}

// HoldRevocations is a test hook: until release is called, every
// revocation the allowlist sync (or the revoke Lambda) starts waits just before its first AWS IoT
// call, with its registry record already revoking (as a sync that is slow,
// or crashed, leaves it). The sync's per-call timeout still applies.
func (s *Stack) HoldRevocations() (release func()) { return s.hold.holdUntilRelease() }

// holdableIoT is the sync's IoT client with HoldRevocations' gate in
// front of ListThingPrincipals, the first call of a revocation.
type holdableIoT struct {
	*iot.Client
	mu   sync.Mutex
	gate chan struct{} // nil: open
}

func (h *holdableIoT) holdUntilRelease() func() {
	gate := make(chan struct{})
	h.mu.Lock()
	h.gate = gate
	h.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			if h.gate == gate {
				h.gate = nil
			}
			h.mu.Unlock()
			close(gate)
		})
	}
}

// ListThingPrincipals waits at the gate, then lists.
func (h *holdableIoT) ListThingPrincipals(ctx context.Context, in *iot.ListThingPrincipalsInput, opts ...func(*iot.Options)) (*iot.ListThingPrincipalsOutput, error) {
	h.mu.Lock()
	gate := h.gate
	h.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h.Client.ListThingPrincipals(ctx, in, opts...)
}

// Close stops following allowlist files, the control-plane endpoint and
// the local IoT Core.
func (s *Stack) Close() error {
	s.mu.Lock()
	for _, stop := range s.stops {
		stop()
	}
	s.stops = nil
	s.mu.Unlock()
	s.wg.Wait()
	return errors.Join(s.endpoint.close(), s.Core.Close())
}

// bucket is the local config bucket: the S3 GetObject the sync uses.
type bucket struct {
	name    string
	mu      sync.Mutex
	objects map[string]object
}

type object struct {
	content  []byte
	metadata map[string]string
}

func (b *bucket) put(key string, content []byte, metadata map[string]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.objects[key] = object{content: bytes.Clone(content), metadata: maps.Clone(metadata)}
}

// GetObject implements allowlistsync.S3API with S3's not-found errors.
func (b *bucket) GetObject(ctx context.Context, in *s3.GetObjectInput, _ ...func(*s3.Options)) (*s3.GetObjectOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if aws.ToString(in.Bucket) != b.name {
		return nil, &s3types.NoSuchBucket{Message: aws.String("bucket " + aws.ToString(in.Bucket) + " does not exist")}
	}
	b.mu.Lock()
	obj, ok := b.objects[aws.ToString(in.Key)]
	b.mu.Unlock()
	if !ok {
		return nil, &s3types.NoSuchKey{Message: aws.String("key " + aws.ToString(in.Key) + " does not exist")}
	}
	return &s3.GetObjectOutput{Body: io.NopCloser(bytes.NewReader(obj.content)), ContentLength: aws.Int64(int64(len(obj.content))),
		Metadata: maps.Clone(obj.metadata)}, nil
}
