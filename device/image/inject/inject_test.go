package inject_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/image/inject"
	"github.com/iot-fleet/iot-fleet/device/image/inject/injecttest"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func writeSource(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

// mbr builds a 1 MiB image whose sector 0 holds the given partition entries.
func mbr(t *testing.T, entries [][3]uint32, signature bool) (string, int64) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for i, e := range entries {
		off := 446 + 16*i
		buf[off+4] = byte(e[0])
		binary.LittleEndian.PutUint32(buf[off+8:], e[1])
		binary.LittleEndian.PutUint32(buf[off+12:], e[2])
	}
	if signature {
		buf[510], buf[511] = 0x55, 0xaa
	}
	p := filepath.Join(t.TempDir(), "mbr.img")
	require.NoError(t, os.WriteFile(p, buf, 0o644))
	return p, int64(len(buf))
}

func TestReadMBR(t *testing.T) {
	p, size := mbr(t, [][3]uint32{{0x0c, 8, 100}, {0x83, 108, 1000}}, true)
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	parts, err := inject.ReadMBR(f, size)
	require.NoError(t, err)
	assert.Equal(t, []inject.Partition{
		{Number: 1, Type: 0x0c, Offset: 8 * 512, Size: 100 * 512},
		{Number: 2, Type: 0x83, Offset: 108 * 512, Size: 1000 * 512},
	}, parts)
	assert.True(t, parts[0].FAT())
	assert.False(t, parts[1].FAT())
}

