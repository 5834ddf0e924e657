package ota

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// The real-tool tests run Debian's mender client 3.4 (/usr/bin/mender) on
// artifacts made by the real mender-artifact: signed, unsigned, signed
// with another key, and tampered (a payload byte flipped after signing).
// They are update-module artifacts for mender's own single-file module,
// whose payload goes into the test's temp dir. mender runs through a
// wrapper with its own --config and --data (temp dirs) in a private mount
// namespace where a temp dir is bind-mounted on /etc/mender (mender 3.4
// reads the running artifact's name from /etc/mender/artifact_info, a path
// no option changes): nothing outside the test's temp dirs is touched.
// The reboot is the tests' fake one (the real client cannot reboot this
// machine).

// realMender is testenv's real mender client, bound to a test.
type realMender struct {
	*testenv.RealMender
	t *testing.T
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %v: %s", name, args, out)
	return string(out)
}

// newRealMender sets up the real client with its own configuration (an
// ArtifactVerifyKey) and data dir, and the keys.
func newRealMender(t *testing.T) *realMender {
	testenv.NeedRealMender(t)
	rm, err := testenv.NewRealMender(context.Background(), t.TempDir())
	require.NoError(t, err)
	require.NoError(t, CheckVerifyKeyFile(rm.VerifyKey))
	return &realMender{RealMender: rm, t: t}
}

// artifact writes a single-file artifact named name; key signs it ("" for
// none).
func (r *realMender) artifact(name, content, key string) string {
	out, err := r.Artifact(context.Background(), name, content, key)
	require.NoError(r.t, err)
	return out
}

func (r *realMender) calls() []string {
	calls, err := r.Calls()
	require.NoError(r.t, err)
	return calls
}

func (r *realMender) installed() (string, bool) {
	got, ok, err := r.Installed()
	require.NoError(r.t, err)
	return got, ok
}

func (r *realMender) showArtifact() string {
	name, err := r.ShowArtifact(context.Background())
	require.NoError(r.t, err)
	return name
}

func tamper(t *testing.T, in, out string) {
	work := t.TempDir()
	run(t, "tar", "-xf", in, "-C", work)
	inner := filepath.Join(work, "inner")
	require.NoError(t, os.Mkdir(inner, 0o700))
	run(t, "tar", "-xzf", filepath.Join(work, "data", "0000.tar.gz"), "-C", inner)
	p := filepath.Join(inner, "release.txt")
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	b[0] ^= 0x01
	require.NoError(t, os.WriteFile(p, b, 0o600))
	run(t, "tar", "-czf", filepath.Join(work, "data", "0000.tar.gz"), "-C", inner, "release.txt")
	members := strings.Fields(run(t, "tar", "-tf", in))
	run(t, "tar", append([]string{"-cf", out, "-C", work}, members...)...)
}

func (r *realMender) device(t *testing.T, hosts ...string) *device {
	d := newDevice(t, "mender", fakeScenario{})
	d.realMender = r
	d.allowHTTP = true
	d.hosts = hosts
	return d
}

// TestRealMenderSignedArtifactInstalls: a signed artifact, checked against
// the job's sha256, is installed by the real client, committed after the
// (simulated) reboot, and the job SUCCEEDS.
func TestRealMenderSignedArtifactInstalls(t *testing.T) {
	r := newRealMender(t)
	art := r.artifact("rpi-2026.12", "release 2026.12\n", r.ReleaseKey)
	base, host := testenv.ServeFiles(t, map[string]string{"rpi-2026.12.mender": art})
	d := r.device(t, host)
	job := Job{ID: "real-signed", Document: Document{URL: base + "rpi-2026.12.mender", SHA256: testenv.FileSHA256(t, art)}}
	rep := d.reporter()
	require.ErrorIs(t, d.updater(nil).Run(testCtx(t), job, rep), ErrRebootPending)
	got, ok := r.installed()
	require.True(t, ok, "the single-file module installed the payload")
	assert.Equal(t, "release 2026.12\n", got)
	assert.Equal(t, "rpi-initial", r.showArtifact(), "not committed before the reboot")

	d.reboot()
	require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))
	assert.Equal(t, protocol.JobSucceeded, rep.last().Status, "%v", rep.steps())
	assert.Equal(t, "rpi-2026.12", r.showArtifact())
	assert.Equal(t, []string{"show-artifact", "install"}, r.calls()[:2], "the name before the update is recorded first")
	ops := slices.DeleteFunc(r.calls(), func(c string) bool { return c == "show-artifact" })
	assert.Equal(t, []string{"install", "commit"}, ops)
	_, err := os.Stat(filepath.Join(d.stateDir, downloadFileName))
	assert.ErrorIs(t, err, os.ErrNotExist, "the downloaded artifact is removed")
}

