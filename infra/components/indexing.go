package components

import (
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Fleet indexing fields (docs/shadow.md): the agent's named shadow is
// indexed under shadow.name.<name>.…; these reported fields are also
// declared as custom fields so aggregations (get-cardinality,
// get-buckets-aggregation) work on them.
var indexedShadowFields = []string{"imageVersion", "agentVersion", "ssm", "ota.step", "job.jobId"}

// ShadowField is the fleet-indexing field name of the agent shadow's
// reported key (e.g. "imageVersion").
func ShadowField(reportedKey string) string {
	return "shadow.name." + protocol.AgentShadowName + ".reported." + reportedKey
}

// Indexing is the account's fleet indexing configuration: the registry,
// the agent's named shadow (only that one) and connectivity status, so
// operators can find devices by image version, agent version, OTA step or
// connection state with `aws iot search-index`.
//
// Fleet indexing is one setting per account and region: stacks sharing
// both (dev and prod in one account) declare the same configuration.
type Indexing struct {
	pulumi.ResourceState

	Configuration *iot.IndexingConfiguration
}

// NewIndexing declares Indexing.
func NewIndexing(ctx *pulumi.Context, name string, opts ...pulumi.ResourceOption) (*Indexing, error) {
	ix := &Indexing{}
	if err := ctx.RegisterComponentResource("iot-fleet:iot:Indexing", name, ix, opts...); err != nil {
		return nil, err
	}
	var fields iot.IndexingConfigurationThingIndexingConfigurationCustomFieldArray
	for _, k := range indexedShadowFields {
		fields = append(fields, iot.IndexingConfigurationThingIndexingConfigurationCustomFieldArgs{
			Name: pulumi.String(ShadowField(k)), Type: pulumi.String("String"),
		})
	}
	var err error
	ix.Configuration, err = iot.NewIndexingConfiguration(ctx, name, &iot.IndexingConfigurationArgs{
		ThingIndexingConfiguration: &iot.IndexingConfigurationThingIndexingConfigurationArgs{
			// Registry and shadows; with the filter below only the
			// named shadow fleet-agent (not every named shadow).
			ThingIndexingMode:             pulumi.String("REGISTRY_AND_SHADOW"),
			NamedShadowIndexingMode:       pulumi.String("ON"),
			ThingConnectivityIndexingMode: pulumi.String("STATUS"),
			Filter: &iot.IndexingConfigurationThingIndexingConfigurationFilterArgs{
				NamedShadowNames: pulumi.StringArray{pulumi.String(protocol.AgentShadowName)},
			},
			CustomFields: fields,
		},
	}, pulumi.Parent(ix))
	if err != nil {
		return nil, err
	}
	if err := ctx.RegisterResourceOutputs(ix, pulumi.Map{}); err != nil {
		return nil, err
	}
	return ix, nil
}
