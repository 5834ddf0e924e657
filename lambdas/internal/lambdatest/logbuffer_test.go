package lambdatest

import (
	"log/slog"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
