// Package image is the recipe of the iot-fleet Raspberry Pi OS image: the
// rootfs overlay (first-boot unit and script, fleet-agent drop-in, SSH
// hardening), the boot-partition files, the Amazon root CA, the agent
// configuration template and manifest.txt, which says where each file goes
// with which mode and owner. They are embedded, so the image-inject tool is
// self-contained. Plan turns the manifest and the build inputs into an
// inject.Plan.
package image

import (
	"bufio"
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/iot-fleet/iot-fleet/device/image/inject"
)

//go:embed manifest.txt config.template.json certs/AmazonRootCA1.pem boot all:rootfs
var files embed.FS

// Files is the embedded recipe: manifest.txt, config.template.json, certs/,
// boot/ and rootfs/.
func Files() fs.FS { return files }

// Build inputs named by "input:NAME" in the manifest.
const (
	InputAgent          = "agent"               // fleet-agent binary (linux/arm64)
	InputAgentUnit      = "agent-unit"          // device/systemd/fleet-agent.service
	InputConfig         = "config"              // rendered agent configuration
	InputImageEnv       = "image-env"           // rendered /etc/fleet-agent/image.env
	InputClaimCert      = "claim-cert"          // claim certificate PEM
	InputClaimKey       = "claim-key"           // claim private key PEM
	InputAuthorizedKeys = "ssh-authorized-keys" // optional SSH public keys for user pi
	InputMenderConf     = "mender-conf"         // rendered /etc/mender/mender.conf (MenderConf)
	InputVerifyKey      = "artifact-verify-key" // PEM public key mender verifies artifacts with
	InputRootCA         = "root-ca"             // optional root CA instead of Amazon's (RootCAPath)
	InputFstab          = "fstab"               // A/B images: /etc/fstab with the state bind mount (StateFstab)
)

// EntryKind is the kind column of the manifest.
type EntryKind string

// Manifest kinds.
const (
	KindDir  EntryKind = "dir"
	KindFile EntryKind = "file"
	KindLink EntryKind = "link"
	KindBoot EntryKind = "boot"
)

// ManifestEntry is one line of manifest.txt.
type ManifestEntry struct {
	Line   int
	Kind   EntryKind
	Path   string
	Mode   fs.FileMode
	UID    uint32
	GID    uint32
	Source string // "-", "empty", "input:NAME", an embedded path, or a link target
	If     string // input that must be given for the entry to be written
}

// Input returns the input name of an "input:NAME" source, or "".
func (e ManifestEntry) Input() string {
	name, ok := strings.CutPrefix(e.Source, "input:")
	if !ok {
		return ""
	}
	return name
}

// Manifest is the parsed manifest.txt.
type Manifest struct {
	Entries []ManifestEntry
}

// LoadManifest parses the embedded manifest.txt.
func LoadManifest() (Manifest, error) {
	b, err := fs.ReadFile(files, "manifest.txt")
	if err != nil {
		return Manifest{}, fmt.Errorf("manifest: %w", err)
	}
	return ParseManifest(b)
}

// ParseManifest parses manifest text; errors name the line.
func ParseManifest(b []byte) (Manifest, error) {
	var m Manifest
	sc := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	seen := map[string]int{}
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		e, err := parseLine(n, strings.Fields(line))
		if err != nil {
			return Manifest{}, fmt.Errorf("manifest line %d: %w", n, err)
		}
		key := "root:" + e.Path
		if e.Kind == KindBoot {
			key = "boot:" + e.Path
		}
		if prev, dup := seen[key]; dup {
			return Manifest{}, fmt.Errorf("manifest line %d: %s is already listed on line %d", n, e.Path, prev)
		}
		seen[key] = n
		m.Entries = append(m.Entries, e)
	}
	if err := sc.Err(); err != nil {
		return Manifest{}, fmt.Errorf("manifest: %w", err)
	}
	if len(m.Entries) == 0 {
		return Manifest{}, fmt.Errorf("manifest: no entries")
	}
	return m, nil
}

