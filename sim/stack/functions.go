package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
	"github.com/iot-fleet/iot-fleet/sim/dynamodbapi"
	"github.com/iot-fleet/iot-fleet/sim/lambdaapi"
)

// FunctionName is the name of the stack's Lambda function name (e.g.
// "ssmtoggle") in environment env, as the Pulumi program names it:
// iot-fleet-<env>-<name>.
func FunctionName(env, name string) string { return "iot-fleet-" + env + "-" + name }

// RegistryTableName is the name of the device registry table in env.
func RegistryTableName(env string) string { return "iot-fleet-" + env + "-registry" }

// Functions maps the stack's Lambda function names (FunctionName) to the
// real handlers the local stack runs, each decoding its event as the
// Lambda Go runtime does: preprovision (the hook the local IoT Core calls),
// allowlistsync (an S3 event on the config bucket), certrotate, certscan,
// ssmtoggle, ssmregistered, ssmexpire and revoke (Stack.Revoke).
// sim/lambdaapi serves them as Lambda's Invoke.
func (s *Stack) Functions() map[string]lambdaapi.Function {
	env := s.Core.Names().Env
	fns := map[string]lambdaapi.Function{
		// One sync at a time, as the function's reserved concurrency
		// of 1 makes it in AWS (with deploys and the file follower).
		"allowlistsync": lambdaapi.JSON(func(ctx context.Context, ev events.S3Event) (allowlistsync.Result, error) {
			s.deploying.Lock()
			defer s.deploying.Unlock()
			return s.sync.Handle(ctx, ev)
		}),
		"certrotate": lambdaapi.JSON(func(ctx context.Context, ev certrotate.Event) (certrotate.Result, error) {
			return s.Rotation.rotate.Handle(ctx, ev)
		}),
		"certscan": lambdaapi.JSON(func(ctx context.Context, req certscan.Request) (certscan.Report, error) {
			return s.Rotation.scan.Handle(ctx, req)
		}),
		"ssmtoggle": lambdaapi.JSON(func(ctx context.Context, req ssmtoggle.Request) (ssmtoggle.Response, error) {
			return s.SSM.toggle.Handle(ctx, req)
		}),
		"ssmregistered": lambdaapi.JSON(func(ctx context.Context, ev events.CloudWatchEvent) (any, error) {
			return s.SSM.registered.Handle(ctx, ev)
		}),
		"ssmexpire": lambdaapi.JSON(func(ctx context.Context, ev json.RawMessage) (any, error) {
			return s.SSM.expire.Handle(ctx, ev)
		}),
		"revoke": lambdaapi.JSON(s.Revoke),
	}
	if hook := s.Core.Provisioning().Hook(); hook != nil {
		fns["preprovision"] = lambdaapi.JSON(func(ctx context.Context, req protocol.PreProvisioningHookRequest) (protocol.PreProvisioningHookResponse, error) {
			return hook(ctx, req)
		})
	}
	out := make(map[string]lambdaapi.Function, len(fns))
	for name, fn := range fns {
		out[FunctionName(env, name)] = fn
	}
	return out
}

// RegistryTable is the device registry as the DynamoDB table the Lambdas
// use in AWS (RegistryTableName), read-only: items are encoded as
// internal/registry's DynamoDB store writes them (times as RFC 3339
// seconds, the ssm* attributes of internal/ssmstate in the same item), so
// registry.NewDynamoDB and ssmstate.NewDynamoDB read them unchanged.
func (s *Stack) RegistryTable() dynamodbapi.Table { return registryTable{s: s} }

type registryTable struct{ s *Stack }

func (registryTable) HashKey() string { return registry.PartitionKey }

func (t registryTable) Item(ctx context.Context, key string) (map[string]types.AttributeValue, bool, error) {
	d, err := t.s.Registry.Get(ctx, key)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	item, err := t.item(ctx, d)
	return item, err == nil, err
}

func (t registryTable) Scan(ctx context.Context, start string, limit int) ([]map[string]types.AttributeValue, bool, error) {
	page, err := t.s.Registry.Scan(ctx, start, limit)
	if err != nil {
		return nil, false, err
	}
	items := make([]map[string]types.AttributeValue, 0, len(page.Devices))
	for _, d := range page.Devices {
		item, err := t.item(ctx, d)
		if err != nil {
			return nil, false, err
		}
		items = append(items, item)
	}
	return items, page.Next != "", nil
}

var zeroTime = registry.FormatTime(time.Time{})

// item encodes d (and its SSM state) as the registry table's item.
func (t registryTable) item(ctx context.Context, d registry.Device) (map[string]types.AttributeValue, error) {
	item, err := attributevalue.MarshalMapWithOptions(d, func(o *attributevalue.EncoderOptions) {
		o.EncodeTime = func(v time.Time) (types.AttributeValue, error) {
			return &types.AttributeValueMemberS{Value: registry.FormatTime(v)}, nil
		}
	})
	if err != nil {
		return nil, fmt.Errorf("registry item %s: %w", d.Serial, err)
	}
	for k, v := range item {
		if sv, ok := v.(*types.AttributeValueMemberS); ok && sv.Value == zeroTime {
			delete(item, k) // never written
		}
	}
	r, err := t.s.SSM.State.Get(ctx, d.Serial)
	if err != nil {
		return nil, fmt.Errorf("registry item %s: ssm state: %w", d.Serial, err)
	}
	if (r.State != "" && r.State != ssmstate.StateInactive) || r.RequestID != "" {
		for attr, v := range map[string]string{
			ssmstate.AttrState: string(r.State), ssmstate.AttrRequestID: r.RequestID, ssmstate.AttrActivationID: r.ActivationID,
			ssmstate.AttrInstanceID: r.InstanceID,
		} {
			if v != "" {
				item[attr] = &types.AttributeValueMemberS{Value: v}
			}
		}
		for attr, v := range map[string]time.Time{ssmstate.AttrActivationExpiry: r.ActivationExpiry, ssmstate.AttrUpdatedAt: r.UpdatedAt} {
			if !v.IsZero() {
				item[attr] = &types.AttributeValueMemberS{Value: registry.FormatTime(v)}
			}
		}
	}
	return item, nil
}
