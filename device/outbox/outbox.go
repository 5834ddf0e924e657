// Package outbox is the agent's durable queue of outgoing MQTT messages.
//
// Enqueue (and Publish, which implements the jobs engine's Publisher
// contract) writes the message to its own file and fsyncs it before
// returning: once accepted, a message survives a crash or power loss. Run
// drains the queue strictly in order while the connection is up, publishing
// each message with QoS 1 and deleting it only after the broker's PUBACK.
//
// Delivery is at least once on the wire: the only duplicate the agent can
// produce is the head message re-sent after the connection (or the agent)
// died between the broker's PUBACK and the deletion of the file. Each
// message carries an id (and producers put a clientToken in their payloads)
// so receivers can drop such duplicates; the agent itself never publishes an
// acknowledged message again.
package outbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
)

// ErrFull is returned by Enqueue when the queue holds MaxMessages.
var ErrFull = errors.New("outbox: full")

// Conn is the connection the outbox drains into (mqttconn.Client).
type Conn interface {
	WaitConnected(ctx context.Context) error
	Publish(ctx context.Context, topic string, qos byte, payload []byte) error
}

// Message is one queued message.
type Message struct {
	// ID identifies the message; Enqueue generates one if empty.
	ID         string    `json:"id"`
	Topic      string    `json:"topic"`
	Payload    []byte    `json:"payload"`
	EnqueuedAt time.Time `json:"enqueuedAt"`
	seq        uint64
}

// Options tune an Outbox.
type Options struct {
	// MaxMessages bounds the queue (default 10000).
	MaxMessages int
	// MaxAttempts is how many failed publishes of the same message (for
	// example a topic the broker's policy refuses, which makes AWS IoT drop
	// the connection) move it to the dead-letter directory instead of
	// blocking the queue forever (default 5).
	MaxAttempts int
	// Retry is the delay between failed publishes while connected.
	Retry backoff.Policy
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Liveness, if set, receives Run's heartbeats (the agent's
	// supervisor): Run beats on every message and while it waits, and
	// announces a publish as Busy for AckWait and a retry delay as Busy
	// for that delay.
	Liveness Liveness
	// AckWait is how long a publish may wait for its PUBACK before the
	// loop counts as hung (default 2m; the agent passes twice the MQTT
	// keep-alive plus the connect timeout: a dead connection is detected
	// within that). The publish itself is not cut short.
	AckWait time.Duration
}

// Liveness is how Run reports that it is alive (the agent's *Loop).
type Liveness interface {
	Beat()
	Busy(d time.Duration)
	Interval() time.Duration
}

type noLiveness struct{}

func (noLiveness) Beat()                   {}
func (noLiveness) Busy(time.Duration)      {}
func (noLiveness) Interval() time.Duration { return time.Hour }

const (
	fileExt = ".msg"
	deadDir = "dead"
)

// Outbox is a durable FIFO of messages in a directory.
type Outbox struct {
	dir  string
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	pending []uint64 // sequence numbers on disk, ascending
	nextSeq uint64
	signal  chan struct{}
	idle    chan struct{} // closed while pending is empty
}

// Open loads the queue kept in dir (created 0700 if missing).
func Open(dir string, opts Options) (*Outbox, error) {
	if opts.MaxMessages <= 0 {
		opts.MaxMessages = 10000
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 5
	}
	if opts.Retry.Initial == 0 {
		opts.Retry = backoff.Policy{Initial: time.Second, Max: time.Minute}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Liveness == nil {
		opts.Liveness = noLiveness{}
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 2 * time.Minute
	}
	if err := os.MkdirAll(filepath.Join(dir, deadDir), 0o700); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	o := &Outbox{dir: dir, opts: opts, log: opts.Logger.With("component", "outbox"), signal: make(chan struct{}, 1), nextSeq: 1}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() {
			continue
		}
		if strings.HasPrefix(name, ".") { // an interrupted atomic write
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		seq, ok := parseName(name)
		if !ok {
			continue
		}
		o.pending = append(o.pending, seq)
		if seq >= o.nextSeq {
			o.nextSeq = seq + 1
		}
	}
	sort.Slice(o.pending, func(i, j int) bool { return o.pending[i] < o.pending[j] })
	o.idle = make(chan struct{})
	if len(o.pending) == 0 {
		close(o.idle)
	}
	return o, nil
}

func fileName(seq uint64) string { return fmt.Sprintf("%020d%s", seq, fileExt) }

func parseName(name string) (uint64, bool) {
	if !strings.HasSuffix(name, fileExt) {
		return 0, false
	}
	seq, err := strconv.ParseUint(strings.TrimSuffix(name, fileExt), 10, 64)
	return seq, err == nil
}

// Len is the number of messages waiting.
func (o *Outbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.pending)
}

// Publish durably accepts payload for in-order, at-least-once delivery to
// topic. It is the Publisher the jobs engine and other features use.
func (o *Outbox) Publish(ctx context.Context, topic string, payload []byte) error {
	_, err := o.Enqueue(ctx, Message{Topic: topic, Payload: payload})
	return err
}

