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
// revokes one device now (Revoke). The Lambdas' IoT data-plane Publish
// goes with their real *iotdataplane.Client to the same endpoint, whose
// data plane delivers it through the broker (DataPlane); Systems Manager
// is an in-process stand-in (the simulator does not emulate it).
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sync"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/service/iot"

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
	// AWSListener is the listener of the local AWS endpoint (LocalAWS);
	// nil: a free port on 127.0.0.1. The stack closes it.
	AWSListener net.Listener
	// ArtifactsListener is the listener of the artifacts endpoint
	// (LocalAWS.ArtifactsEndpoint); nil: a free port on 127.0.0.1.
	ArtifactsListener net.Listener
	// ArtifactsURL is the base URL presigned artifact URLs name, when
	// devices reach the artifacts endpoint another way (a forwarded port,
	// another host name); "": the artifacts endpoint's URL.
	ArtifactsURL string
}

// Stack is a running local cloud side.
type Stack struct {
	Core     *core.Core
	Registry *registry.Memory
	// IoT is the simulator's control plane behind the local AWS endpoint:
	// tests inject faults (FailNext) and read the calls served there.
	IoT *awsiot.Client
	// AWS is the local AWS endpoint (localaws.go): the stack's Lambdas
	// call it, and so do operators. ControlPlaneEndpoint is its URL and
	// IoTClient the Lambdas' IoT client for it.
	AWS                  *LocalAWS
	ControlPlaneEndpoint string
	IoTClient            *iot.Client
	// SSM is SSM on demand: the toggle, registered and expiry Lambdas
	// over a fake Systems Manager (ssm.go).
	SSM *SSM
	// Rotation is certificate rotation: the topic rule, the rotation and
	// scan Lambdas (rotation.go).
	Rotation *Rotation

	sync   *allowlistsync.Handler
	revoke *revoke.Handler
	hold   *holdableIoT
	log    *slog.Logger

	deploying sync.Mutex // one allowlist sync at a time

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
	l, err := listenAWS(opts)
	if err != nil {
		return nil, err
	}
	coreOpts := opts.Core
	coreOpts.SerialPattern = expr
	coreOpts.ControlPlaneEndpoint = l.URL
	// The core runs the real pre-provisioning hook over its device registry.
	coreOpts.PreProvisioningHook = nil
	coreOpts.AllowedSerials = nil
	c, err := core.Start(ctx, coreOpts)
	if err != nil {
		_ = l.close()
		return nil, fmt.Errorf("stack: %w", err)
	}
	if err := l.newStore(c.Names().Env, log); err != nil {
		_ = l.close()
		c.Close()
		return nil, fmt.Errorf("stack: %w", err)
	}
	iotc := newIoTClient(l.URL)
	s := &Stack{Core: c, Registry: c.DeviceRegistry(), IoT: c.IoT(), AWS: l, ControlPlaneEndpoint: l.URL, IoTClient: iotc,
		hold: &holdableIoT{Client: iotc}, log: log}
	if err := s.wire(opts, pattern); err != nil {
		_ = s.Close()
		return nil, err
	}
	l.serve(s)
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
		S3: newS3Client(s.AWS.URL), IoT: s.hold, Registry: reg, SerialPattern: pattern,
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
// with a token never used for that serial.
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
//
// One sync runs at a time, as the function's reserved concurrency of 1
// makes it in AWS: a deploy waits for the one in progress.
func (s *Stack) DeployAllowlistWithMetadata(ctx context.Context, content []byte, metadata map[string]string) (allowlistsync.Result, error) {
	s.deploying.Lock()
	defer s.deploying.Unlock()
	if _, err := s.AWS.Store.PutQuiet(ConfigBucket, allowlistsync.DefaultObjectKey, content, "text/plain", metadata); err != nil {
		return allowlistsync.Result{}, fmt.Errorf("stack: upload the allowlist: %w", err)
	}
	return s.sync.Handle(ctx, allowlistEvent(len(content)))
}

// syncUploaded runs the sync for an allowlist uploaded to the config
// bucket through the local S3 (the bucket's notification).
func (s *Stack) syncUploaded(ctx context.Context, size int) (allowlistsync.Result, error) {
	s.deploying.Lock()
	defer s.deploying.Unlock()
	return s.sync.Handle(ctx, allowlistEvent(size))
}

// allowlistEvent is the S3 ObjectCreated notification of the allowlist
// object, as the sync Lambda receives it.
func allowlistEvent(size int) events.S3Event {
	return events.S3Event{Records: []events.S3EventRecord{{
		EventSource: "aws:s3",
		EventName:   "ObjectCreated:Put",
		AWSRegion:   core.Region,
		S3: events.S3Entity{
			Bucket: events.S3Bucket{Name: ConfigBucket},
			Object: events.S3Object{Key: allowlistsync.DefaultObjectKey, URLDecodedKey: allowlistsync.DefaultObjectKey, Size: int64(size)},
		},
	}}}
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
	return errors.Join(s.AWS.close(), s.Core.Close())
}
