package fleetctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// fleetctl runs one command line in-process and returns its exit code,
// stdout and stderr.
func fleetctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

func serialN(i int) string { return fmt.Sprintf("10000000%08x", i) }

// registryFixture starts dynalite (the DynamoDB API), creates a registry
// table with n provisioned devices and points the AWS SDK at it. It
// returns the table name and the stack outputs file naming it.
func registryFixture(t *testing.T, n int) (string, string) {
	t.Helper()
	endpoint := testenv.StartDynalite(t)
	client := testenv.DynamoDBClient(endpoint)
	table := "iot-fleet-test-registry"
	testenv.CreateRegistryTable(t, client, table)
	store, err := registry.NewDynamoDB(client, table)
	require.NoError(t, err)
	ctx := context.Background()
	for i := range n {
		s := serialN(i)
		require.NoError(t, store.PutAllowed(ctx, s))
		_, err := store.RecordProvisioned(ctx, s, "dev-"+s, registry.Certificate{ID: strings.Repeat(fmt.Sprintf("%x", i%16), 64)})
		require.NoError(t, err)
	}
	t.Setenv("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
	t.Setenv("AWS_REGION", testenv.DynaliteRegion)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	outputs := writeFile(t, t.TempDir(), "outputs.json", `{"registryTable": "`+table+`"}`)
	return table, outputs
}

func allowlistOf(serials ...string) string {
	return "# test\n" + strings.Join(serials, "\n") + "\n"
}

func TestAllowlistCheck(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.txt", allowlistOf(serialN(1), serialN(2)+" readmit=INC-42", serialN(3)+"  # bench"))
	code, out, _ := fleetctl(t, "allowlist", "check", good)
	assert.Equal(t, ExitOK, code)
	assert.Contains(t, out, "3 serial(s), 1 with readmit: valid")

	bad := writeFile(t, dir, "bad.txt", allowlistOf(serialN(1), "10000000ZZZZ", serialN(1)))
	code, _, errOut := fleetctl(t, "allowlist", "check", bad)
	assert.Equal(t, ExitInvalid, code)
	assert.Contains(t, errOut, "line 3")
	assert.Contains(t, errOut, "line 4: serial "+serialN(1)+" is already listed on line 2", "every bad line is reported")

	annotated := writeFile(t, dir, "annot.txt", allowlistOf(serialN(1)+" readmit"))
	code, _, errOut = fleetctl(t, "allowlist", "check", annotated)
	assert.Equal(t, ExitInvalid, code)
	assert.Contains(t, errOut, "line 2")

	code, _, errOut = fleetctl(t, "allowlist", "check", filepath.Join(dir, "missing.txt"))
	assert.Equal(t, ExitFailed, code)
	assert.Contains(t, errOut, "missing.txt")
}

func TestUsageErrors(t *testing.T) {
	code, _, _ := fleetctl(t, "allowlist", "check", "--no-such-flag")
	assert.Equal(t, ExitUsage, code)
	code, _, _ = fleetctl(t, "allowlist", "check", "a", "b")
	assert.Equal(t, ExitUsage, code)
	code, _, _ = fleetctl(t, "no-such-command")
	assert.Equal(t, ExitUsage, code)
	code, _, _ = fleetctl(t, "-o", "yaml", "allowlist", "check", "x")
	assert.Equal(t, ExitUsage, code)
	code, out, _ := fleetctl(t, "--help")
	assert.Equal(t, ExitOK, code)
	assert.Contains(t, out, "allowlist")
	code, out, _ = fleetctl(t, "allowlist", "diff", "--help")
	assert.Equal(t, ExitOK, code)
	assert.Contains(t, out, "Exit codes")
}

func TestAllowlistDiffAgainstTheRegistry(t *testing.T) {
	_, outputs := registryFixture(t, 20)
	dir := t.TempDir()
	all := make([]string, 20)
	for i := range all {
		all[i] = serialN(i)
	}

	t.Run("admissions, re-admission and revocations under the limit", func(t *testing.T) {
		list := append(append([]string{}, all[2:]...), serialN(100), serialN(5)+" readmit=INC-7")
		list = append(list[:3], list[4:]...) // drop serialN(5)'s plain line: it is re-listed annotated
		f := writeFile(t, dir, "a.txt", allowlistOf(list...))
		code, out, errOut := fleetctl(t, "--outputs", outputs, "allowlist", "diff", f)
		require.Equal(t, ExitOK, code, errOut)
		assert.Contains(t, out, "admits 1 device(s): "+serialN(100))
		assert.Contains(t, out, "re-admits 1 device(s): "+serialN(5)+" (readmit=INC-7)")
		assert.Contains(t, out, "revokes 2 device(s) (limit 5 per sync):")
		assert.Contains(t, out, "dev-"+serialN(0))
		assert.Contains(t, out, "dev-"+serialN(1))

		code, out, _ = fleetctl(t, "--outputs", outputs, "-o", "json", "allowlist", "diff", f)
		require.Equal(t, ExitOK, code)
		var plan struct {
			Admit  []string `json:"admit"`
			Revoke []struct {
				Serial string `json:"serial"`
			} `json:"revoke"`
			Refused bool `json:"refused"`
			Limit   int  `json:"limit"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &plan))
		assert.Equal(t, []string{serialN(100)}, plan.Admit)
		require.Len(t, plan.Revoke, 2)
		assert.Equal(t, serialN(0), plan.Revoke[0].Serial)
		assert.False(t, plan.Refused)
		assert.Equal(t, 5, plan.Limit)
	})

	t.Run("truncated file over the limit is refused, then confirmed", func(t *testing.T) {
		f := writeFile(t, dir, "t.txt", allowlistOf(all[:4]...))
		code, out, errOut := fleetctl(t, "--outputs", outputs, "allowlist", "diff", f)
		assert.Equal(t, ExitRefused, code)
		assert.Contains(t, out, "REFUSED")
		assert.Contains(t, out, "revokes 16 device(s)")
		assert.Contains(t, errOut, "allowlistConfirmRevocations")

		code, out, _ = fleetctl(t, "--outputs", outputs, "allowlist", "diff", "--confirm-revocations", "16", f)
		assert.Equal(t, ExitOK, code)
		assert.Contains(t, out, "over it and confirmed")

		code, _, _ = fleetctl(t, "--outputs", outputs, "allowlist", "diff", "--confirm-revocations", "15", f)
		assert.Equal(t, ExitRefused, code)
	})

	t.Run("empty file never revokes", func(t *testing.T) {
		f := writeFile(t, dir, "e.txt", "# nothing left\n")
		code, out, _ := fleetctl(t, "--outputs", outputs, "allowlist", "diff", "--confirm-revocations", "20", f)
		assert.Equal(t, ExitRefused, code)
		assert.Contains(t, out, "empty allowlist never revokes")
	})

	t.Run("the stack's limit applies", func(t *testing.T) {
		proj := t.TempDir()
		writeFile(t, proj, "Pulumi.dev.yaml", "config:\n  aws:region: eu-west-1\n  iot-fleet:environment: dev\n  iot-fleet:maxRevocationsPerSync: 20\n")
		writeFile(t, proj, "allowlist.txt", allowlistOf(all[:4]...))
		code, out, errOut := fleetctl(t, "--stack", "dev", "--project-dir", proj, "--outputs", outputs, "allowlist", "diff")
		require.Equal(t, ExitOK, code, errOut)
		assert.Contains(t, out, "revokes 16 device(s) (limit 20 per sync)")
	})

	t.Run("unreadable registry is a failure, not a plan", func(t *testing.T) {
		f := writeFile(t, dir, "u.txt", allowlistOf(all...))
		code, _, errOut := fleetctl(t, "--outputs", outputs, "allowlist", "diff", "--registry-table", "no-such-table", f)
		assert.Equal(t, ExitFailed, code)
		assert.Contains(t, errOut, "no-such-table")
	})
}

// A readmit line that lifts an emergency hold is shown loudly, with the
// revocation's record; a reverted line whose token the serial used before
// re-admits nothing.
func TestAllowlistDiffShowsLiftedHold(t *testing.T) {
	table, outputs := registryFixture(t, 3)
	store, err := registry.NewDynamoDB(testenv.DynamoDBClient(os.Getenv("AWS_ENDPOINT_URL_DYNAMODB")), table)
	require.NoError(t, err)
	ctx := context.Background()
	s := serialN(1)
	d, err := store.Get(ctx, s)
	require.NoError(t, err)
	_, _, err = store.Readmit(ctx, s, "T1", "ops")
	require.NoError(t, err)
	_, err = store.MarkEmergencyRevoking(ctx, s, d.CertificateID, registry.Revocation{Reason: "stolen from site 4", By: "alice"})
	require.NoError(t, err)
	require.NoError(t, store.MarkRevoked(ctx, s, d.CertificateID))
	d, err = store.Get(ctx, s)
	require.NoError(t, err)
	dir := t.TempDir()

	reverted := writeFile(t, dir, "reverted.txt", allowlistOf(serialN(0), s+" readmit=T1", serialN(2)))
	code, out, errOut := fleetctl(t, "--outputs", outputs, "allowlist", "diff", reverted)
	require.Equal(t, ExitOK, code, errOut)
	assert.Contains(t, out, "re-admits 0 device(s)")
	assert.Contains(t, out, "holds out 1 emergency-revoked device(s)")
	assert.NotContains(t, out, "LIFTS")

	lifted := writeFile(t, dir, "lifted.txt", allowlistOf(serialN(0), s+" readmit=T2", serialN(2)))
	code, out, errOut = fleetctl(t, "--outputs", outputs, "allowlist", "diff", lifted)
	require.Equal(t, ExitOK, code, errOut)
	assert.Contains(t, out, "re-admits 1 device(s): "+s+" (readmit=T2)")
	assert.Contains(t, out, "LIFTS EMERGENCY REVOCATION of "+s+` (reason "stolen from site 4", by alice, at `+registry.FormatTime(d.RevokedAt)+")")

	code, out, _ = fleetctl(t, "--outputs", outputs, "-o", "json", "allowlist", "diff", lifted)
	require.Equal(t, ExitOK, code)
	var plan struct {
		Readmit []struct {
			Serial    string `json:"serial"`
			Lifts     bool   `json:"liftsEmergencyRevocation"`
			Reason    string `json:"revokeReason"`
			RevokedBy string `json:"revokedBy"`
		} `json:"readmit"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &plan))
	require.Len(t, plan.Readmit, 1)
	assert.True(t, plan.Readmit[0].Lifts)
	assert.Equal(t, "stolen from site 4", plan.Readmit[0].Reason)
	assert.Equal(t, "alice", plan.Readmit[0].RevokedBy)
}