func TestReadMBRRejects(t *testing.T) {
	cases := map[string]struct {
		entries   [][3]uint32
		signature bool
		want      string
	}{
		"no signature":   {[][3]uint32{{0x0c, 8, 100}}, false, "boot signature"},
		"GPT":            {[][3]uint32{{0xee, 1, 2047}}, true, "GPT"},
		"empty table":    {nil, true, "no partitions"},
		"past the end":   {[][3]uint32{{0x0c, 8, 100}, {0x83, 108, 4000}}, true, "past the end"},
		"root only":      {[][3]uint32{{0x83, 8, 100}}, true, "want partition 1 FAT"},
		"fat not ext4":   {[][3]uint32{{0x0c, 8, 100}, {0x0c, 108, 100}}, true, "want partition 1 FAT"},
		"no file system": {[][3]uint32{{0x0c, 8, 100}, {0x83, 108, 100}}, true, "no FAT file system"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p, _ := mbr(t, c.entries, c.signature)
			_, err := inject.ReadLayout(p)
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func tools(t *testing.T) inject.Tools {
	t.Helper()
	injecttest.Require(t)
	tl, err := inject.FindTools()
	require.NoError(t, err)
	return tl
}

// debugfsRaw runs a debugfs request directly, independently of the package's
// own parsing, so the round-trip test does not only trust inject.Stat.
func debugfsRaw(t *testing.T, img, req string) string {
	t.Helper()
	p, ok := injecttest.Look("debugfs")
	require.True(t, ok)
	cmd := exec.Command(p, "-R", req, fmt.Sprintf("%s?offset=%d", img, injecttest.RootStart*512))
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	require.NoError(t, cmd.Run(), errb.String())
	return out.String()
}

func mtypeRaw(t *testing.T, img, name string) string {
	t.Helper()
	p, ok := injecttest.Look("mtype")
	require.True(t, ok)
	cmd := exec.Command(p, "-i", fmt.Sprintf("%s@@%d", img, injecttest.BootStart*512), "::/"+name)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "MTOOLSRC=/dev/null")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	return string(out)
}

func samplePlan(t *testing.T) inject.Plan {
	key := writeSource(t, "claim.key", "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n")
	bin := writeSource(t, "fleet-agent", "\x7fELF binary bytes \x00\x01\x02")
	unit := writeSource(t, "fleet-agent.service", "[Service]\nExecStart=/usr/local/bin/fleet-agent\n")
	userconf := writeSource(t, "userconf.txt", "pi:*\n")
	return inject.Plan{
		Root: []inject.Entry{
			{Kind: inject.KindDir, Path: "/etc/fleet-agent/claim", Mode: 0o700},
			{Kind: inject.KindDir, Path: "/var/lib/fleet-agent", Mode: 0o700},
			{Kind: inject.KindFile, Path: "/etc/fleet-agent/claim/claim.key", Mode: 0o600, Source: key},
			{Kind: inject.KindFile, Path: "/usr/local/bin/fleet-agent", Mode: 0o755, Source: bin},
			{Kind: inject.KindFile, Path: "/etc/systemd/system/fleet-agent.service", Mode: 0o644, Source: unit},
			{Kind: inject.KindFile, Path: "/home/pi/owned-by-pi", Mode: 0o640, UID: 1000, GID: 1000, Source: unit},
			{Kind: inject.KindSymlink, Path: "/etc/systemd/system/multi-user.target.wants/fleet-agent.service", Target: "/etc/systemd/system/fleet-agent.service"},
		},
		Boot: []inject.BootFile{{Name: "userconf.txt", Source: userconf}},
	}
}

func TestInjectRoundTrip(t *testing.T) {
	tl := tools(t)
	ctx := testContext(t)
	img := injecttest.NewImage(t, injecttest.Options{BootFiles: map[string]string{"config.txt": "arm_64bit=1\n"}})
	plan := samplePlan(t)
	require.NoError(t, inject.Inject(ctx, quietLog(), img, plan, tl))

	// Independent read-back with the raw tools.
	keyStat := debugfsRaw(t, img, "stat /etc/fleet-agent/claim/claim.key")
	assert.Regexp(t, `Type: regular\s+Mode:\s+0600`, keyStat)
	assert.Regexp(t, `User:\s+0\s+Group:\s+0`, keyStat)
	assert.Regexp(t, `Type: directory\s+Mode:\s+0700`, debugfsRaw(t, img, "stat /etc/fleet-agent/claim"))
	assert.Regexp(t, `Type: directory\s+Mode:\s+0700`, debugfsRaw(t, img, "stat /var/lib/fleet-agent"))
	assert.Regexp(t, `Type: directory\s+Mode:\s+0755`, debugfsRaw(t, img, "stat /etc/fleet-agent"), "missing parents are created 0755")
	assert.Regexp(t, `Type: regular\s+Mode:\s+0755`, debugfsRaw(t, img, "stat /usr/local/bin/fleet-agent"))
	assert.Regexp(t, `User:\s+1000\s+Group:\s+1000`, debugfsRaw(t, img, "stat /home/pi/owned-by-pi"))
	link := debugfsRaw(t, img, "stat /etc/systemd/system/multi-user.target.wants/fleet-agent.service")
	assert.Contains(t, link, "Type: symlink")
	assert.Contains(t, link, `Fast link dest: "/etc/systemd/system/fleet-agent.service"`)
	assert.Equal(t, "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n", debugfsRaw(t, img, "cat /etc/fleet-agent/claim/claim.key"))
	assert.Equal(t, "pi:*\n", mtypeRaw(t, img, "userconf.txt"))
	assert.Equal(t, "arm_64bit=1\n", mtypeRaw(t, img, "config.txt"), "existing boot files are kept")
	assert.Equal(t, "raspberrypi\n", debugfsRaw(t, img, "cat /etc/hostname"), "existing root files are kept")
}

func TestInjectIsIdempotentAndReplacesFiles(t *testing.T) {
	tl := tools(t)
	ctx := testContext(t)
	img := injecttest.NewImage(t, injecttest.Options{})
	plan := samplePlan(t)
	require.NoError(t, inject.Inject(ctx, quietLog(), img, plan, tl))
	// Second build into the same image with a new agent binary.
	require.NoError(t, os.WriteFile(plan.Root[3].Source, []byte("new agent"), 0o644))
	require.NoError(t, inject.Inject(ctx, quietLog(), img, plan, tl))
	assert.Equal(t, "new agent", debugfsRaw(t, img, "cat /usr/local/bin/fleet-agent"))
	listing := debugfsRaw(t, img, "ls -l /etc/systemd/system/multi-user.target.wants")
	assert.Equal(t, 1, strings.Count(listing, "fleet-agent.service"), listing)
}

func TestInjectRefusesToReplaceDirectoryWithFile(t *testing.T) {
	tl := tools(t)
	ctx := testContext(t)
	img := injecttest.NewImage(t, injecttest.Options{RootDirs: []string{"usr/local/bin/fleet-agent"}})
	plan := samplePlan(t)
	err := inject.Inject(ctx, quietLog(), img, plan, tl)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "/usr/local/bin/fleet-agent: the image has a dir there")
	// Nothing was written: planning fails before debugfs runs.
	assert.Contains(t, debugfsRaw(t, img, "ls /etc"), "hostname")
	_, statErr := root(t, img, tl).Stat(ctx, "/etc/fleet-agent")
	assert.ErrorIs(t, statErr, inject.ErrNotExist)
}

func root(t *testing.T, img string, tl inject.Tools) *inject.Root {
	t.Helper()
	l, err := inject.ReadLayout(img)
	require.NoError(t, err)
	r, err := inject.NewRoot(img, l.Root, tl)
	require.NoError(t, err)
	return r
}

func TestVerifyDetectsWrongModeOwnerAndContent(t *testing.T) {
	tl := tools(t)
	ctx := testContext(t)
	img := injecttest.NewImage(t, injecttest.Options{})
	plan := samplePlan(t)
	require.NoError(t, inject.Inject(ctx, quietLog(), img, plan, tl))
	r := root(t, img, tl)
	require.NoError(t, r.Verify(ctx, plan.Root))

	p, _ := injecttest.Look("debugfs")
	out, err := exec.Command(p, "-w", "-R", "sif /etc/fleet-agent/claim/claim.key mode 0100644",
		fmt.Sprintf("%s?offset=%d", img, injecttest.RootStart*512)).CombinedOutput()
	require.NoError(t, err, string(out))
	require.NoError(t, os.WriteFile(plan.Root[4].Source, []byte("changed"), 0o644))
	plan.Root[5].UID = 0

	err = r.Verify(ctx, plan.Root)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "/etc/fleet-agent/claim/claim.key: mode 0644, want 0600")
	assert.Contains(t, err.Error(), "/etc/systemd/system/fleet-agent.service: contents differ")
	assert.Contains(t, err.Error(), "/home/pi/owned-by-pi: owner 1000:1000, want 0:1000")
}

