package testenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// RealMender runs Debian's mender client 3.4 (/usr/bin/mender) for tests:
// its own configuration (ArtifactVerifyKey) and data directory, in a
// private mount namespace where Dir/etc-mender is bind-mounted on
// /etc/mender (mender 3.4 reads the running artifact's name from
// /etc/mender/artifact_info and no option changes that): nothing outside
// Dir is touched. Artifacts are update-module artifacts for mender's own
// single-file module, which installs their payload into Dest. Needs root,
// util-linux's unshare and mount, openssl and mender-artifact.
type RealMender struct {
	Dir string
	// Wrapper is the executable to use as the mender client (the agent's
	// ota.menderPath); it logs each call's arguments to CallsLog.
	Wrapper  string
	CallsLog string
	// VerifyKey is the public key mender checks signatures with;
	// ReleaseKey the private key that signs release artifacts, OtherKey a
	// private key the device does not trust.
	VerifyKey, ReleaseKey, OtherKey string
	// Dest is where installed payloads go.
	Dest string
	// DeviceType is the device type mender and the artifacts use.
	DeviceType string
}

// RealMenderMissing says why the real client cannot run here, or "".
func RealMenderMissing() string {
	for _, tool := range []string{"/usr/bin/mender", "mender-artifact", "openssl", "unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " is not installed (make tools installs mender-client, mender-artifact and openssl)"
		}
	}
	if os.Geteuid() != 0 {
		return "the real mender client runs in a private mount namespace: needs root"
	}
	return ""
}

// NeedRealMender skips t when the real client cannot run here, and fails
// it in CI, where make tools installs everything.
func NeedRealMender(t testing.TB) {
	t.Helper()
	if why := RealMenderMissing(); why != "" {
		if os.Getenv("CI") != "" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
}

// NewRealMender prepares the client in dir: keys (openssl, ECDSA P-256 in
// the SEC1 form mender-artifact reads, as the release flow documents),
// configuration, data dir and wrapper.
func NewRealMender(ctx context.Context, dir string) (*RealMender, error) {
	r := &RealMender{Dir: dir, VerifyKey: filepath.Join(dir, "artifact-verify-key.pem"), ReleaseKey: filepath.Join(dir, "release.key"),
		OtherKey: filepath.Join(dir, "other.key"), Dest: filepath.Join(dir, "dest"), Wrapper: filepath.Join(dir, "bin", "mender"),
		CallsLog: filepath.Join(dir, "calls.log"), DeviceType: "raspberrypi4"}
	etc, data := filepath.Join(dir, "etc-mender"), filepath.Join(dir, "data")
	for _, d := range []string{etc, data, r.Dest, filepath.Dir(r.Wrapper)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("real mender: %w", err)
		}
	}
	for _, key := range []string{r.ReleaseKey, r.OtherKey} {
		if err := runTool(ctx, "openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", key); err != nil {
			return nil, err
		}
	}
	if err := runTool(ctx, "openssl", "ec", "-in", r.ReleaseKey, "-pubout", "-out", r.VerifyKey); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "mender.conf")
	files := map[string]string{
		filepath.Join(etc, "artifact_info"): "artifact_name=rpi-initial\n",
		filepath.Join(data, "device_type"):  "device_type=" + r.DeviceType + "\n",
		conf:                                fmt.Sprintf("{\"ArtifactVerifyKey\": %q}\n", r.VerifyKey),
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return nil, fmt.Errorf("real mender: %w", err)
		}
	}
	script := `#!/bin/sh
echo "$*" >> "` + r.CallsLog + `"
exec unshare --mount --propagation private /bin/sh -c 'mount --bind "$0" /etc/mender && c="$1" d="$2" && shift 2 && exec /usr/bin/mender --no-syslog --config "$c" --data "$d" "$@"' "` + etc + `" "` + conf + `" "` + data + `" "$@"
`
	if err := os.WriteFile(r.Wrapper, []byte(script), 0o700); err != nil {
		return nil, fmt.Errorf("real mender: %w", err)
	}
	return r, nil
}

// Artifact writes a single-file artifact named name with content, signed
// with key ("" for an unsigned one), and returns its path.
func (r *RealMender) Artifact(ctx context.Context, name, content, key string) (string, error) {
	src := filepath.Join(r.Dir, "src-"+name)
	if err := os.MkdirAll(src, 0o700); err != nil {
		return "", fmt.Errorf("artifact %s: %w", name, err)
	}
	out := filepath.Join(r.Dir, name+".mender")
	args := []string{"write", "module-image", "-T", "single-file", "-n", name, "-t", r.DeviceType, "-o", out}
	for _, f := range []struct{ name, content string }{{"dest_dir", r.Dest}, {"filename", "release.txt"}, {"permissions", "0644"}, {"release.txt", content}} {
		p := filepath.Join(src, f.name)
		if err := os.WriteFile(p, []byte(f.content), 0o600); err != nil {
			return "", fmt.Errorf("artifact %s: %w", name, err)
		}
		args = append(args, "-f", p)
	}
	if key != "" {
		args = append(args, "-k", key)
	}
	if err := runTool(ctx, "mender-artifact", args...); err != nil {
		return "", err
	}
	return out, nil
}

// Installed returns the installed payload, if any.
func (r *RealMender) Installed() (string, bool, error) {
	b, err := os.ReadFile(filepath.Join(r.Dest, "release.txt"))
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	return string(b), err == nil, err
}

// ShowArtifact is what `mender show-artifact` prints.
func (r *RealMender) ShowArtifact(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, r.Wrapper, "show-artifact").Output()
	if err != nil {
		return "", fmt.Errorf("mender show-artifact: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Calls returns the mender subcommands run through Wrapper, in order
// (version probes left out).
func (r *RealMender) Calls() ([]string, error) {
	b, err := os.ReadFile(r.CallsLog)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l != "--version" {
			out = append(out, strings.Fields(l)[0])
		}
	}
	return out, nil
}

// ServeFiles serves files (name → path) over HTTP on 127.0.0.1 under
// /artifacts/ and returns the base URL and its host:port.
func ServeFiles(t testing.TB, files map[string]string) (string, string) {
	t.Helper()
	mux := http.NewServeMux()
	for name, path := range files {
		mux.HandleFunc("/artifacts/"+name, func(w http.ResponseWriter, req *http.Request) { http.ServeFile(w, req, path) })
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL + "/artifacts/", strings.TrimPrefix(srv.URL, "http://")
}

// FileSHA256 is the hex SHA-256 of the file at path.
func FileSHA256(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func runTool(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
