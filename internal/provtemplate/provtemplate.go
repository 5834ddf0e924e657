// Package provtemplate builds the fleet provisioning template body. The
// Pulumi program declares it and the local IoT Core evaluates the same body,
// so both agree on how a serial becomes a thing.
package provtemplate

import (
	"encoding/json"
	"fmt"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Params shape the template.
type Params struct {
	// ThingNamePrefix is prepended to the serial to form the thing name,
	// e.g. "dev-" gives "dev-10000000abcdef01".
	ThingNamePrefix string
	// ThingGroup is the thing group every provisioned device joins.
	ThingGroup string
	// DevicePolicy is the name of the IoT policy attached to the device
	// certificate.
	DevicePolicy string
}

// Logical resource names in the template body.
const (
	ResourceThing       = "thing"
	ResourceCertificate = "certificate"
	ResourcePolicy      = "policy"
)

// ThingName is the thing name the template gives to serial.
func (p Params) ThingName(serial string) string { return p.ThingNamePrefix + serial }

// Body returns the template body JSON.
func Body(p Params) (string, error) {
	if p.ThingGroup == "" || p.DevicePolicy == "" {
		return "", fmt.Errorf("provisioning template: ThingGroup and DevicePolicy are required")
	}
	body := map[string]any{
		"Parameters": map[string]any{
			protocol.ParamSerialNumber:  map[string]any{"Type": "String"},
			protocol.ParamCertificateID: map[string]any{"Type": "String"},
		},
		"Resources": map[string]any{
			ResourceThing: map[string]any{
				"Type": "AWS::IoT::Thing",
				"Properties": map[string]any{
					"ThingName": map[string]any{
						"Fn::Join": []any{"", []any{p.ThingNamePrefix, map[string]any{"Ref": protocol.ParamSerialNumber}}},
					},
					"AttributePayload": map[string]any{
						"serial": map[string]any{"Ref": protocol.ParamSerialNumber},
					},
					"ThingGroups": []any{p.ThingGroup},
				},
				"OverrideSettings": map[string]any{
					"AttributePayload": "MERGE",
					"ThingGroups":      "DO_NOTHING",
				},
			},
			ResourceCertificate: map[string]any{
				"Type": "AWS::IoT::Certificate",
				"Properties": map[string]any{
					"CertificateId": map[string]any{"Ref": protocol.ParamCertificateID},
					"Status":        "ACTIVE",
				},
			},
			ResourcePolicy: map[string]any{
				"Type": "AWS::IoT::Policy",
				"Properties": map[string]any{
					"PolicyName": p.DevicePolicy,
				},
			},
		},
		"DeviceConfiguration": map[string]any{
			"thingGroup": p.ThingGroup,
		},
	}
	b, err := json.Marshal(body)
	if err != nil {
		return "", fmt.Errorf("provisioning template: marshal: %w", err)
	}
	return string(b), nil
}
