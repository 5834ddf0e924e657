package provision

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

const cpuinfo = `processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid

Hardware	: BCM2835
Revision	: c03111
Serial		: 10000000abcdef01
Model		: Raspberry Pi 4 Model B Rev 1.1
`

func TestReadSerial(t *testing.T) {
	dir := t.TempDir()
	dt := filepath.Join(dir, "serial-number")
	require.NoError(t, os.WriteFile(dt, []byte("00000000deadbeef\x00"), 0o444))
	ci := filepath.Join(dir, "cpuinfo")
	require.NoError(t, os.WriteFile(ci, []byte(cpuinfo), 0o444))
	noSerial := filepath.Join(dir, "cpuinfo-x86")
	require.NoError(t, os.WriteFile(noSerial, []byte("processor : 0\nmodel name : x\n"), 0o444))
	missing := filepath.Join(dir, "missing")
	pat := "^[0-9a-f]{16}$"

	s, err := ReadSerial("", []string{dt, ci}, pat)
	require.NoError(t, err)
	assert.Equal(t, "00000000deadbeef", s, "device tree first, leading zeros kept")

	s, err = ReadSerial("", []string{missing, noSerial, ci}, pat)
	require.NoError(t, err)
	assert.Equal(t, "10000000abcdef01", s)

	s, err = ReadSerial("0123456789abcdef", []string{dt}, pat)
	require.NoError(t, err)
	assert.Equal(t, "0123456789abcdef", s)

	_, err = ReadSerial("XYZ", nil, pat)
	require.ErrorContains(t, err, "does not match")
	_, err = ReadSerial("", []string{missing, noSerial}, pat)
	require.ErrorContains(t, err, "no serial")
	require.ErrorContains(t, err, "missing")
	_, err = ReadSerial("", nil, pat)
	require.Error(t, err)
	_, err = ReadSerial("", []string{dt}, "(")
	require.Error(t, err)
}
