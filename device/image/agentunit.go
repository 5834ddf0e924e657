package image

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"debug/elf"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// CheckAgentUnit checks the agent's systemd unit against the manifest: its
// ExecStart= must start the binary where the manifest installs it, and every
// absolute path the unit names under /etc/fleet-agent must be a file the
// manifest installs. An image whose unit cannot find its binary or
// configuration fails the build instead of the device.
func CheckAgentUnit(unit []byte, m Manifest) error {
	var agentPath string
	for _, e := range m.Entries {
		if e.Input() == InputAgent {
			agentPath = e.Path
		}
	}
	if agentPath == "" {
		return errors.New("manifest installs no input:agent")
	}
	var execStarts []string
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok && v != "" {
			execStarts = append(execStarts, v)
		}
	}
	if len(execStarts) != 1 {
		return fmt.Errorf("agent unit: want exactly one non-empty ExecStart=, found %d", len(execStarts))
	}
	fields := strings.Fields(strings.TrimLeft(execStarts[0], "@-:+!"))
	if len(fields) == 0 || fields[0] != agentPath {
		return fmt.Errorf("agent unit: ExecStart=%s does not start %s, where the image installs the agent", execStarts[0], agentPath)
	}
	for _, f := range strings.Fields(string(unit)) {
		f = strings.Trim(f, `"'`)
		if i := strings.Index(f, "/etc/fleet-agent/"); i >= 0 {
			p := f[i:]
			if _, ok := m.Find(p); !ok {
				return fmt.Errorf("agent unit: names %s, which the image manifest does not install", p)
			}
		}
	}
	return nil
}

// CheckAgentBinary checks that the file is an ELF executable for the device
// architecture ("arm64" or "arm").
func CheckAgentBinary(p, arch string) error {
	want := map[string]elf.Machine{"arm64": elf.EM_AARCH64, "arm": elf.EM_ARM, "amd64": elf.EM_X86_64}
	m, ok := want[arch]
	if !ok {
		return fmt.Errorf("agent architecture %q: want arm64, arm or amd64", arch)
	}
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("agent binary %s: not an ELF file: %w", p, err)
	}
	defer f.Close()
	if f.Machine != m || f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("agent binary %s: %s %s, want an executable for %s (build with GOOS=linux GOARCH=%s)", p, f.Machine, f.Type, arch, arch)
	}
	return nil
}

// ClaimBundle is the JSON document in the claim certificate secret (Secrets
// Manager, written by infra/components/provisioning.go).
type ClaimBundle struct {
	CertificatePEM string `json:"certificatePem"`
	PrivateKey     string `json:"privateKey"`
}

// ParseClaimBundle reads the secret's JSON and checks that the key matches
// the certificate.
func ParseClaimBundle(b []byte) (ClaimBundle, error) {
	var c ClaimBundle
	if err := json.Unmarshal(b, &c); err != nil {
		// The error text of encoding/json never quotes the input.
		return ClaimBundle{}, fmt.Errorf("claim secret: not JSON: %w", err)
	}
	if c.CertificatePEM == "" || c.PrivateKey == "" {
		return ClaimBundle{}, errors.New("claim secret: certificatePem and privateKey are required")
	}
	if err := CheckClaimPair([]byte(c.CertificatePEM), []byte(c.PrivateKey)); err != nil {
		return ClaimBundle{}, err
	}
	return c, nil
}

// CheckClaimPair checks that cert is one PEM certificate and key the PEM
// private key that belongs to it. Errors never include key material.
func CheckClaimPair(cert, key []byte) error {
	if b, _ := pem.Decode(cert); b == nil || b.Type != "CERTIFICATE" {
		return errors.New("claim certificate: not a PEM CERTIFICATE")
	}
	if b, _ := pem.Decode(key); b == nil || !strings.HasSuffix(b.Type, "PRIVATE KEY") {
		return errors.New("claim private key: not a PEM private key")
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		return errors.New("claim certificate and private key do not form a key pair")
	}
	return nil
}

// CheckPrivateFile refuses a key file that others can read.
func CheckPrivateFile(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is mode %04o: private keys must be 0600 (chmod 600 %s)", p, st.Mode().Perm(), p)
	}
	return nil
}
