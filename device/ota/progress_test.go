package ota

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

func TestParseProgressLines(t *testing.T) {
	now := time.Unix(1700000000, 0)
	// Output as the mender clients print it (mender 3's utils.ProgressWriter
	// and terminal progress bar, mender 4's progress_reader), and lines
	// that must not be taken for progress.
	for _, tc := range []struct {
		line    string
		total   int64
		ok      bool
		percent int
		bytes   int64
	}{
		{line: "................................   5% 12288 KiB", ok: true, percent: 5, bytes: 12288 << 10},
		{line: "................................   1% 1024 KiB", ok: true, percent: 1, bytes: 1 << 20},
		{line: "................................  99% 58368 KiB", ok: true, percent: 99, bytes: 58368 << 10},
		{line: ".........                        100% 58708 KiB", ok: true, percent: 100, bytes: 58708 << 10},
		{line: "................................ 1024 KiB", ok: true, percent: -1, bytes: 1 << 20},
		{line: "................................ 2048 KiB", total: 4 << 20, ok: true, percent: 50, bytes: 2 << 20},
		{line: ".  100% 512 B", ok: true, percent: 100, bytes: 512},
		{line: "[##########                      ]  31% | 18MiB", ok: true, percent: 31, bytes: 18 << 20},
		{line: "42%", ok: true, percent: 42, bytes: -1},
		{line: "42%", total: 1000, ok: true, percent: 42, bytes: 420},
		{line: "  7%", ok: true, percent: 7, bytes: -1},
		{line: "........................................................           87%", ok: true, percent: 87, bytes: -1},
		{line: "INFO[0000] Loaded configuration file: /etc/mender/mender.conf"},
		{line: `record_id=12 severity=info time="2024-Mar-04 10:11:12.123456" name="Global" msg="disk 90% full"`},
		{line: "ERRO[0012] Download connection broken: 50% done"},
		{line: "..........INFO[0075] 0 bytes remaining to be written  module=block_device"},
		{line: "Use 'commit' to update, or 'rollback' to roll back the update."},
		{line: ""},
		{line: "100 % of nothing"},
	} {
		var p ProgressParser
		p.total = tc.total
		pr, ok := p.Parse(tc.line, now)
		require.Equal(t, tc.ok, ok, "line %q", tc.line)
		if !ok {
			continue
		}
		assert.Equal(t, tc.percent, pr.Percent, "percent of %q", tc.line)
		assert.Equal(t, tc.bytes, pr.Bytes, "bytes of %q", tc.line)
		assert.Equal(t, now, pr.Time)
	}
}

func TestParserLearnsArtifactSize(t *testing.T) {
	var p ProgressParser
	now := time.Now()
	_, ok := p.Parse("Installing Artifact of size 60117504...", now)
	assert.False(t, ok)
	assert.Equal(t, int64(60117504), p.Total())
	pr, ok := p.Parse("50%", now)
	require.True(t, ok)
	assert.Equal(t, int64(30058752), pr.Bytes)
}

func TestScanLinesSplitsCarriageReturns(t *testing.T) {
	in := "Installing...\r1%\r2%\r\n3%\nlast"
	sc := bufio.NewScanner(strings.NewReader(in))
	sc.Split(ScanLines)
	var got []string
	for sc.Scan() {
		got = append(got, sc.Text())
	}
	assert.Equal(t, []string{"Installing...", "1%", "2%", "3%", "last"}, got)
}

func TestThrottle(t *testing.T) {
	start := time.Unix(1700000000, 0)
	count := func(interval time.Duration, n int, percent func(i int) int) int {
		th := Throttle{Interval: interval}
		c := 0
		for i := 0; i < n; i++ {
			if th.Allow(Progress{Percent: percent(i), Bytes: int64(i), Time: start.Add(time.Duration(i) * time.Second)}) {
				c++
			}
		}
		return c
	}
	// 1000 lines, one per second, percent i/10: one message per 10 s
	// interval (the 10% boundaries fall on those same lines).
	assert.Equal(t, 100, count(10*time.Second, 1000, func(i int) int { return i / 10 }))
	// A long interval: the first line and each 10% boundary (10..90).
	assert.Equal(t, 10, count(time.Hour, 1000, func(i int) int { return i / 10 }))
	// Bursty output (all lines in the same second): boundaries only.
	th := Throttle{Interval: time.Second}
	c := 0
	for i := 0; i <= 100; i++ {
		if th.Allow(Progress{Percent: i, Bytes: -1, Time: start}) {
			c++
		}
	}
	assert.Equal(t, 11, c)
	// Unchanged progress is never repeated, however long it stalls.
	th = Throttle{Interval: time.Second}
	assert.True(t, th.Allow(Progress{Percent: 5, Bytes: 5, Time: start}))
	assert.False(t, th.Allow(Progress{Percent: 5, Bytes: 5, Time: start.Add(time.Hour)}))
}

