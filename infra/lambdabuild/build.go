// Package lambdabuild builds a Go Lambda for the provided.al2023 arm64
// runtime and packages it as a deterministic zip holding one file,
// "bootstrap". Building the same source twice gives the same bytes, so the
// zip's hash only changes when the code does and an unchanged Lambda is not
// redeployed.
package lambdabuild

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
)

// Spec says what to build.
type Spec struct {
	// Name names the artifact: the zip is <OutDir>/<Name>.zip.
	Name string
	// ModuleDir is the directory `go build` runs in (a directory of the Go
	// module that holds Package).
	ModuleDir string
	// Package is the main package to build: an import path or a path
	// relative to ModuleDir ("./lambdas/cmd/preprovision").
	Package string
	// OutDir receives the zip; it is created if missing.
	OutDir string
	// GoBin is the go command; empty means "go" from PATH.
	GoBin string
}

// Artifact is a built Lambda package.
type Artifact struct {
	// ZipPath is the zip file.
	ZipPath string
	// SHA256 is the base64-encoded SHA-256 of the zip, the form Lambda's
	// source_code_hash uses.
	SHA256 string
	// Size is the zip's size in bytes.
	Size int64
}

// BootstrapName is the executable name provided.al2023 runs.
const BootstrapName = "bootstrap"

// Flags returns the go build arguments (without -o and the package).
func Flags() []string {
	return []string{
		"build",
		"-trimpath",
		"-buildvcs=false",
		"-tags", "lambda.norpc",
		"-ldflags", "-s -w -buildid=",
	}
}

// Env returns the environment of the go build: the caller's environment
// with the target platform forced.
func Env(base []string) []string {
	env := make([]string, 0, len(base)+3)
	for _, kv := range base {
		switch {
		case strings.HasPrefix(kv, "GOOS="), strings.HasPrefix(kv, "GOARCH="), strings.HasPrefix(kv, "CGO_ENABLED="):
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
}

// Build compiles spec.Package for linux/arm64 and writes the zip
// atomically.
func Build(ctx context.Context, spec Spec) (Artifact, error) {
	if spec.Name == "" || spec.ModuleDir == "" || spec.Package == "" || spec.OutDir == "" {
		return Artifact{}, errors.New("lambdabuild: Name, ModuleDir, Package and OutDir are required")
	}
	if strings.ContainsAny(spec.Name, `/\`) {
		return Artifact{}, fmt.Errorf("lambdabuild: name %q must not contain a path separator", spec.Name)
	}
	goBin := spec.GoBin
	if goBin == "" {
		goBin = "go"
	}
	work, err := os.MkdirTemp("", "lambdabuild-"+spec.Name+"-")
	if err != nil {
		return Artifact{}, fmt.Errorf("lambdabuild %s: temp dir: %w", spec.Name, err)
	}
	defer os.RemoveAll(work)

	bin := filepath.Join(work, BootstrapName)
	args := append(Flags(), "-o", bin, spec.Package)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = spec.ModuleDir
	cmd.Env = Env(os.Environ())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return Artifact{}, fmt.Errorf("lambdabuild %s: go build %s: %w\n%s", spec.Name, spec.Package, err, strings.TrimSpace(out.String()))
	}

	exe, err := os.ReadFile(bin)
	if err != nil {
		return Artifact{}, fmt.Errorf("lambdabuild %s: read binary: %w", spec.Name, err)
	}
	zipped, err := Zip(exe)
	if err != nil {
		return Artifact{}, fmt.Errorf("lambdabuild %s: %w", spec.Name, err)
	}
	if err := os.MkdirAll(spec.OutDir, 0o755); err != nil {
		return Artifact{}, fmt.Errorf("lambdabuild %s: out dir: %w", spec.Name, err)
	}
	zipPath := filepath.Join(spec.OutDir, spec.Name+".zip")
	if err := atomicfile.WriteFile(zipPath, zipped, 0o644); err != nil {
		return Artifact{}, fmt.Errorf("lambdabuild %s: %w", spec.Name, err)
	}
	sum := sha256.Sum256(zipped)
	return Artifact{ZipPath: zipPath, SHA256: base64.StdEncoding.EncodeToString(sum[:]), Size: int64(len(zipped))}, nil
}

// Zip returns a zip archive holding exactly one entry, "bootstrap", with
// mode 0755 and a fixed modification time. The same input always gives the
// same bytes.
func Zip(executable []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	zw.RegisterCompressor(zip.Deflate, func(w io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(w, flate.BestCompression)
	})
	// A fixed modification time (the earliest a zip can express) keeps
	// the bytes independent of when the build ran.
	modTime := time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	hdr := &zip.FileHeader{Name: BootstrapName, Method: zip.Deflate, Modified: modTime}
	hdr.SetMode(0o755)
	w, err := zw.CreateHeader(hdr)
	if err != nil {
		return nil, fmt.Errorf("zip: %w", err)
	}
	if _, err := w.Write(executable); err != nil {
		return nil, fmt.Errorf("zip: write %s: %w", BootstrapName, err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("zip: close: %w", err)
	}
	return buf.Bytes(), nil
}
