package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/iot-fleet/iot-fleet/device/config"
)

// Reconfigure edits the agent's configuration file (validated, as
// NewAgent writes it). Call it while the agent is stopped.
func (a *Agent) Reconfigure(edit func(*config.Config)) error {
	cfg, err := config.Load(a.ConfigFile)
	if err != nil {
		return fmt.Errorf("agent %s: %w", a.Serial, err)
	}
	edit(&cfg)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("agent %s: %w", a.Serial, err)
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("agent %s: %w", a.Serial, err)
	}
	return os.WriteFile(a.ConfigFile, b, 0o600)
}

// WaitCommitTookEffect waits until the fake mender (scenario
// {"hangAfterCommit": true}) committed the update and hangs, and returns
// the pid of that hanging mender process (in its own process group: a kill
// of the agent's group does not stop it).
func (d *OTADevice) WaitCommitTookEffect(ctx context.Context) (int, error) {
	marker := filepath.Join(d.MenderDir, "commit.done")
	var pid int
	err := Poll(ctx, d.Serial+": fake mender commit", func() bool {
		b, err := os.ReadFile(marker)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	return pid, err
}

// RealMender runs Debian's mender client 3.4 (/usr/bin/mender) for an
// agent: its own configuration (ArtifactVerifyKey) and data directory, in
// a private mount namespace where Dir/etc-mender is bind-mounted on
// /etc/mender (mender 3.4 reads the running artifact's name from
// /etc/mender/artifact_info): nothing outside Dir is touched. Artifacts
// are update-module artifacts for mender's own single-file module, which
// installs their payload into Dest. Needs root and util-linux's unshare.
type RealMender struct {
	Dir string
	// Wrapper is the executable to configure as ota.menderPath.
	Wrapper string
	// VerifyKey is the public key mender checks signatures with.
	VerifyKey string
	// ReleaseKey is the private key that signs release artifacts.
	ReleaseKey string
	// Dest is where installed payloads go.
	Dest string
	// DeviceType is the device type mender and the artifacts use.
	DeviceType string
}

// RealMenderAvailable says why the real client cannot run here, or "".
func RealMenderAvailable() string {
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

// NewRealMender prepares the client in dir: keys (openssl, ECDSA P-256 as
// the release flow documents), configuration, data dir and wrapper.
func NewRealMender(ctx context.Context, dir string) (*RealMender, error) {
	r := &RealMender{Dir: dir, VerifyKey: filepath.Join(dir, "artifact-verify-key.pem"), ReleaseKey: filepath.Join(dir, "release.key"),
		Dest: filepath.Join(dir, "dest"), Wrapper: filepath.Join(dir, "bin", "mender"), DeviceType: "raspberrypi4"}
	etc, data := filepath.Join(dir, "etc-mender"), filepath.Join(dir, "data")
	for _, d := range []string{etc, data, r.Dest, filepath.Dir(r.Wrapper)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("real mender: %w", err)
		}
	}
	if err := runTool(ctx, "openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", r.ReleaseKey); err != nil {
		return nil, err
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
exec unshare --mount --propagation private /bin/sh -c 'mount --bind "$0" /etc/mender && c="$1" d="$2" && shift 2 && exec /usr/bin/mender --no-syslog --config "$c" --data "$d" "$@"' "` + etc + `" "` + conf + `" "` + data + `" "$@"
`
	if err := os.WriteFile(r.Wrapper, []byte(script), 0o700); err != nil {
		return nil, fmt.Errorf("real mender: %w", err)
	}
	return r, nil
}

// Artifact writes a single-file artifact named name with content; signed
// artifacts are signed with ReleaseKey.
func (r *RealMender) Artifact(ctx context.Context, name, content string, signed bool) (string, error) {
	src := filepath.Join(r.Dir, "src-"+name)
	if err := os.MkdirAll(src, 0o700); err != nil {
		return "", fmt.Errorf("artifact %s: %w", name, err)
	}
	args := []string{"write", "module-image", "-T", "single-file", "-n", name, "-t", r.DeviceType, "-o", filepath.Join(r.Dir, name+".mender")}
	for _, f := range []struct{ name, content string }{{"dest_dir", r.Dest}, {"filename", "release.txt"}, {"permissions", "0644"}, {"release.txt", content}} {
		p := filepath.Join(src, f.name)
		if err := os.WriteFile(p, []byte(f.content), 0o600); err != nil {
			return "", fmt.Errorf("artifact %s: %w", name, err)
		}
		args = append(args, "-f", p)
	}
	if signed {
		args = append(args, "-k", r.ReleaseKey)
	}
	if err := runTool(ctx, "mender-artifact", args...); err != nil {
		return "", err
	}
	return filepath.Join(r.Dir, name+".mender"), nil
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

func runTool(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
