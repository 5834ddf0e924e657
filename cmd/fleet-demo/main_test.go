package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The README promises that the demo shows a fleet provisioning, a denied
// serial, a group job and a revocation, with the fleetctl command an
// operator types for each action, and exits 0 only if all of it happened.
// Run it as a user would (smaller fleet).
func TestDemoRunsEndToEnd(t *testing.T) {
	var out bytes.Buffer
	code := run([]string{"--devices", "2", "--timeout", "2m"}, &out, &out)
	require.Equal(t, 0, code, out.String())
	text := out.String()
	for _, want := range []string{"provisioned  dev-10000000de700001", "provisioned  dev-10000000de700002", "denied       serial 10000000deadbeef", "denied       a clone of serial 10000000de700001", "SUCCEEDED",
		"refused      an empty allowlist.txt",
		"ota result   dev-10000000de70a001 SUCCEEDED step=committed", "ota result   dev-10000000de70a002 FAILED    step=rolled_back",
		"rotated      dev-10000000de700002", "registered as managed node mi-", "dev-10000000de705501 deactivated", "revoked      dev-10000000de700001",
		"refused      escape.json before anything was created", "refused      by allowlist diff",
		"revoked      dev-10000000de70a001 at once (no deploy)", "device       10000000de70a001 revoked",
		"aws ssm start-session --target mi-", "DEMO PASSED"} {
		require.Contains(t, text, want)
	}
	require.Equal(t, 2, strings.Count(text, "job result"))
	for _, cmd := range []string{"jobs create --document demo-hello.json", "jobs watch demo-hello", "ota create --artifact rpi-os-2026.12.mender",
		"ota watch demo-ota", "rotate dev-10000000de700002", "ssm on 10000000de705501", "ssm off 10000000de705501",
		"allowlist diff allowlist.txt", "revoke 10000000de70a001 --reason", "devices list"} {
		require.Regexp(t, `\$ fleetctl --local \S+ `+regexp.QuoteMeta(cmd), text, "the demo shows the operator's command")
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	var out bytes.Buffer
	require.Equal(t, 2, run([]string{"--devices", "0"}, &out, &out))
	require.Contains(t, out.String(), "--devices must be between 1 and 20")
	out.Reset()
	require.Equal(t, 2, run([]string{"--no-such-flag"}, &out, &out))
}

// --help prints the flags and succeeds, as every command of the project.
func TestDemoHelp(t *testing.T) {
	var out bytes.Buffer
	require.Equal(t, 0, run([]string{"--help"}, &out, &out))
	require.Contains(t, out.String(), "-devices")
}

// The smallest fleet (--devices 1) runs every step too.
func TestDemoWithOneDevice(t *testing.T) {
	var out bytes.Buffer
	code := run([]string{"--devices", "1", "--timeout", "2m"}, &out, &out)
	require.Equal(t, 0, code, out.String())
	require.Contains(t, out.String(), "rotated      dev-10000000de700001")
}
