package harness

import (
	"context"
	"log/slog"
	"maps"
	"sync"
)

// CloudLog keeps the cloud side's log records (pass Logger() as
// Options.Logger) so that a test can count what the local IoT Core saw: a
// provisioning request rejected for a client, a refused CONNECT.
type CloudLog struct {
	mu      sync.Mutex
	records []LogRecord
}

// LogRecord is one log line: its message and attributes (as text).
type LogRecord struct {
	Msg   string
	Attrs map[string]string
}

// NewCloudLog returns an empty CloudLog.
func NewCloudLog() *CloudLog { return &CloudLog{} }

// Logger is a logger whose records l keeps (every level).
func (l *CloudLog) Logger() *slog.Logger { return slog.New(&cloudLogHandler{log: l}) }

// Count counts the records with message msg whose attributes include
// every key and value of attrs.
func (l *CloudLog) Count(msg string, attrs map[string]string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.records {
		if r.Msg != msg {
			continue
		}
		match := true
		for k, v := range attrs {
			if r.Attrs[k] != v {
				match = false
				break
			}
		}
		if match {
			n++
		}
	}
	return n
}

type cloudLogHandler struct {
	log   *CloudLog
	attrs map[string]string
}

func (h *cloudLogHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *cloudLogHandler) Handle(_ context.Context, r slog.Record) error {
	attrs := maps.Clone(h.attrs)
	if attrs == nil {
		attrs = map[string]string{}
	}
	r.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	h.log.mu.Lock()
	h.log.records = append(h.log.records, LogRecord{Msg: r.Message, Attrs: attrs})
	h.log.mu.Unlock()
	return nil
}

func (h *cloudLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	attrs := maps.Clone(h.attrs)
	if attrs == nil {
		attrs = map[string]string{}
	}
	for _, a := range as {
		attrs[a.Key] = a.Value.String()
	}
	return &cloudLogHandler{log: h.log, attrs: attrs}
}

// WithGroup keeps the attributes flat: the counts match on keys only.
func (h *cloudLogHandler) WithGroup(string) slog.Handler { return h }