// TestRealMenderRefusesBadArtifacts: unsigned, signed with another key and
// tampered artifacts are refused by the real client (streamed from the
// URL, or downloaded and checked against sha256 first); the job FAILS at
// once with mender's reason and nothing is installed.
func TestRealMenderRefusesBadArtifacts(t *testing.T) {
	r := newRealMender(t)
	signed := r.artifact("rpi-good", "good\n", r.ReleaseKey)
	tampered := filepath.Join(r.Dir, "rpi-tampered.mender")
	tamper(t, signed, tampered)
	files := map[string]string{
		"unsigned.mender": r.artifact("rpi-unsigned", "unsigned\n", ""),
		"wrongkey.mender": r.artifact("rpi-wrongkey", "wrong key\n", r.OtherKey),
		"tampered.mender": tampered,
	}
	base, host := testenv.ServeFiles(t, files)
	for _, tc := range []struct {
		name, file, want string
		checksum         bool
	}{
		{"unsigned", "unsigned.mender", "expecting signed artifact, but no signature file found", false},
		{"unsigned with sha256", "unsigned.mender", "expecting signed artifact, but no signature file found", true},
		{"wrong key", "wrongkey.mender", "invalid signature: signer: verification failed", true},
		{"tampered", "tampered.mender", "invalid checksum", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(r.CallsLog, nil, 0o600))
			d := r.device(t, host)
			doc := Document{URL: base + tc.file}
			if tc.checksum {
				doc.SHA256 = testenv.FileSHA256(t, files[tc.file])
			}
			rep := d.reporter()
			require.NoError(t, d.updater(nil).Run(testCtx(t), Job{ID: "real-" + tc.file, Document: doc}, rep))
			last := rep.last()
			assert.Equal(t, protocol.JobFailed, last.Status)
			assert.Equal(t, "failed", last.Details[DetailStep])
			assert.Equal(t, "1", last.Details[DetailAttempt], "no retry: the verdict cannot change")
			assert.Contains(t, last.Details[DetailReason], "mender refused the artifact (nothing was installed)")
			assert.Contains(t, last.Details[DetailReason], tc.want)
			_, installed := r.installed()
			assert.False(t, installed, "nothing installed")
			assert.Equal(t, "rpi-initial", r.showArtifact())
			assert.NotContains(t, r.calls(), "commit")
			assert.Equal(t, 1, strings.Count(strings.Join(r.calls(), " "), "install"), "one install attempt")
		})
	}
}

// TestSHA256MismatchInstallsNothing: the artifact served is not the one the
// job names (a valid, signed artifact — signature alone would accept it):
// the job FAILS with the two checksums and mender is never asked to
// install.
func TestSHA256MismatchInstallsNothing(t *testing.T) {
	r := newRealMender(t)
	art := r.artifact("rpi-other-release", "another release\n", r.ReleaseKey)
	base, host := testenv.ServeFiles(t, map[string]string{"a.mender": art})
	d := r.device(t, host)
	want := strings.Repeat("ab", 32)
	rep := d.reporter()
	require.NoError(t, d.updater(nil).Run(testCtx(t), Job{ID: "real-mismatch", Document: Document{URL: base + "a.mender", SHA256: want}}, rep))
	last := rep.last()
	assert.Equal(t, protocol.JobFailed, last.Status)
	assert.Equal(t, "failed", last.Details[DetailStep])
	assert.Contains(t, last.Details[DetailReason], "artifact integrity check failed (nothing was installed)")
	assert.Contains(t, last.Details[DetailReason], want)
	assert.Contains(t, last.Details[DetailReason], testenv.FileSHA256(t, art))
	assert.NotContains(t, r.calls(), "install")
	_, installed := r.installed()
	assert.False(t, installed)
	entries, err := os.ReadDir(d.stateDir)
	require.NoError(t, err)
	for _, e := range entries {
		assert.False(t, strings.HasPrefix(e.Name(), "ota-artifact"), "no download left behind: %s", e.Name())
	}
}

