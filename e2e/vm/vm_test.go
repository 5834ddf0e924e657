package vm

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// The scenarios themselves run in e2e/vm_test.go (IOT_FLEET_VM=1); these
// tests cover the pieces that read what the guest and the tools print.

func TestParseDD(t *testing.T) {
	// GNU dd's summary (coreutils 9.1, Debian 12).
	secs, rate, ok := parseDD("314572800 bytes (315 MB, 300 MiB) copied, 12.3456 s, 25.5 MB/s\n")
	require.True(t, ok)
	require.InDelta(t, 12.3456, secs, 1e-9)
	require.InDelta(t, 25.5, rate, 1e-9)
	_, rate, ok = parseDD("1048576 bytes (1.0 MB, 1.0 MiB) copied, 0.5 s, 900 kB/s")
	require.True(t, ok)
	require.InDelta(t, 0.9, rate, 1e-9)
	_, rate, ok = parseDD("... copied, 0.2 s, 1.5 GB/s")
	require.True(t, ok)
	require.InDelta(t, 1500, rate, 1e-9)
	_, _, ok = parseDD("dd: error writing '/dev/vda2': No space left on device")
	require.False(t, ok)
}

func TestParseInfoAndExpectRunning(t *testing.T) {
	info := parseInfo("release=v2\nartifact=v2\nroot=/dev/vda3\nboot_part=3\nupgrade_available=0\nbootcount=1\nboot_id=abc\nnoise\n")
	require.NoError(t, info.expectRunning("v2", 3))
	err := info.expectRunning("v1", 2)
	require.ErrorContains(t, err, `release="v2" (want "v1")`)
	require.ErrorContains(t, err, `root="/dev/vda3" (want "/dev/vda2")`)

	info["upgrade_available"] = "1"
	require.ErrorContains(t, info.expectRunning("v2", 3), `upgrade_available="1" (want "0")`)
}

func TestIsSubsequence(t *testing.T) {
	steps := []string{"downloading", "rebooting", "verifying", "committed"}
	require.True(t, isSubsequence(steps, []string{"downloading", "installing", "rebooting", "verifying", "committed"}))
	require.False(t, isSubsequence(steps, []string{"downloading", "verifying", "rebooting", "committed"}))
	require.False(t, isSubsequence(steps, []string{"downloading", "rebooting"}))
}

func TestPayloadSizeFromMenderArtifactRead(t *testing.T) {
	// mender-artifact 3.9's read output for a rootfs-image artifact.
	out := `Mender artifact:
  Name: v2
  Format: mender
  Version: 3
  Signature: signed and verified correctly
  Compatible devices: [qemu-arm64]
  Provides group: 
  Depends on one of artifact(s): []
  Depends on one of group(s): []
  State scripts: []

Updates:
    0:
    Type:   rootfs-image
    Provides:
	rootfs-image.checksum: 0a1b
	rootfs-image.version: v2
    Depends: Nothing
    Clears Provides: [artifact_group rootfs_image_checksum rootfs-image.*]
    Metadata: Nothing
    Files:
      name:     v2.ext4
      size:     402653184
      modified: 2026-12-05 18:00:00 +0000 UTC
      checksum: 0a1b
`
	m := rePayloadSize.FindStringSubmatch(out)
	require.NotNil(t, m)
	require.Equal(t, "402653184", m[1])
}

func TestInstallHandlersCommandHasNoCommaInItsScript(t *testing.T) {
	cmd := installHandlersCommand()
	// runCommand splits on commas: exactly sh, -c and the script.
	require.Equal(t, 2, strings.Count(cmd, ","), cmd)
	require.True(t, strings.HasPrefix(cmd, "sh,-c,set -e; install -d -m 0700 "+HandlerDir))
	require.Contains(t, cmd, "/vm-info.sh.tmp")
	require.Contains(t, cmd, "/reboot.sh.tmp")
}

func TestArtifactServerServesOnlyItsFilesAndRecordsDownloads(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "v2.mender"), []byte("artifact bytes"), 0o644))
	files, err := artifactFiles(dir, "v2.mender")
	require.NoError(t, err)
	_, err = artifactFiles(dir, "v3-bad.mender")
	require.ErrorContains(t, err, "artifact v3-bad.mender")

	a, err := startArtifactServer(files)
	require.NoError(t, err)
	defer a.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + a.Addr() + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	code, body := get("/v2.mender")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "artifact bytes", body)
	code, _ = get("/v2.mender/../v2.mender.part")
	require.Equal(t, http.StatusNotFound, code)
	code, _ = get("/outputs.json")
	require.Equal(t, http.StatusNotFound, code)

	d := a.Downloads()
	require.Len(t, d, 1)
	require.Equal(t, "/v2.mender", d[0].Path)
	require.EqualValues(t, len("artifact bytes"), d[0].Bytes)
	require.True(t, d[0].Complete)
	require.Equal(t, "http://artifacts.vm.internal/v2.mender", a.URL("v2.mender"))
}

func TestFormat(t *testing.T) {
	wall := time.Date(2026, 12, 5, 18, 4, 5, 0, time.UTC)
	require.Equal(t, "18:04:05  +    12.3s  [ota-v2] rebooting",
		Format(Event{At: 12340 * time.Millisecond, Wall: wall, Scenario: "ota-v2", What: "rebooting"}))
	require.Equal(t, "18:04:05  +  3m07.0s  disk made",
		Format(Event{At: 3*time.Minute + 7*time.Second, Wall: wall, What: "disk made"}))
}

func TestDescribeExecLeavesOutOutput(t *testing.T) {
	s := describeExec(jobs.Execution{Status: "IN_PROGRESS", StatusDetails: map[string]string{"step": "rebooting", "attempt": "1", "stdout": "lots"}})
	require.Equal(t, `IN_PROGRESS attempt="1" step="rebooting"`, s)
	require.Equal(t, "no execution yet", describeExec(jobs.Execution{}))
}
