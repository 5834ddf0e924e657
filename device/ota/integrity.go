package ota

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"context"
)

// downloadFileName is where an artifact with a sha256 is downloaded, in the
// state directory (0700; the file is 0600 and removed after the install).
const downloadFileName = "ota-artifact.mender"

// IntegrityError is an artifact that is not the one the job document
// names: its SHA-256 differs. The job fails at once and nothing is
// installed.
type IntegrityError struct {
	Want, Got string
	Size      int64
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("artifact integrity check failed (nothing was installed): the downloaded file (%d bytes) has SHA-256 %s, the job document's sha256 is %s", e.Size, e.Got, e.Want)
}

// defaultHTTPClient downloads artifacts: system roots, no redirects (the
// allowed host must serve the artifact itself), proxies from the
// environment as mender does.
func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 2 * time.Minute
	return &http.Client{
		Transport: t,
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			return fmt.Errorf("redirect to %s refused: artifacts are downloaded from the allowed host only", RedactURL(req.URL.String()))
		},
	}
}

// download fetches st.URL into the state directory while hashing it, and
// returns the file's path once its SHA-256 equals st.SHA256. A mismatch is
// an *IntegrityError and leaves no file behind.
func (u *Updater) download(ctx context.Context, st *State) (string, error) {
	path := filepath.Join(u.cfg.StateDir, downloadFileName)
	part := path + ".part"
	// An attempt interrupted by a power cut or a kill leaves its download
	// behind (the artifact mender was reading, or a partial one). Remove
	// both before downloading again: the state directory's file system
	// may hold one artifact, not two (the virtual Pi's 256 MiB data
	// partition ran out of space this way).
	for _, f := range []string{path, part} {
		if err := os.Remove(f); err == nil {
			u.log.Info("ota: removed the download of an interrupted attempt", "job", st.JobID, "file", f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("download artifact: remove the previous download: %w", err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, st.URL, nil)
	if err != nil {
		return "", fmt.Errorf("download artifact: %s", redactURLError(err))
	}
	resp, err := u.cfg.HTTPClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("download artifact: %s", redactURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("download artifact: HTTP %s", resp.Status)
	}
	f, err := os.OpenFile(part, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("download artifact: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), resp.Body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(part)
		return "", fmt.Errorf("download artifact: after %d bytes: %s", n, redactURLError(err))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != st.SHA256 {
		_ = os.Remove(part)
		return "", &IntegrityError{Want: st.SHA256, Got: got, Size: n}
	}
	if err := os.Rename(part, path); err != nil {
		_ = os.Remove(part)
		return "", fmt.Errorf("download artifact: %w", err)
	}
	u.log.Info("ota: artifact downloaded and its sha256 checked", "job", st.JobID, "bytes", n)
	return path, nil
}

// checkVerifyKey checks that the public key mender verifies artifact
// signatures with is in place (fail closed: mender without it installs
// unsigned artifacts).
func (u *Updater) checkVerifyKey() error {
	if u.cfg.ArtifactVerifyKey == "" {
		return nil
	}
	if err := CheckVerifyKeyFile(u.cfg.ArtifactVerifyKey); err != nil {
		return fmt.Errorf("refusing to install: %w", err)
	}
	return nil
}

// CheckVerifyKeyFile checks that path holds one PEM public key of a kind
// mender verifies signatures with (RSA of at least 2048 bits, ECDSA or
// Ed25519), and no private key.
func CheckVerifyKeyFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("artifact verify key: %w", err)
	}
	return CheckVerifyKey(b)
}

// CheckVerifyKey is CheckVerifyKeyFile for the file's content.
func CheckVerifyKey(b []byte) error {
	block, rest := pem.Decode(b)
	if block == nil {
		return errors.New("artifact verify key: no PEM block")
	}
	if block.Type != "PUBLIC KEY" {
		return fmt.Errorf("artifact verify key: PEM block %q: want \"PUBLIC KEY\" (never a private key on a device)", block.Type)
	}
	if p, _ := pem.Decode(rest); p != nil {
		return fmt.Errorf("artifact verify key: a second PEM block %q follows the public key", p.Type)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return fmt.Errorf("artifact verify key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("artifact verify key: RSA key of %d bits: want at least 2048", k.N.BitLen())
		}
	case *ecdsa.PublicKey, ed25519.PublicKey:
	default:
		return fmt.Errorf("artifact verify key: unsupported key type %T", key)
	}
	return nil
}

// reRefusal matches mender's messages for an artifact it will not install:
// a missing or wrong signature, or a payload whose checksum does not match
// its signed manifest.
var reRefusal = regexp.MustCompile(`(?i)expecting signed artifact|invalid signature|verification failed|signature file|invalid checksum|checksum.*(mismatch|invalid)|artifact.*not signed`)

// menderRefusal returns mender's reason when err is mender refusing the
// artifact itself (not a download or installation failure), else "".
func menderRefusal(err error) string {
	var ce *CommandError
	if !errors.As(err, &ce) || ce.ExitCode <= 0 {
		return ""
	}
	if !reRefusal.MatchString(ce.Output) {
		return ""
	}
	return ce.Error()
}
