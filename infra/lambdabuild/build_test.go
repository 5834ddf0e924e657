package lambdabuild

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/base64"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tinyModule writes a throwaway module with one main package and returns
// its directory.
func tinyModule(t *testing.T, greeting string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module example.com/tiny\n\ngo 1.22\n"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "cmd", "hello"), 0o755))
	src := "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(" + `"` + greeting + `"` + ") }\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cmd", "hello", "main.go"), []byte(src), 0o644))
	return dir
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestBuildIsReproducible(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	mod := tinyModule(t, "hello")

	first, err := Build(ctx, Spec{Name: "hello", ModuleDir: mod, Package: "./cmd/hello", OutDir: t.TempDir()})
	require.NoError(t, err)
	// A second build from another working directory and out dir, by
	// import path, must give the very same bytes.
	second, err := Build(ctx, Spec{Name: "hello", ModuleDir: filepath.Join(mod, "cmd"), Package: "example.com/tiny/cmd/hello", OutDir: t.TempDir()})
	require.NoError(t, err)

	a, err := os.ReadFile(first.ZipPath)
	require.NoError(t, err)
	b, err := os.ReadFile(second.ZipPath)
	require.NoError(t, err)
	require.True(t, bytes.Equal(a, b), "two builds of the same source differ")
	assert.Equal(t, first.SHA256, second.SHA256)

	sum := sha256.Sum256(a)
	assert.Equal(t, base64.StdEncoding.EncodeToString(sum[:]), first.SHA256, "SHA256 is the base64 sha256 of the zip file")
	assert.Equal(t, int64(len(a)), first.Size)
	assert.Equal(t, "hello.zip", filepath.Base(first.ZipPath))
}

func TestBuildZipHoldsOnlyAnArm64Bootstrap(t *testing.T) {
	t.Parallel()
	mod := tinyModule(t, "hi")
	art, err := Build(testContext(t), Spec{Name: "hello", ModuleDir: mod, Package: "./cmd/hello", OutDir: t.TempDir()})
	require.NoError(t, err)

	zr, err := zip.OpenReader(art.ZipPath)
	require.NoError(t, err)
	defer zr.Close()
	require.Len(t, zr.File, 1, "the zip must hold exactly one entry")
	f := zr.File[0]
	assert.Equal(t, "bootstrap", f.Name)
	assert.Equal(t, os.FileMode(0o755), f.Mode().Perm())
	assert.True(t, f.Mode().IsRegular())
	assert.Equal(t, time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC), f.Modified.UTC())

	rc, err := f.Open()
	require.NoError(t, err)
	exe, err := io.ReadAll(rc)
	require.NoError(t, rc.Close())
	require.NoError(t, err)
	ef, err := elf.NewFile(bytes.NewReader(exe))
	require.NoError(t, err, "bootstrap must be an ELF executable")
	assert.Equal(t, elf.EM_AARCH64, ef.Machine)
	assert.Equal(t, elf.ET_EXEC, ef.Type, "static, non-PIE executable (CGO_ENABLED=0)")
	assert.Nil(t, ef.Section(".interp"), "no dynamic loader: the binary must be static")
	assert.Nil(t, ef.Section(".symtab"), "symbols must be stripped (-s)")
	assert.NotContains(t, string(exe), mod, "no build paths (-trimpath)")
}

func TestBuildChangesWithSource(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, err := Build(ctx, Spec{Name: "x", ModuleDir: tinyModule(t, "one"), Package: "./cmd/hello", OutDir: t.TempDir()})
	require.NoError(t, err)
	b, err := Build(ctx, Spec{Name: "x", ModuleDir: tinyModule(t, "two"), Package: "./cmd/hello", OutDir: t.TempDir()})
	require.NoError(t, err)
	assert.NotEqual(t, a.SHA256, b.SHA256)
}

func TestBuildReportsCompilerErrors(t *testing.T) {
	t.Parallel()
	mod := tinyModule(t, "x")
	require.NoError(t, os.WriteFile(filepath.Join(mod, "cmd", "hello", "main.go"), []byte("package main\n\nfunc main() { undefinedThing() }\n"), 0o644))
	out := t.TempDir()
	_, err := Build(testContext(t), Spec{Name: "broken", ModuleDir: mod, Package: "./cmd/hello", OutDir: out})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "undefinedThing", "the compiler's message is in the error")
	assert.Contains(t, err.Error(), "broken")
	_, statErr := os.Stat(filepath.Join(out, "broken.zip"))
	assert.True(t, os.IsNotExist(statErr), "a failed build leaves no zip")
}

func TestBuildKeepsPreviousZipOnFailure(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	mod := tinyModule(t, "ok")
	out := t.TempDir()
	good, err := Build(ctx, Spec{Name: "fn", ModuleDir: mod, Package: "./cmd/hello", OutDir: out})
	require.NoError(t, err)
	before, err := os.ReadFile(good.ZipPath)
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(filepath.Join(mod, "cmd", "hello", "main.go"), []byte("package main\n\nfunc main() { nope( }\n"), 0o644))
	_, err = Build(ctx, Spec{Name: "fn", ModuleDir: mod, Package: "./cmd/hello", OutDir: out})
	require.Error(t, err)
	after, err := os.ReadFile(good.ZipPath)
	require.NoError(t, err)
	assert.Equal(t, before, after)
}

func TestBuildRejectsBadSpec(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	for name, spec := range map[string]Spec{
		"no name":      {ModuleDir: ".", Package: "./x", OutDir: "."},
		"no package":   {Name: "a", ModuleDir: ".", OutDir: "."},
		"no out dir":   {Name: "a", ModuleDir: ".", Package: "./x"},
		"no module":    {Name: "a", Package: "./x", OutDir: "."},
		"path in name": {Name: "../a", ModuleDir: ".", Package: "./x", OutDir: "."},
	} {
		_, err := Build(ctx, spec)
		assert.Error(t, err, name)
	}
}

func TestZipIsDeterministic(t *testing.T) {
	t.Parallel()
	payload := bytes.Repeat([]byte("bootstrap bytes "), 4096)
	a, err := Zip(payload)
	require.NoError(t, err)
	b, err := Zip(payload)
	require.NoError(t, err)
	assert.Equal(t, a, b)

	zr, err := zip.NewReader(bytes.NewReader(a), int64(len(a)))
	require.NoError(t, err)
	require.Len(t, zr.File, 1)
	rc, err := zr.File[0].Open()
	require.NoError(t, err)
	got, err := io.ReadAll(rc)
	require.NoError(t, err)
	assert.Equal(t, payload, got)
}

func TestEnvForcesTarget(t *testing.T) {
	t.Parallel()
	env := Env([]string{"GOOS=windows", "GOARCH=386", "CGO_ENABLED=1", "HOME=/h"})
	assert.ElementsMatch(t, []string{"HOME=/h", "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0"}, env)
}