func parseLine(n int, f []string) (ManifestEntry, error) {
	if len(f) != 5 && len(f) != 6 {
		return ManifestEntry{}, fmt.Errorf("want 5 or 6 fields (kind path mode owner source [if=INPUT]), got %d", len(f))
	}
	e := ManifestEntry{Line: n, Kind: EntryKind(f[0]), Path: f[1], Source: f[4]}
	switch e.Kind {
	case KindDir, KindFile, KindLink, KindBoot:
	default:
		return ManifestEntry{}, fmt.Errorf("kind %q: want dir, file, link or boot", f[0])
	}
	if !strings.HasPrefix(e.Path, "/") || path.Clean(e.Path) != e.Path || e.Path == "/" {
		return ManifestEntry{}, fmt.Errorf("path %q: want an absolute, clean path", e.Path)
	}
	if e.Kind == KindBoot && strings.Count(e.Path, "/") != 1 {
		return ManifestEntry{}, fmt.Errorf("boot path %q: only files at the top of the boot partition are supported", e.Path)
	}
	if e.Kind == KindDir || e.Kind == KindFile {
		mode, err := strconv.ParseUint(f[2], 8, 32)
		if err != nil || mode > 0o7777 {
			return ManifestEntry{}, fmt.Errorf("mode %q: want octal permission bits such as 0644", f[2])
		}
		e.Mode = fs.FileMode(mode)
	} else if f[2] != "-" {
		return ManifestEntry{}, fmt.Errorf("mode %q: %s entries take \"-\"", f[2], e.Kind)
	}
	if e.Kind == KindBoot {
		if f[3] != "-" {
			return ManifestEntry{}, fmt.Errorf("owner %q: boot (FAT) entries have no owner, use \"-\"", f[3])
		}
	} else {
		uid, gid, ok := strings.Cut(f[3], ":")
		u, err1 := strconv.ParseUint(uid, 10, 32)
		g, err2 := strconv.ParseUint(gid, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return ManifestEntry{}, fmt.Errorf("owner %q: want numeric uid:gid such as 0:0", f[3])
		}
		e.UID, e.GID = uint32(u), uint32(g)
	}
	switch e.Kind {
	case KindDir:
		if e.Source != "-" {
			return ManifestEntry{}, fmt.Errorf("source %q: dir entries take \"-\"", e.Source)
		}
	case KindLink:
		if !strings.HasPrefix(e.Source, "/") {
			return ManifestEntry{}, fmt.Errorf("link target %q: want an absolute path", e.Source)
		}
	case KindFile, KindBoot:
		if e.Source == "-" || (e.Input() == "" && strings.HasPrefix(e.Source, "input:")) {
			return ManifestEntry{}, fmt.Errorf("source %q: want a recipe path, input:NAME or empty", e.Source)
		}
		if e.Source != "empty" && e.Input() == "" {
			if _, err := fs.Stat(files, e.Source); err != nil {
				return ManifestEntry{}, fmt.Errorf("source %q: not in the embedded recipe: %w", e.Source, err)
			}
		}
	}
	if len(f) == 6 {
		cond, ok := strings.CutPrefix(f[5], "if=")
		if !ok || cond == "" {
			return ManifestEntry{}, fmt.Errorf("field 6 %q: want if=INPUT", f[5])
		}
		e.If = cond
	}
	return e, nil
}

// Inputs returns every input name the manifest uses, sorted, and which of
// them are optional (only used by entries guarded with if=).
func (m Manifest) Inputs() (all []string, optional map[string]bool) {
	used := map[string]bool{}
	optional = map[string]bool{}
	required := map[string]bool{}
	for _, e := range m.Entries {
		if in := e.Input(); in != "" {
			used[in] = true
			if e.If == in {
				optional[in] = true
			} else {
				required[in] = true
			}
		}
	}
	for in := range required {
		delete(optional, in)
	}
	for in := range used {
		all = append(all, in)
	}
	sort.Strings(all)
	return all, optional
}

