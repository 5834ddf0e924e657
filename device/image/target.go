package image

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/image/inject"
)

// Where the agent's state lives. On an A/B image (inject.Layout.AB) the
// state directory is a bind mount of DataStateDir on the data partition
// (mounted at DataMount by the base image), so the device keeps its key,
// certificate and first-boot marker across full-system updates.
const (
	StateDir     = "/var/lib/fleet-agent"
	DataMount    = "/data"
	DataStateDir = "/fleet-agent" // on the data partition: /data/fleet-agent
	FstabPath    = "/etc/fstab"
)

// StateBindMount is the fstab line an A/B image gets.
const StateBindMount = DataMount + DataStateDir + " " + StateDir + " none bind,x-systemd.requires-mounts-for=" + DataMount + " 0 0"

// StateFstab returns the A/B image's /etc/fstab (base: the base image's)
// with the bind mount of the agent's state directory added. The base must
// mount the data partition at /data; a different mount already at the state
// directory is refused. Applying it twice changes nothing.
func StateFstab(base []byte) ([]byte, error) {
	haveData := false
	sc := bufio.NewScanner(bytes.NewReader(base))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) < 4 {
			return nil, fmt.Errorf("%s line %d: want at least 4 fields (device mountpoint type options), got %q", FstabPath, n, sc.Text())
		}
		switch path.Clean(f[1]) {
		case DataMount:
			haveData = true
		case StateDir:
			if strings.Join(f, " ") == StateBindMount {
				return base, nil
			}
			return nil, fmt.Errorf("%s line %d: %s is already a mount point (%q); the agent's state must be the bind mount %q", FstabPath, n, StateDir, sc.Text(), StateBindMount)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", FstabPath, err)
	}
	if !haveData {
		return nil, fmt.Errorf("%s of the A/B image does not mount the data partition at %s: the agent's state would not survive an update", FstabPath, DataMount)
	}
	out := bytes.Clone(base)
	if len(out) > 0 && !bytes.HasSuffix(out, []byte("\n")) {
		out = append(out, '\n')
	}
	out = append(out, "# fleet-agent: its key, certificate and first-boot marker survive A/B updates (image-inject).\n"...)
	out = append(out, StateBindMount+"\n"...)
	return out, nil
}

// DataPlan is what an A/B image gets on its data partition: the agent's
// state directory, private to root.
func DataPlan() []inject.Entry {
	return []inject.Entry{{Kind: inject.KindDir, Path: DataStateDir, Mode: 0o700}}
}

// Target describes where an image runs when that is not a Raspberry Pi
// talking to AWS IoT Core: the virtual Pi (QEMU) against the local IoT Core.
// The zero value changes nothing.
type Target struct {
	// Endpoint replaces the stack's iotDataEndpoint (the MQTT host).
	Endpoint string
	// Port replaces 8883.
	Port int
	// RootCAFile is the image path of a root CA installed instead of being
	// Amazon Root CA 1 (RootCAPath when the build gives -root-ca).
	RootCAFile string
	// SerialFiles replace the Pi's serial sources (device tree,
	// /proc/cpuinfo) for the agent and the first-boot script.
	SerialFiles []string
	// AllowedHosts replace the artifacts bucket's hosts in ota.allowedHosts.
	AllowedHosts []string
	// AllowHTTP sets ota.allowHTTP (plain-HTTP artifact URLs: local only).
	AllowHTTP bool
}

// RootCAPath is where a root CA given to the build (-root-ca) is installed.
const RootCAPath = "/etc/fleet-agent/root-ca.pem"

// ApplyTarget changes the rendered agent configuration for t and checks the
// result with the agent's own configuration rules.
func ApplyTarget(rendered []byte, t Target) ([]byte, error) {
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(rendered))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("agent configuration: %w", err)
	}
	section := func(name string) map[string]any {
		m, ok := doc[name].(map[string]any)
		if !ok {
			m = map[string]any{}
			doc[name] = m
		}
		return m
	}
	if t.Endpoint != "" {
		doc["endpoint"] = t.Endpoint
	}
	if t.Port != 0 {
		doc["port"] = t.Port
	}
	if t.RootCAFile != "" {
		doc["rootCAFile"] = t.RootCAFile
	}
	if t.SerialFiles != nil {
		for _, f := range t.SerialFiles {
			if !path.IsAbs(f) || path.Clean(f) != f || strings.ContainsAny(f, " \t\n\"'\\") {
				return nil, fmt.Errorf("serial file %q: want an absolute, clean path without spaces or quotes", f)
			}
		}
		section("provisioning")["serialFiles"] = slices.Clone(t.SerialFiles)
	}
	if t.AllowedHosts != nil {
		section("ota")["allowedHosts"] = slices.Clone(t.AllowedHosts)
	}
	if t.AllowHTTP {
		section("ota")["allowHTTP"] = true
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("agent configuration: %w", err)
	}
	if _, err := config.ParseValid(out); err != nil {
		return nil, fmt.Errorf("agent configuration for this target: %w", err)
	}
	return append(out, '\n'), nil
}

// CheckRootCA checks a root CA given to the build: one or more PEM
// certificates, each a CA, and nothing else (never a private key).
func CheckRootCA(b []byte) error {
	n := 0
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return errors.New("trailing data that is not PEM")
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q: want only CERTIFICATE blocks", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		if !cert.IsCA {
			return fmt.Errorf("certificate %d (%s) is not a CA certificate", n+1, cert.Subject)
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	return nil
}
