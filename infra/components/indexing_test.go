package components

import (
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestIndexingNamedShadow(t *testing.T) {
	t.Parallel()
	m := &recorder{}
	require.NoError(t, pulumi.RunErr(func(ctx *pulumi.Context) error {
		_, err := NewIndexing(ctx, "indexing")
		return err
	}, pulumi.WithMocks("iot-fleet", "dev", m)))
	in := m.find(t, "aws:iot/indexingConfiguration:IndexingConfiguration", "indexing")
	cfg := in["thingIndexingConfiguration"].ObjectValue()
	assert.Equal(t, "REGISTRY_AND_SHADOW", cfg["thingIndexingMode"].StringValue())
	assert.Equal(t, "ON", cfg["namedShadowIndexingMode"].StringValue())
	assert.Equal(t, "STATUS", cfg["thingConnectivityIndexingMode"].StringValue())
	names := cfg["filter"].ObjectValue()["namedShadowNames"].ArrayValue()
	require.Len(t, names, 1, "only the agent's shadow is indexed")
	assert.Equal(t, "fleet-agent", names[0].StringValue())
	var fields []string
	for _, f := range cfg["customFields"].ArrayValue() {
		assert.Equal(t, "String", f.ObjectValue()["type"].StringValue())
		fields = append(fields, f.ObjectValue()["name"].StringValue())
	}
	assert.Contains(t, fields, "shadow.name.fleet-agent.reported.imageVersion")
	assert.Contains(t, fields, "shadow.name.fleet-agent.reported.agentVersion")
}