// Plan resolves the manifest against the build inputs (input name -> host
// file). Embedded recipe files are written into stageDir (created 0700 by the
// caller) so the injector can read them from disk. Every input the manifest
// requires must be given; an input the manifest does not know is an error,
// so a typo cannot silently drop a file from the image.
func (m Manifest) Plan(inputs map[string]string, stageDir string) (inject.Plan, error) {
	all, _ := m.Inputs()
	known := map[string]bool{}
	for _, in := range all {
		known[in] = true
	}
	for in := range inputs {
		if !known[in] {
			return inject.Plan{}, fmt.Errorf("input %q: the manifest does not use it (known: %s)", in, strings.Join(all, ", "))
		}
	}
	var plan inject.Plan
	for i, e := range m.Entries {
		if e.If != "" {
			if _, given := inputs[e.If]; !given {
				continue
			}
		}
		src := ""
		switch {
		case e.Kind == KindDir || e.Kind == KindLink:
		case e.Input() != "":
			p, ok := inputs[e.Input()]
			if !ok || p == "" {
				return inject.Plan{}, fmt.Errorf("manifest line %d (%s): input %q is required", e.Line, e.Path, e.Input())
			}
			src = p
		default:
			var content []byte
			if e.Source != "empty" {
				b, err := fs.ReadFile(files, e.Source)
				if err != nil {
					return inject.Plan{}, fmt.Errorf("manifest line %d: %w", e.Line, err)
				}
				content = b
			}
			src = filepath.Join(stageDir, fmt.Sprintf("recipe-%03d", i))
			if err := os.WriteFile(src, content, 0o600); err != nil {
				return inject.Plan{}, fmt.Errorf("stage %s: %w", e.Source, err)
			}
		}
		switch e.Kind {
		case KindDir:
			plan.Root = append(plan.Root, inject.Entry{Kind: inject.KindDir, Path: e.Path, Mode: e.Mode, UID: e.UID, GID: e.GID})
		case KindFile:
			plan.Root = append(plan.Root, inject.Entry{Kind: inject.KindFile, Path: e.Path, Mode: e.Mode, UID: e.UID, GID: e.GID, Source: src})
		case KindLink:
			plan.Root = append(plan.Root, inject.Entry{Kind: inject.KindSymlink, Path: e.Path, UID: e.UID, GID: e.GID, Target: e.Source})
		case KindBoot:
			plan.Boot = append(plan.Boot, inject.BootFile{Name: strings.TrimPrefix(e.Path, "/"), Source: src})
		}
	}
	return plan, nil
}

// Find returns the manifest entry for a path in the root partition.
func (m Manifest) Find(p string) (ManifestEntry, bool) {
	for _, e := range m.Entries {
		if e.Kind != KindBoot && e.Path == p {
			return e, true
		}
	}
	return ManifestEntry{}, false
}

// ImageEnv renders /etc/fleet-agent/image.env, read (never sourced) by the
// first-boot script.
//
// serialFiles, when given, replace the Pi's serial sources for the
// first-boot script (FLEET_SERIAL_FILES, space-separated), as
// provisioning.serialFiles does for the agent.
func ImageEnv(environment, serialPattern, adminUser string, serialFiles ...string) ([]byte, error) {
	if environment == "" || strings.Trim(environment, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return nil, fmt.Errorf("environment %q: want [a-z0-9-]+", environment)
	}
	if strings.ContainsAny(serialPattern+adminUser, "\n\r") {
		return nil, fmt.Errorf("serial pattern and admin user must be single-line")
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by image-inject; read by /usr/local/lib/fleet-agent/firstboot.sh.\n")
	fmt.Fprintf(&b, "FLEET_ENV=%s\n", environment)
	if serialPattern != "" {
		fmt.Fprintf(&b, "FLEET_SERIAL_PATTERN=%s\n", serialPattern)
	}
	if adminUser != "" {
		fmt.Fprintf(&b, "FLEET_ADMIN_USER=%s\n", adminUser)
	}
	for _, f := range serialFiles {
		if !path.IsAbs(f) || path.Clean(f) != f || strings.ContainsAny(f, " \t\n\r\"'\\*?[") {
			return nil, fmt.Errorf("serial file %q: want an absolute, clean path without spaces, quotes or wildcards", f)
		}
	}
	if len(serialFiles) > 0 {
		fmt.Fprintf(&b, "FLEET_SERIAL_FILES=%s\n", strings.Join(serialFiles, " "))
	}
	return b.Bytes(), nil
}