// TestProgressRateLimitedOverRealOutput runs the fake mender 3 with a
// 1000 MiB artifact (1000 progress lines) and counts the messages.
func TestProgressRateLimitedOverRealOutput(t *testing.T) {
	d := newDevice(t, "mender", fakeScenario{ArtifactSizeMiB: 1000})
	u := d.updater(func(c *Config) {
		c.ProgressInterval = time.Hour
		c.ReferenceProgress = true
	})
	job := testJob("ota-progress")
	require.ErrorIs(t, u.Run(testCtx(t), job, d.reporter()), ErrRebootPending)

	thing := "dev-10000000a1b2c3d4"
	msgs := d.pub.on(protocol.DataTopic(thing, protocol.KindOTAProgress))
	// First line (0%) plus the ten 10% boundaries.
	require.Len(t, msgs, 11)
	var percents []int
	for _, m := range msgs {
		var pm struct {
			JobID   string `json:"jobId"`
			Percent *int   `json:"percent"`
			Bytes   *int64 `json:"bytes"`
			TS      int64  `json:"ts"`
		}
		require.NoError(t, json.Unmarshal(m.Payload, &pm))
		assert.Equal(t, "ota-progress", pm.JobID)
		require.NotNil(t, pm.Percent)
		require.NotNil(t, pm.Bytes)
		assert.Positive(t, pm.TS)
		percents = append(percents, *pm.Percent)
		if *pm.Percent == 100 {
			assert.Equal(t, int64(1000)<<20, *pm.Bytes)
		}
	}
	assert.Equal(t, []int{0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100}, percents)

	ref := d.pub.on(ReferenceProgressTopic(thing, "ota-progress"))
	require.Len(t, ref, 11)
	var rm map[string]any
	require.NoError(t, json.Unmarshal(ref[1].Payload, &rm))
	assert.Equal(t, "................................  10% 102400 KiB", rm["progress"])
	assert.IsType(t, float64(0), rm["ts"])
	assert.Equal(t, "mender/dev-10000000a1b2c3d4/job/ota-progress/progress", ref[0].Topic)
}

func TestProgressMender4(t *testing.T) {
	d := newDevice(t, "mender-update", fakeScenario{ArtifactSizeMiB: 200})
	u := d.updater(func(c *Config) { c.ProgressInterval = time.Hour })
	require.ErrorIs(t, u.Run(testCtx(t), testJob("ota-p4"), d.reporter()), ErrRebootPending)
	msgs := d.pub.on(protocol.DataTopic("dev-10000000a1b2c3d4", protocol.KindOTAProgress))
	require.Len(t, msgs, 11)
	var last ProgressMessage
	require.NoError(t, json.Unmarshal(msgs[10].Payload, &last))
	require.NotNil(t, last.Percent)
	assert.Equal(t, 100, *last.Percent)
	// mender 4 prints no byte counts and no size.
	assert.Nil(t, last.Bytes)
}

func BenchmarkProgressSink(b *testing.B) {
	lines := []string{
		"INFO[0000] opening device /dev/mmcblk0p3 for writing     module=block_device",
		"................................  42% 25165824 KiB",
		"42%",
	}
	s := &progressSink{ctx: b.Context(), pub: &recPublisher{}, thing: "dev-1", jobID: "j", throttle: Throttle{Interval: time.Hour}, now: time.Now}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		s.line(lines[i%len(lines)])
	}
}

