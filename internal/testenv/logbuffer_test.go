package testenv

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLogBufferConcurrentWrites(t *testing.T) {
	var b LogBuffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 100 {
				_, err := fmt.Fprintf(&b, "w%d-%d\n", i, j)
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	require.Len(t, lines, 800)
	require.Contains(t, lines, "w7-99")
}

func TestLogBufferJSONLines(t *testing.T) {
	var b LogBuffer
	log := slog.New(slog.NewJSONHandler(&b, nil))
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log.Info("hello", "n", i)
		}()
	}
	wg.Wait()
	lines := b.JSONLines(t)
	require.Len(t, lines, 4)
	for _, l := range lines {
		assert.Equal(t, "hello", l["msg"])
	}
	assert.Contains(t, b.String(), `"msg":"hello"`)
	assert.Empty(t, (&LogBuffer{}).JSONLines(t))
}

func TestLogBufferCountJSON(t *testing.T) {
	var b LogBuffer
	log := slog.New(slog.NewJSONHandler(&b, nil))
	log.Info("connect refused", "client", "a", "status", "REVOKED")
	log.Info("connect refused", "client", "a", "status", "INACTIVE")
	log.Info("connect refused", "client", "b", "status", "REVOKED")
	log.Info("connected", "client", "a")
	_, err := b.Write([]byte("not json: connect refused\n{\"msg\":\"connect ref"))
	require.NoError(t, err)

	assert.Equal(t, 3, b.CountJSON("connect refused", nil))
	assert.Equal(t, 2, b.CountJSON("connect refused", map[string]string{"client": "a"}))
	assert.Equal(t, 1, b.CountJSON("connect refused", map[string]string{"client": "a", "status": "REVOKED"}))
	assert.Equal(t, 0, b.CountJSON("connect refused", map[string]string{"client": "c"}))
	assert.Equal(t, 1, b.CountJSON("connected", nil))
	assert.Equal(t, 0, b.CountJSON("connect ref", nil), "a partial line is skipped")
}
