package atomicfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWriteFileReplacesContentWithMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key.pem")
	require.NoError(t, WriteFile(p, []byte("old"), 0o600))
	require.NoError(t, WriteFile(p, []byte("new"), 0o600))

	got, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, "new", string(got))
	fi, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temp files are left behind")
}

func TestWriteFileMissingDirFailsWithoutPartialFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing", "state.json")
	err := WriteFile(p, []byte("x"), 0o644)
	require.Error(t, err)
	require.Contains(t, err.Error(), p)
	_, statErr := os.Stat(p)
	require.True(t, os.IsNotExist(statErr))
}
