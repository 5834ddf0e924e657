package ota

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Progress is one parsed mender progress report.
type Progress struct {
	// Percent is 0..100, or -1 when the line carries no percentage (mender 3
	// prints only the size when it does not know the artifact size).
	Percent int
	// Bytes written so far, or -1 when unknown (mender 4 prints only the
	// percentage; bytes are then derived from the artifact size if mender
	// printed it).
	Bytes int64
	// Time the line was read.
	Time time.Time
	// Text is how the reference progress topic shows it, when that is not
	// the line itself (the dots of a no-terminal progress bar).
	Text string
}

// Mender progress formats (see docs/ota.md for samples):
//
//	mender 3, not a terminal (utils.ProgressWriter): 32 dots per MiB, then
//	  "................................   5% 12288 KiB" (or " 12288 KiB"
//	  when the size is unknown, and " 100% 60117 KiB" at the end)
//	mender 3, terminal progress bar: "[#####      ]  5% | 12MiB"
//	mender 4 (progress_reader): "\r5%" on stderr, no newline
//	mender 3 announces the size first: "Installing Artifact of size 60117504..."
//	mender 3.4 as Debian builds it, not a terminal (mendersoftware/progressbar's
//	  NoTTYRenderer, width 70): a header "0%   50%   100%", a ruler
//	  "|-----|-----|" (69 characters), then 70 dots over the whole artifact on
//	  stderr, with no line ends (its log lines interleave); ScanMenderOutput
//	  hands each run of dots over as it arrives
var (
	reBarHeader = regexp.MustCompile(`^0%\s+50%\s+100%$`)
	reBarRuler  = regexp.MustCompile(`^\|-+\|-+\|$`)
	reDotRun    = regexp.MustCompile(`^\.+$`)
	reSize      = regexp.MustCompile(`Installing Artifact of size (\d+)`)
	reDots      = regexp.MustCompile(`^\.*\s*(?:(\d{1,3})%\s+)?(\d+)\s*(B|KiB|MiB|GiB)\s*$`)
	reBar       = regexp.MustCompile(`\]\s*(\d{1,3})%\s*\|\s*(\d+)(B|KiB|MiB|GiB|TiB)\s*$`)
	rePercent   = regexp.MustCompile(`^[.#\s\[\]]*(\d{1,3})%\s*$`)
	reLogPrefix = regexp.MustCompile(`^(?:[A-Z]{4}\[\d+\]|record_id=|time=)`)
)

// ProgressParser turns mender output lines into Progress values. It keeps
// the artifact size mender announced so that percentage-only lines get a
// byte count. The zero value is ready to use; it is not safe for
// concurrent use.
type ProgressParser struct {
	total int64
	// barWidth is the number of dots of a no-terminal progress bar at
	// 100% (0: no such bar seen), barDots the dots seen so far.
	barWidth, barDots int
}

// Total returns the artifact size mender announced, or 0.
func (p *ProgressParser) Total() int64 { return p.total }

// Parse parses one line (without its line terminator). ok is false for
// lines that carry no progress.
func (p *ProgressParser) Parse(line string, now time.Time) (pr Progress, ok bool) {
	line = strings.TrimRight(line, " \t")
	if m := reSize.FindStringSubmatch(line); m != nil {
		if n, err := strconv.ParseInt(m[1], 10, 64); err == nil && n > 0 {
			p.total = n
		}
		return Progress{}, false
	}
	if line == "" || reLogPrefix.MatchString(line) || reBarHeader.MatchString(line) {
		return Progress{}, false
	}
	if reBarRuler.MatchString(line) {
		// The bar is as wide as its ruler plus one (70 dots, 69-character
		// ruler); a new ruler starts a new bar.
		p.barWidth, p.barDots = len(line)+1, 0
		return Progress{}, false
	}
	pr = Progress{Percent: -1, Bytes: -1, Time: now}
	switch {
	case p.barWidth > 0 && reDotRun.MatchString(line):
		p.barDots += len(line)
		pr.Percent = min(100, p.barDots*100/p.barWidth)
		pr.Text = fmt.Sprintf("%s %3d%%", strings.Repeat(".", min(p.barDots, p.barWidth)), pr.Percent)
	case reDots.MatchString(line):
		m := reDots.FindStringSubmatch(line)
		if m[1] != "" {
			pr.Percent = atoiClamp(m[1])
		}
		pr.Bytes = sizeBytes(m[2], m[3])
	case reBar.MatchString(line):
		m := reBar.FindStringSubmatch(line)
		pr.Percent = atoiClamp(m[1])
		pr.Bytes = sizeBytes(m[2], m[3])
	case rePercent.MatchString(line):
		m := rePercent.FindStringSubmatch(line)
		pr.Percent = atoiClamp(m[1])
	default:
		return Progress{}, false
	}
	if p.total > 0 {
		if pr.Bytes < 0 && pr.Percent >= 0 {
			pr.Bytes = p.total * int64(pr.Percent) / 100
		}
		if pr.Percent < 0 && pr.Bytes >= 0 {
			pr.Percent = int(min(100, pr.Bytes*100/p.total))
		}
	}
	return pr, true
}

func atoiClamp(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0
	}
	return min(n, 100)
}

func sizeBytes(num, unit string) int64 {
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return -1
	}
	switch unit {
	case "KiB":
		n <<= 10
	case "MiB":
		n <<= 20
	case "GiB":
		n <<= 30
	case "TiB":
		n <<= 40
	}
	return n
}

