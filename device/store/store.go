// Package store keeps the agent's small persistent state under one
// directory (by default /var/lib/fleet-agent). Every file is written
// atomically (temp file, fsync, rename, fsync of the directory) so a power
// loss leaves either the old or the new content.
//
// Layout of the state directory:
//
//	identity.json     the provisioned identity (thing name, cert and key file)
//	provision.json    progress of provisioning by claim (absent once done)
//	certs/            private keys (0600) and certificates
//	outbox/           durable queue of outgoing messages (package outbox)
//	jobs/             the jobs engine's state (package jobs)
//
// Other features (OTA, certificate rotation, SSM) keep their own JSON files
// or sub-directories here through ReadJSON, WriteJSON and SubDir.
package store

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/device/devkey"
	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
)

// File and directory names inside the state directory.
const (
	IdentityFile  = "identity.json"
	ProvisionFile = "provision.json"
	CertsDir      = "certs"
	OutboxDir     = "outbox"
	JobsDir       = "jobs"
)

// Store is the agent's state directory.
type Store struct {
	dir string
}

// Open creates dir (mode 0700) if needed and returns its Store.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("open state dir: empty path")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open state dir %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("open state dir: %w", err)
	}
	s := &Store{dir: abs}
	if _, err := s.SubDir(CertsDir); err != nil {
		return nil, err
	}
	return s, nil
}

// Dir is the absolute path of the state directory.
func (s *Store) Dir() string { return s.dir }

// Path resolves a path relative to the state directory; absolute paths are
// returned unchanged.
func (s *Store) Path(rel string) string {
	if filepath.IsAbs(rel) {
		return rel
	}
	return filepath.Join(s.dir, rel)
}

// SubDir creates (mode 0700) and returns the absolute path of a
// sub-directory of the state directory.
func (s *Store) SubDir(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	p := filepath.Join(s.dir, name)
	if err := os.MkdirAll(p, 0o700); err != nil {
		return "", fmt.Errorf("state dir: create %s: %w", name, err)
	}
	return p, nil
}

func checkName(name string) error {
	if name == "" || filepath.IsAbs(name) || strings.Contains(name, "..") {
		return fmt.Errorf("state dir: invalid name %q", name)
	}
	return nil
}

// ReadJSON decodes the JSON file name into v. It returns found=false, and
// no error, if the file does not exist.
func (s *Store) ReadJSON(name string, v any) (found bool, err error) {
	if err := checkName(name); err != nil {
		return false, err
	}
	data, err := os.ReadFile(filepath.Join(s.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("state dir: read %s: %w", name, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return true, fmt.Errorf("state dir: decode %s: %w", name, err)
	}
	return true, nil
}

// WriteJSON atomically replaces the file name with v encoded as JSON
// (mode 0600).
func (s *Store) WriteJSON(name string, v any) error {
	if err := checkName(name); err != nil {
		return err
	}
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("state dir: encode %s: %w", name, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(s.dir, name), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return nil
}

// WriteFile atomically writes raw data to name with mode perm.
func (s *Store) WriteFile(name string, data []byte, perm os.FileMode) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(s.dir, name), data, perm); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return nil
}

// Remove deletes the file name (no error if it does not exist) and makes
// the removal durable.
func (s *Store) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	p := filepath.Join(s.dir, name)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state dir: remove %s: %w", name, err)
	}
	return atomicfile.SyncDir(filepath.Dir(p))
}

// Identity is the device's provisioned identity. CertFile and KeyFile are
// relative to the state directory (or absolute).
type Identity struct {
	ThingName     string    `json:"thingName"`
	Serial        string    `json:"serial,omitempty"`
	CertificateID string    `json:"certificateId,omitempty"`
	CertFile      string    `json:"certFile"`
	KeyFile       string    `json:"keyFile"`
	ProvisionedAt time.Time `json:"provisionedAt"`
}

// Identity returns the stored identity, found=false if the device has not
// been provisioned yet.
func (s *Store) Identity() (id Identity, found bool, err error) {
	found, err = s.ReadJSON(IdentityFile, &id)
	if err != nil || !found {
		return Identity{}, found, err
	}
	if id.ThingName == "" || id.CertFile == "" || id.KeyFile == "" {
		return Identity{}, true, fmt.Errorf("state dir: %s: thingName, certFile and keyFile are required", IdentityFile)
	}
	return id, true, nil
}

// SaveIdentity checks that the certificate and key files of id exist and
// belong together, then atomically records id as the device identity.
func (s *Store) SaveIdentity(id Identity) error {
	if id.ThingName == "" {
		return errors.New("save identity: empty thing name")
	}
	if _, err := s.TLSCertificate(id); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	return s.WriteJSON(IdentityFile, id)
}

// TLSCertificate loads the key pair of id for a TLS client.
func (s *Store) TLSCertificate(id Identity) (tls.Certificate, error) {
	keyPath, certPath := s.Path(id.KeyFile), s.Path(id.CertFile)
	key, err := devkey.Load(keyPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate: %w", err)
	}
	leaf, err := devkey.ParseCertificatePEM(certPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate %s: %w", certPath, err)
	}
	if !devkey.Matches(leaf, key) {
		return tls.Certificate{}, fmt.Errorf("certificate %s does not match key %s", certPath, keyPath)
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}, nil
}