// Enqueue persists m (fsync of the file and of the directory) and returns
// its id. The message is delivered after every message enqueued before it.
func (o *Outbox) Enqueue(ctx context.Context, m Message) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if m.Topic == "" {
		return "", errors.New("outbox: empty topic")
	}
	if m.ID == "" {
		m.ID = newID()
	}
	if m.EnqueuedAt.IsZero() {
		m.EnqueuedAt = time.Now().UTC()
	}
	data, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("outbox: encode: %w", err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.pending) >= o.opts.MaxMessages {
		return "", fmt.Errorf("outbox: %d messages waiting: %w", len(o.pending), ErrFull)
	}
	seq := o.nextSeq
	if err := atomicfile.WriteFile(filepath.Join(o.dir, fileName(seq)), data, 0o600); err != nil {
		return "", fmt.Errorf("outbox: enqueue %s: %w", m.Topic, err)
	}
	o.nextSeq++
	if len(o.pending) == 0 {
		o.idle = make(chan struct{})
	}
	o.pending = append(o.pending, seq)
	select {
	case o.signal <- struct{}{}:
	default:
	}
	return m.ID, nil
}

// WaitEmpty blocks until every queued message was delivered (or moved to
// the dead-letter directory) or ctx is done.
func (o *Outbox) WaitEmpty(ctx context.Context) error {
	o.mu.Lock()
	idle := o.idle
	o.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Dead lists the file names moved to the dead-letter directory.
func (o *Outbox) Dead() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(o.dir, deadDir))
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out, nil
}

func (o *Outbox) head() (uint64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.pending) == 0 {
		return 0, false
	}
	return o.pending[0], true
}

func (o *Outbox) read(seq uint64) (Message, error) {
	var m Message
	data, err := os.ReadFile(filepath.Join(o.dir, fileName(seq)))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, err
	}
	if m.Topic == "" {
		return m, errors.New("empty topic")
	}
	m.seq = seq
	return m, nil
}

// done removes the head message seq, either deleting it or moving it to the
// dead-letter directory.
func (o *Outbox) done(seq uint64, dead bool) error {
	src := filepath.Join(o.dir, fileName(seq))
	var err error
	if dead {
		err = os.Rename(src, filepath.Join(o.dir, deadDir, fileName(seq)))
	} else {
		err = os.Remove(src)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("outbox: remove %s: %w", fileName(seq), err)
	}
	if err := atomicfile.SyncDir(o.dir); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	o.mu.Lock()
	if len(o.pending) > 0 && o.pending[0] == seq {
		o.pending = o.pending[1:]
	}
	if len(o.pending) == 0 {
		select {
		case <-o.idle:
		default:
			close(o.idle)
		}
	}
	o.mu.Unlock()
	return nil
}

// Run drains the queue into conn until ctx is done.
func (o *Outbox) Run(ctx context.Context, conn Conn) error {
	live := o.opts.Liveness
	tick := time.NewTicker(live.Interval())
	defer tick.Stop()
	attempts := 0
	var lastSeq uint64
	for {
		live.Beat()
		seq, ok := o.head()
		if !ok {
			select {
			case <-o.signal:
			case <-tick.C:
			case <-ctx.Done():
				return nil
			}
			continue
		}
		if seq != lastSeq {
			attempts, lastSeq = 0, seq
		}
		m, err := o.read(seq)
		if err != nil {
			o.log.Error("unreadable outbox message moved to dead letters", "file", fileName(seq), "err", err)
			if err := o.done(seq, true); err != nil {
				return err
			}
			continue
		}
		if err := o.waitConnected(ctx, conn, live); err != nil {
			return nil
		}
		live.Busy(o.opts.AckWait)
		err = conn.Publish(ctx, m.Topic, 1, m.Payload)
		if err == nil {
			if err := o.done(seq, false); err != nil {
				return err
			}
			o.log.Debug("outbox message delivered", "id", m.ID, "topic", m.Topic)
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		attempts++
		if attempts >= o.opts.MaxAttempts {
			o.log.Error("outbox message failed too often, moved to dead letters", "id", m.ID, "topic", m.Topic, "attempts", attempts, "err", err)
			if err := o.done(seq, true); err != nil {
				return err
			}
			continue
		}
		d := o.opts.Retry.Delay(attempts - 1)
		o.log.Warn("outbox publish failed", "id", m.ID, "topic", m.Topic, "attempt", attempts, "err", err, "retryIn", d.Round(time.Millisecond))
		live.Busy(d)
		if backoff.Sleep(ctx, d) != nil {
			return nil
		}
	}
}

// waitConnected waits for the connection, beating while it waits (being
// offline for hours is normal); it fails only when ctx is done.
func (o *Outbox) waitConnected(ctx context.Context, conn Conn, live Liveness) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, live.Interval())
		err := conn.WaitConnected(wctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return ctx.Err()
		}
		live.Beat()
	}
}

func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Count reads how many messages wait in the queue kept in dir and how many
// were moved to its dead-letter directory, without opening the queue (it
// changes nothing: `fleet-agent status` calls it while the agent runs). A
// missing directory counts as empty.
func Count(dir string) (pending, dead int, err error) {
	for _, d := range []struct {
		path string
		n    *int
	}{{dir, &pending}, {filepath.Join(dir, deadDir), &dead}} {
		entries, err := os.ReadDir(d.path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("outbox: %w", err)
		}
		for _, e := range entries {
			if _, ok := parseName(e.Name()); ok && !e.IsDir() {
				*d.n++
			}
		}
	}
	return pending, dead, nil
}
