package policy

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var params = Params{Partition: "aws", Region: "eu-west-1", AccountID: "123456789012", TemplateName: "iot-fleet-dev"}

func TestClaimPolicyAllowsOnlyProvisioning(t *testing.T) {
	doc, err := Claim(params)
	require.NoError(t, err)
	parsed, err := Parse(doc.JSON())
	require.NoError(t, err)
	require.Equal(t, doc, parsed, "JSON round-trips")

	for _, st := range parsed.Statement {
		require.Equal(t, "Allow", st.Effect)
		for _, a := range st.Action {
			require.Contains(t, []string{"iot:Connect", "iot:Publish", "iot:Receive", "iot:Subscribe"}, a)
		}
		for _, r := range st.Resource {
			require.True(t, strings.HasPrefix(r, "arn:aws:iot:eu-west-1:123456789012:"), r)
			switch {
			case strings.Contains(r, ":client/"):
				require.Equal(t, "arn:aws:iot:eu-west-1:123456789012:client/provision-*", r)
			default:
				require.Truef(t,
					strings.Contains(r, "/$aws/certificates/create-from-csr/json") ||
						strings.Contains(r, "/$aws/provisioning-templates/iot-fleet-dev/provision/json"),
					"claim resource outside the provisioning topics: %s", r)
			}
		}
	}
}

func TestDevicePolicyIsScopedToTheConnectedThing(t *testing.T) {
	doc, err := Device(params)
	require.NoError(t, err)
	js := doc.JSON()
	require.NotContains(t, js, `"iot:*"`)
	require.NotContains(t, js, `"*"`)
	for _, st := range doc.Statement {
		for _, r := range st.Resource {
			require.Contains(t, r, ThingNameVar, "every resource is pinned to the thing: %s", r)
		}
		for _, a := range st.Action {
			require.NotContains(t, a, "*")
		}
	}
	require.Equal(t, "true", doc.Statement[0].Condition["Bool"]["iot:Connection.Thing.IsAttached"])
}

func TestMissingParamsAreNamed(t *testing.T) {
	_, err := Device(Params{Partition: "aws", Region: "eu-west-1"})
	require.ErrorContains(t, err, "AccountID")
	require.ErrorContains(t, err, "TemplateName")
	_, err = Claim(Params{})
	require.Error(t, err)
}
