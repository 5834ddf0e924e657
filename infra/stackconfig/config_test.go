package stackconfig

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

func minimal() map[string]string {
	return map[string]string{KeyRegion: "eu-west-1", KeyEnvironment: "dev"}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := FromMap(minimal())
	require.NoError(t, err)
	assert.Equal(t, Config{
		Region:                    "eu-west-1",
		Environment:               "dev",
		ThingGroup:                "iot-fleet-dev",
		SerialPattern:             `^[0-9a-f]{16}$`,
		CertExpiryWindowDays:      30,
		SSMActivationExpiryHours:  24,
		LogRetentionDays:          30,
		AllowlistPath:             "allowlist.txt",
		CredentialDurationSeconds: 3600,
	}, c)
	// The naming contract of the brief.
	assert.Equal(t, "iot-fleet-dev", c.Prefix())
	assert.Equal(t, "dev-", c.ThingNamePrefix())
	assert.Equal(t, "iot-fleet-dev", c.TemplateName())
	assert.Equal(t, "iot-fleet-dev-claim", c.ClaimPolicyName())
	assert.Equal(t, "iot-fleet-dev-device", c.DevicePolicyName())
	assert.Equal(t, "iot-fleet-dev-token-exchange", c.RoleAliasName())
	assert.Equal(t, "iot-fleet/dev/claim-certificate", c.ClaimSecretName())
}

func TestEmptyOptionalValuesTakeDefaults(t *testing.T) {
	t.Parallel()
	m := minimal()
	m[KeyThingGroup] = ""
	m[KeyAllowlistPath] = "  "
	m[KeyClaimCertificateArn] = ""
	c, err := FromMap(m)
	require.NoError(t, err)
	assert.Equal(t, "iot-fleet-dev", c.ThingGroup)
	assert.Equal(t, "allowlist.txt", c.AllowlistPath)
	assert.Empty(t, c.ClaimCertificateArn)
}

func TestExplicitValues(t *testing.T) {
	t.Parallel()
	arn := "arn:aws:iot:eu-west-1:123456789012:cert/" + strings.Repeat("ab", 32)
	c, err := FromMap(map[string]string{
		KeyRegion: "us-gov-west-1", KeyEnvironment: "prod", KeyThingGroup: "Fleet:Prod_1",
		KeySerialPattern: `^[A-Z0-9]{8,20}$`, KeyCertExpiryWindowDays: "45", KeySSMActivationExpiryHours: "720",
		KeyLogRetentionDays: "365", KeyAllowlistPath: "config/allow.txt", KeyDeletionProtection: "true",
		KeyClaimCertificateArn: arn, KeyCredentialDurationSeconds: "900", KeyMaxRevocationsPerSync: "25",
		KeyAllowlistConfirmRevocations: "7", KeyAdoptRetained: "true",
	})
	require.NoError(t, err)
	assert.Equal(t, Config{
		Region: "us-gov-west-1", Environment: "prod", ThingGroup: "Fleet:Prod_1",
		SerialPattern: `^[A-Z0-9]{8,20}$`, CertExpiryWindowDays: 45, SSMActivationExpiryHours: 720,
		LogRetentionDays: 365, AllowlistPath: "config/allow.txt", DeletionProtection: true,
		ClaimCertificateArn: arn, CredentialDurationSeconds: 900, MaxRevocationsPerSync: 25,
		AllowlistConfirmRevocations: 7, AdoptRetained: true,
	}, c)
}

func TestInvalidValuesNameTheKey(t *testing.T) {
	t.Parallel()
	cases := []struct {
		key, value, want string
	}{
		{KeyRegion, "Europe", "not an AWS region"},
		{KeyEnvironment, "Dev", "lower-case"},
		{KeyEnvironment, "a-b", "lower-case"},
		{KeyThingGroup, "group with spaces", "1-128 characters"},
		{KeySerialPattern, `[0-9a-f]{16}`, "anchored"},
		{KeySerialPattern, `^([0-9a-f]{16}$`, "does not compile"},
		{KeySerialPattern, `^.*$`, "accepts"},
		{KeySerialPattern, `^[0-9a-f/]{1,16}$`, `accepts "a/b"`},
		{KeyCertExpiryWindowDays, "0", "out of range"},
		{KeyCertExpiryWindowDays, "thirty", "not an integer"},
		{KeySSMActivationExpiryHours, "721", "out of range"},
		{KeyLogRetentionDays, "10", "not a CloudWatch Logs retention"},
		{KeyAllowlistPath, "/etc/passwd", "relative path inside the project"},
		{KeyAllowlistPath, "../outside.txt", "relative path inside the project"},
		{KeyDeletionProtection, "yes please", "not a boolean"},
		{KeyClaimCertificateArn, "arn:aws:iot:eu-west-1:123456789012:cert/xyz", "not an IoT certificate ARN"},
		{KeyCredentialDurationSeconds, "3601", "exceeds the token-exchange role's MaxSessionDuration of 3600"},
		{KeyCredentialDurationSeconds, "43200", "MaxSessionDuration"},
		{KeyCredentialDurationSeconds, "899", "below the role alias minimum"},
		{KeyCredentialDurationSeconds, "1h", "not an integer"},
		{KeyMaxRevocationsPerSync, "0", "out of range [1,"},
		{KeyMaxRevocationsPerSync, "-3", "out of range"},
		{KeyMaxRevocationsPerSync, "ten", "not an integer"},
		{KeyAllowlistConfirmRevocations, "-1", "out of range [0,"},
		{KeyAllowlistConfirmRevocations, "1000000", "out of range"},
		{KeyAllowlistConfirmRevocations, "3 devices", "not an integer"},
		{KeyAdoptRetained, "sure", "not a boolean"},
	}
	for _, tc := range cases {
		m := minimal()
		m[tc.key] = tc.value
		_, err := FromMap(m)
		if assert.Error(t, err, "%s=%q", tc.key, tc.value) {
			assert.Contains(t, err.Error(), tc.key+":", "error names the key")
			assert.Contains(t, err.Error(), tc.want)
		}
	}
}

