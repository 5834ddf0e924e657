package provtemplate

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBodyDeclaresThingCertificateAndPolicy(t *testing.T) {
	p := Params{ThingNamePrefix: "dev-", ThingGroup: "iot-fleet-dev", DevicePolicy: "iot-fleet-dev-device"}
	body, err := Body(p)
	require.NoError(t, err)

	var doc struct {
		Parameters map[string]any `json:"Parameters"`
		Resources  map[string]struct {
			Type       string         `json:"Type"`
			Properties map[string]any `json:"Properties"`
		} `json:"Resources"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &doc))
	require.Contains(t, doc.Parameters, "SerialNumber")
	require.Contains(t, doc.Parameters, "AWS::IoT::Certificate::Id")
	require.Equal(t, "AWS::IoT::Thing", doc.Resources[ResourceThing].Type)
	require.Equal(t, []any{"iot-fleet-dev"}, doc.Resources[ResourceThing].Properties["ThingGroups"])
	require.Equal(t, "iot-fleet-dev-device", doc.Resources[ResourcePolicy].Properties["PolicyName"])
	require.Equal(t, "ACTIVE", doc.Resources[ResourceCertificate].Properties["Status"])
	require.Equal(t, "dev-10000000abcdef01", p.ThingName("10000000abcdef01"))
}

func TestBodyRequiresGroupAndPolicy(t *testing.T) {
	_, err := Body(Params{ThingNamePrefix: "dev-"})
	require.Error(t, err)
}
