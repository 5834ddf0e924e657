// Package devicetest holds small helpers the device packages' tests share.
package devicetest

import (
	"bytes"
	"sync"
)

// LogBuffer collects output (logs, a process's stdout and stderr) written
// from several goroutines. The zero value is ready to use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