func TestMissingRequiredKeys(t *testing.T) {
	t.Parallel()
	_, err := FromMap(map[string]string{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), KeyRegion+": required")
	assert.Contains(t, err.Error(), KeyEnvironment+": required")
}

func TestEveryBadKeyIsReportedAtOnce(t *testing.T) {
	t.Parallel()
	m := minimal()
	m[KeyLogRetentionDays] = "2"
	m[KeyCertExpiryWindowDays] = "-1"
	m[KeySerialPattern] = "abc"
	_, err := FromMap(m)
	require.Error(t, err)
	for _, k := range []string{KeyLogRetentionDays, KeyCertExpiryWindowDays, KeySerialPattern} {
		assert.Contains(t, err.Error(), k)
	}
}

// projectFile is the part of Pulumi.yaml the tests read.
type projectFile struct {
	Name    string `yaml:"name"`
	Runtime string `yaml:"runtime"`
	Main    string `yaml:"main"`
	Config  map[string]struct {
		Type    string `yaml:"type"`
		Default any    `yaml:"default"`
	} `yaml:"config"`
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(root, "Pulumi.yaml"))
	return root
}

// TestProjectFileMatchesLoader keeps Pulumi.yaml's typed config (types and
// defaults) and the Go loader in step.
func TestProjectFileMatchesLoader(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Pulumi.yaml"))
	require.NoError(t, err)
	var p projectFile
	require.NoError(t, yaml.Unmarshal(b, &p))
	assert.Equal(t, Namespace, p.Name)
	assert.Equal(t, "go", p.Runtime)
	assert.Equal(t, "infra/", p.Main)

	defaults, err := FromMap(minimal())
	require.NoError(t, err)
	want := map[string]struct {
		typ string
		def any
	}{
		"environment":               {"string", nil},
		"thingGroup":                {"string", ""}, // empty means iot-fleet-<env>
		"serialPattern":             {"string", defaults.SerialPattern},
		"certExpiryWindowDays":      {"integer", defaults.CertExpiryWindowDays},
		"ssmActivationExpiryHours":  {"integer", defaults.SSMActivationExpiryHours},
		"logRetentionDays":          {"integer", defaults.LogRetentionDays},
		"allowlistPath":             {"string", defaults.AllowlistPath},
		"deletionProtection":        {"boolean", defaults.DeletionProtection},
		"claimCertificateArn":       {"string", ""},
		"credentialDurationSeconds": {"integer", defaults.CredentialDurationSeconds},
		"adoptRetained":             {"boolean", false},
	}
	require.Len(t, p.Config, len(want))
	for key, w := range want {
		got, ok := p.Config[key]
		if !assert.True(t, ok, "Pulumi.yaml declares %s", key) {
			continue
		}
		assert.Equal(t, w.typ, got.Type, key)
		assert.Equal(t, w.def, got.Default, key)
		assert.Contains(t, Keys(), Namespace+":"+key, "the loader reads %s", key)
	}
}

// TestStackFilesUseOnlyKnownKeys: a typo in Pulumi.<stack>.yaml would
// otherwise be silently ignored.
func TestStackFilesUseOnlyKnownKeys(t *testing.T) {
	t.Parallel()
	for _, stack := range []string{"dev", "prod"} {
		b, err := os.ReadFile(filepath.Join(repoRoot(t), "Pulumi."+stack+".yaml"))
		require.NoError(t, err)
		var f struct {
			Config map[string]any `yaml:"config"`
		}
		require.NoError(t, yaml.Unmarshal(b, &f))
		m := map[string]string{}
		for k, v := range f.Config {
			assert.Contains(t, Keys(), k, "Pulumi.%s.yaml: unknown key", stack)
			switch v := v.(type) {
			case string:
				m[k] = v
			case int:
				m[k] = strconv.Itoa(v)
			case bool:
				m[k] = strconv.FormatBool(v)
			default:
				t.Fatalf("Pulumi.%s.yaml: %s has unexpected type %T", stack, k, v)
			}
		}
		c, err := FromMap(m)
		require.NoError(t, err, stack)
		assert.Equal(t, stack, c.Environment)
		// A confirmation is for one deploy (deploy-infra's input): left
		// in a stack file it would confirm every later plan of that size.
		assert.NotContains(t, f.Config, KeyAllowlistConfirmRevocations, "Pulumi.%s.yaml must not confirm revocations", stack)
	}
}

func TestUnsetOptionalCountsAreZero(t *testing.T) {
	t.Parallel()
	m := minimal()
	m[KeyMaxRevocationsPerSync] = " "
	c, err := FromMap(m)
	require.NoError(t, err)
	assert.Zero(t, c.MaxRevocationsPerSync, "unset: the sync Lambda's default")
	assert.Zero(t, c.AllowlistConfirmRevocations)
	m[KeyAllowlistConfirmRevocations] = "0"
	c, err = FromMap(m)
	require.NoError(t, err)
	assert.Zero(t, c.AllowlistConfirmRevocations, "0 confirms nothing")
}