// ScanLines is a bufio.SplitFunc that ends a line at "\n", "\r\n" or a
// lone "\r" (mender 4 redraws its percentage with carriage returns).
func ScanLines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if atEOF && len(data) == 0 {
		return 0, nil, nil
	}
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		if data[i] == '\r' {
			if i+1 < len(data) {
				if data[i+1] == '\n' {
					return i + 2, data[:i], nil
				}
				return i + 1, data[:i], nil
			}
			if !atEOF {
				// Need one more byte to know whether "\r\n" follows.
				return 0, nil, nil
			}
		}
		return i + 1, data[:i], nil
	}
	if atEOF {
		return len(data), data, nil
	}
	return 0, nil, nil
}

var _ bufio.SplitFunc = ScanLines

// ScanMenderOutput returns a SplitFunc for one of mender's output streams:
// ScanLines, except that once a no-terminal progress bar's ruler
// ("|----|----|") has been read, a run of dots at the start of a line is
// a token of its own as soon as it arrives. That bar's dots never end in
// a line end of their own (mender's log lines follow them on the same
// line), so the progress is seen while it happens, and the log line after
// the dots stays a line of its own. Other output (mender 3's
// "....  5% 3072 KiB" lines) is split as by ScanLines.
func ScanMenderOutput() bufio.SplitFunc {
	bar := false
	return func(data []byte, atEOF bool) (int, []byte, error) {
		if bar && len(data) > 0 && data[0] == '.' {
			n := 0
			for n < len(data) && data[n] == '.' {
				n++
			}
			return n, data[:n], nil
		}
		advance, token, err := ScanLines(data, atEOF)
		if token != nil && reBarRuler.Match(token) {
			bar = true
		}
		return advance, token, err
	}
}

// Throttle decides which progress reports are published: the first one,
// every one that crosses a 10% boundary, and otherwise at most one per
// Interval (and only if something changed). Not safe for concurrent use.
type Throttle struct {
	Interval time.Duration

	started     bool
	last        time.Time
	lastPercent int
	lastBytes   int64
}

// Allow reports whether p should be published, and records it if so.
func (t *Throttle) Allow(p Progress) bool {
	if !t.started {
		t.accept(p)
		return true
	}
	if p.Percent >= 0 && p.Percent/10 > max(t.lastPercent, 0)/10 {
		t.accept(p)
		return true
	}
	changed := p.Percent != t.lastPercent || p.Bytes != t.lastBytes
	if changed && p.Time.Sub(t.last) >= t.Interval {
		t.accept(p)
		return true
	}
	return false
}

func (t *Throttle) accept(p Progress) {
	t.started = true
	t.last = p.Time
	if p.Percent >= 0 {
		t.lastPercent = p.Percent
	}
	t.lastBytes = p.Bytes
}

// Publisher publishes one MQTT message. The agent's implementation waits
// for the broker's acknowledgement (QoS 1) or for ctx.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// ProgressMessage is the payload on dt/fleet/<thing>/ota/progress.
type ProgressMessage struct {
	JobID   string `json:"jobId"`
	Percent *int   `json:"percent,omitempty"`
	Bytes   *int64 `json:"bytes,omitempty"`
	TS      int64  `json:"ts"`
}

// ReferenceProgressMessage is the payload on the reference agent's topic
// mender/<thing>/job/<jobId>/progress.
type ReferenceProgressMessage struct {
	Progress string `json:"progress"`
	TS       int64  `json:"ts"`
}

// ReferenceProgressTopic is the reference agent's progress topic.
func ReferenceProgressTopic(thing, jobID string) string {
	return "mender/" + thing + "/job/" + jobID + "/progress"
}

// progressPublishTimeout bounds one progress publish.
const progressPublishTimeout = 10 * time.Second

// progressSink parses mender output and publishes throttled progress.
type progressSink struct {
	ctx       context.Context
	pub       Publisher
	thing     string
	jobID     string
	reference bool
	log       *slog.Logger
	parser    ProgressParser
	throttle  Throttle
	now       func() time.Time
	onDone    func() // called once when 100% is seen
	done      bool
	published int
}

func (s *progressSink) line(line string) {
	p, ok := s.parser.Parse(line, s.now())
	if !ok {
		return
	}
	if p.Percent >= 100 && !s.done {
		s.done = true
		if s.onDone != nil {
			s.onDone()
		}
	}
	if s.pub == nil || !s.throttle.Allow(p) {
		return
	}
	msg := ProgressMessage{JobID: s.jobID, TS: p.Time.Unix()}
	if p.Percent >= 0 {
		v := p.Percent
		msg.Percent = &v
	}
	if p.Bytes >= 0 {
		v := p.Bytes
		msg.Bytes = &v
	}
	s.publish(protocol.DataTopic(s.thing, protocol.KindOTAProgress), msg)
	if s.reference {
		text := p.Text
		if text == "" {
			text = strings.TrimSpace(line)
		}
		s.publish(ReferenceProgressTopic(s.thing, s.jobID), ReferenceProgressMessage{Progress: text, TS: p.Time.Unix()})
	}
}

func (s *progressSink) publish(topic string, v any) {
	payload, err := json.Marshal(v)
	if err != nil {
		s.log.Warn("ota: encode progress", "err", err)
		return
	}
	// Progress is best effort: a lost message must not fail the update,
	// and a slow broker must not stall mender's output for long.
	ctx, cancel := context.WithTimeout(s.ctx, progressPublishTimeout)
	defer cancel()
	if err := s.pub.Publish(ctx, topic, payload); err != nil {
		s.log.Warn("ota: publish progress", "topic", topic, "err", err)
		return
	}
	s.published++
}