func TestApplyRejectsBadEntries(t *testing.T) {
	tl := tools(t)
	ctx := testContext(t)
	img := injecttest.NewImage(t, injecttest.Options{})
	r := root(t, img, tl)
	src := writeSource(t, "x", "x")
	cases := map[string]struct {
		entries []inject.Entry
		want    string
	}{
		"relative path":  {[]inject.Entry{{Kind: inject.KindFile, Path: "etc/x", Mode: 0o644, Source: src}}, "absolute, clean path"},
		"dot dot":        {[]inject.Entry{{Kind: inject.KindFile, Path: "/etc/../x", Mode: 0o644, Source: src}}, "absolute, clean path"},
		"space":          {[]inject.Entry{{Kind: inject.KindFile, Path: "/etc/a b", Mode: 0o644, Source: src}}, "absolute, clean path"},
		"duplicate":      {[]inject.Entry{{Kind: inject.KindDir, Path: "/x", Mode: 0o755}, {Kind: inject.KindDir, Path: "/x", Mode: 0o700}}, "listed twice"},
		"mode bits":      {[]inject.Entry{{Kind: inject.KindDir, Path: "/x", Mode: 0o10755}}, "outside 07777"},
		"missing source": {[]inject.Entry{{Kind: inject.KindFile, Path: "/x", Mode: 0o644, Source: src + ".missing"}}, "source"},
		"long link":      {[]inject.Entry{{Kind: inject.KindSymlink, Path: "/x", Target: "/" + strings.Repeat("a", 70)}}, "longer than"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			err := r.Apply(ctx, c.entries)
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestReadLayoutAB(t *testing.T) {
	img := injecttest.NewImage(t, injecttest.Options{AB: true})
	l, err := inject.ReadLayout(img)
	require.NoError(t, err)
	require.True(t, l.AB())
	assert.Equal(t, 4, l.Data.Number)
	assert.Equal(t, int64(injecttest.ABDataStart*512), l.Data.Offset)
	assert.Nil(t, l.RootB)
	assert.Equal(t, []inject.Partition{l.Root}, l.Roots())

	img = injecttest.NewImage(t, injecttest.Options{AB: true, RootB: true})
	l, err = inject.ReadLayout(img)
	require.NoError(t, err)
	require.NotNil(t, l.RootB)
	assert.Equal(t, 3, l.RootB.Number)
	assert.Len(t, l.Roots(), 2)

	// The Raspberry Pi OS layout is not A/B.
	l, err = inject.ReadLayout(injecttest.NewImage(t, injecttest.Options{}))
	require.NoError(t, err)
	assert.False(t, l.AB())
}

func TestReadLayoutABNeedsAnExt4DataPartition(t *testing.T) {
	img := injecttest.NewImage(t, injecttest.Options{AB: true})
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 4096), injecttest.ABDataStart*512)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	_, err = inject.ReadLayout(img)
	assert.ErrorContains(t, err, "data partition 4: partition 4 at byte")
}

func TestInjectDataPlan(t *testing.T) {
	tl := tools(t)
	ctx := testContext(t)
	plan := inject.Plan{Data: []inject.Entry{{Kind: inject.KindDir, Path: "/fleet-agent", Mode: 0o700}}}
	err := inject.Inject(ctx, quietLog(), injecttest.NewImage(t, injecttest.Options{}), plan, tl)
	assert.ErrorContains(t, err, "the image has none")

	img := injecttest.NewImage(t, injecttest.Options{AB: true, RootB: true})
	plan.Root = samplePlan(t).Root
	require.NoError(t, inject.Inject(ctx, quietLog(), img, plan, tl))
	l, err := inject.ReadLayout(img)
	require.NoError(t, err)
	for _, p := range l.Roots() {
		r, err := inject.NewRoot(img, p, tl)
		require.NoError(t, err)
		require.NoError(t, r.Verify(ctx, plan.Root), "partition %d", p.Number)
	}
	data, err := inject.NewRoot(img, *l.Data, tl)
	require.NoError(t, err)
	require.NoError(t, data.Verify(ctx, plan.Data))
	_, err = data.Stat(ctx, "/usr")
	assert.ErrorIs(t, err, inject.ErrNotExist, "root entries do not land on the data partition")
}