// TestRealMenderResumesAfterCommit: the agent died right after the real
// client's commit took effect (state still committing): on restart commit
// says "nothing to commit" (exit 2), show-artifact names the new artifact,
// and the job SUCCEEDS.
func TestRealMenderResumesAfterCommit(t *testing.T) {
	r := newRealMender(t)
	art := r.artifact("rpi-2027.01", "release 2027.01\n", r.ReleaseKey)
	base, host := testenv.ServeFiles(t, map[string]string{"a.mender": art})
	d := r.device(t, host)
	job := Job{ID: "real-commit-crash", Document: Document{URL: base + "a.mender"}}
	rep := d.reporter()
	require.ErrorIs(t, d.updater(nil).Run(testCtx(t), job, rep), ErrRebootPending)
	d.reboot()

	// What the agent persisted before running commit, then the commit
	// itself; the agent dies before it records the result.
	st := rep.state(t)
	require.Equal(t, "rpi-initial", st.OldArtifact)
	st.Step, st.Reported = StepCommitting, true
	b, err := encodeState(st)
	require.NoError(t, err)
	require.NoError(t, rep.SaveState(testCtx(t), b))
	run(t, r.Wrapper, "commit")

	require.NoError(t, d.updater(nil).Run(testCtx(t), job, rep))
	last := rep.last()
	assert.Equal(t, protocol.JobSucceeded, last.Status, "%v", rep.steps())
	assert.Equal(t, "committed", last.Details[DetailStep])
	for _, s := range rep.steps() {
		assert.NotContains(t, s, "FAILED")
	}
	assert.Equal(t, "rpi-2027.01", r.showArtifact())
}

func TestCheckVerifyKey(t *testing.T) {
	testenv.NeedRealMender(t)
	dir := t.TempDir()
	priv := filepath.Join(dir, "k")
	run(t, "openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", priv)
	b, err := os.ReadFile(priv)
	require.NoError(t, err)
	assert.ErrorContains(t, CheckVerifyKey(b), "never a private key")
	assert.ErrorContains(t, CheckVerifyKey([]byte("ArtifactVerifyKey")), "no PEM block")
	assert.ErrorContains(t, CheckVerifyKeyFile(filepath.Join(dir, "missing.pem")), "no such file")
	rsa := filepath.Join(dir, "rsa1024")
	run(t, "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", rsa)
	pub := run(t, "openssl", "pkey", "-in", rsa, "-pubout")
	assert.ErrorContains(t, CheckVerifyKey([]byte(pub)), "at least 2048")
}

// TestMissingVerifyKeyFailsClosed: with ota.artifactVerifyKey set and the
// key file gone, no install is attempted.
func TestMissingVerifyKeyFailsClosed(t *testing.T) {
	d := newDevice(t, "mender", fakeScenario{})
	rep := d.reporter()
	u := d.updater(func(c *Config) { c.ArtifactVerifyKey = filepath.Join(t.TempDir(), "artifact-verify-key.pem") })
	require.NoError(t, u.Run(testCtx(t), testJob("no-key"), rep))
	assert.Equal(t, protocol.JobFailed, rep.last().Status)
	assert.Contains(t, rep.last().Details[DetailReason], "refusing to install: artifact verify key")
	assert.Empty(t, d.mender.ops())
}