// debianMender34Stderr is what Debian's mender 3.4 (mender-client
// 3.4.0+ds1) writes on stderr during `mender install` of a rootfs-image
// artifact when stderr is not a terminal, as captured on the virtual Pi:
// logrus lines, the no-terminal progress bar's header and ruler, then 70
// dots over the whole artifact with no line end of their own, log lines
// interleaved.
func debianMender34Stderr() []string {
	var chunks []string
	chunks = append(chunks,
		`time="2026-12-05T18:48:38Z" level=info msg="Performing remote update from: [http://artifacts.vm.internal/v2.mender]."`+"\n",
		"0%                              50%                              100%\n",
		"|---------------------------------|---------------------------------|\n",
		`time="2026-12-05T18:48:38Z" level=info msg="Installer: authenticated digital signature of artifact"`+"\n",
		`time="2026-12-05T18:48:40Z" level=info msg="Opening device \"/dev/vda3\" for writing"`+"\n")
	// The dots arrive one write at a time.
	for i := 0; i < 65; i++ {
		chunks = append(chunks, ".")
	}
	chunks = append(chunks, `time="2026-12-05T18:50:12Z" level=info msg="All bytes were successfully written to the new partition"`+"\n")
	for i := 0; i < 4; i++ {
		chunks = append(chunks, ".")
	}
	chunks = append(chunks, `time="2026-12-05T18:50:14Z" level=info msg="Wrote 629145600/629145600 bytes to the inactive partition"`+"\n",
		".",
		`time="2026-12-05T18:50:14Z" level=info msg="Enabling partition with new image installed to be a boot candidate: 3"`+"\n")
	return chunks
}

// chunkReader hands its chunks out one Read at a time, as a pipe does
// when the writer writes them apart.
type chunkReader struct{ chunks []string }

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	if n == len(r.chunks[0]) {
		r.chunks = r.chunks[1:]
	} else {
		r.chunks[0] = r.chunks[0][n:]
	}
	return n, nil
}

func TestProgressDebianMender34NoTerminalBar(t *testing.T) {
	pub := &recPublisher{}
	done := 0
	var seen []string
	s := &progressSink{ctx: t.Context(), pub: pub, thing: "dev-1", jobID: "j", reference: true, log: slog.New(slog.DiscardHandler),
		throttle: Throttle{Interval: time.Hour}, now: time.Now, onDone: func() { done++ }}
	// stdout carries the size announcement; it is read by its own scanner.
	s.line("Installing Artifact of size 124761088...")
	sc := bufio.NewScanner(&chunkReader{chunks: debianMender34Stderr()})
	sc.Split(ScanMenderOutput())
	for sc.Scan() {
		seen = append(seen, sc.Text())
		s.line(sc.Text())
	}
	require.NoError(t, sc.Err())

	// The log lines after the dots are lines of their own (the reason
	// extraction reads them).
	assert.Contains(t, seen, `time="2026-12-05T18:50:12Z" level=info msg="All bytes were successfully written to the new partition"`)
	assert.Contains(t, seen, `time="2026-12-05T18:50:14Z" level=info msg="Enabling partition with new image installed to be a boot candidate: 3"`)
	assert.Equal(t, 1, done, "100% seen once: the step moves to installing")

	msgs := pub.on(protocol.DataTopic("dev-1", protocol.KindOTAProgress))
	var percents []int
	var last ProgressMessage
	for _, m := range msgs {
		require.NoError(t, json.Unmarshal(m.Payload, &last))
		require.NotNil(t, last.Percent)
		percents = append(percents, *last.Percent)
	}
	// A dot is 1/70 of the artifact: the first dot (1%) and each 10%
	// boundary.
	assert.Equal(t, []int{1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100}, percents)
	require.NotNil(t, last.Bytes)
	assert.Equal(t, int64(124761088), *last.Bytes)

	ref := pub.on(ReferenceProgressTopic("dev-1", "j"))
	require.Len(t, ref, 11)
	var rm ReferenceProgressMessage
	require.NoError(t, json.Unmarshal(ref[10].Payload, &rm))
	assert.Equal(t, strings.Repeat(".", 70)+" 100%", rm.Progress)
}

func TestScanMenderOutputLeavesOtherOutputAlone(t *testing.T) {
	// mender 3's ProgressWriter lines keep their dots (no ruler was seen),
	// whatever the pipe's chunking.
	chunks := []string{"Installing Artifact of size 2097152...\n"}
	for i := 0; i < 32; i++ {
		chunks = append(chunks, ".")
	}
	chunks = append(chunks, "  50% 1024 KiB\n", "........", "........................ 100% 2048 KiB\n", "\r5%\r10%")
	sc := bufio.NewScanner(&chunkReader{chunks: chunks})
	sc.Split(ScanMenderOutput())
	var got []string
	for sc.Scan() {
		got = append(got, sc.Text())
	}
	assert.Equal(t, []string{"Installing Artifact of size 2097152...", strings.Repeat(".", 32) + "  50% 1024 KiB",
		strings.Repeat(".", 32) + " 100% 2048 KiB", "", "5%", "10%"}, got)
}
