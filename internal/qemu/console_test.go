package qemu

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func newTestConsole(t *testing.T) (*Console, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "console.log")
	c, err := newConsole(path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.close() })
	return c, path
}

func TestConsoleSplitsLinesAndStripsEscapes(t *testing.T) {
	c, path := newTestConsole(t)
	// systemd's coloured status, a CRLF line, a line split over writes.
	c.write([]byte("[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mfleet-agent.service\x1b[0m - iot-fleet device agent.\r\n"))
	c.write([]byte("U-Boot 2023.01\r\nHit any key to sto"))
	c.write([]byte("p autoboot:  0 \r\nqemu-arm64 login: "))

	lines := c.Lines(0)
	require.Len(t, lines, 3)
	require.Equal(t, "[  OK  ] Started fleet-agent.service - iot-fleet device agent.", lines[0].Text)
	require.Equal(t, "U-Boot 2023.01", lines[1].Text)
	require.Equal(t, "Hit any key to stop autoboot:  0 ", lines[2].Text)
	require.Equal(t, []int{0, 1, 2}, []int{lines[0].N, lines[1].N, lines[2].N})
	require.Contains(t, c.Tail(2), "qemu-arm64 login:  <partial line>")

	// The raw bytes reach the log file as they arrive.
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(b), "\x1b[0;32m  OK  ")
	require.True(t, strings.HasSuffix(string(b), "qemu-arm64 login: "))

	// A harness mark ends the partial line first.
	c.Mark("qemu: run 2 started (pid 1)")
	lines = c.Lines(3)
	require.Len(t, lines, 2)
	require.Equal(t, "qemu-arm64 login: ", lines[0].Text)
	require.Equal(t, "qemu: run 2 started (pid 1)", lines[1].Text)
}

func TestCursorExpectWaitsForLaterLines(t *testing.T) {
	c, _ := newTestConsole(t)
	c.write([]byte("fleet-agent: provisioned\n"))
	cur := c.Cursor() // only lines from now on
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	go func() {
		c.write([]byte("booting\nfleet-agent: provisioned again\nlast\n"))
	}()
	l, err := cur.Expect(ctx, regexp.MustCompile(`provisioned`), nil)
	require.NoError(t, err)
	require.Equal(t, "fleet-agent: provisioned again", l.Text)
	require.Equal(t, 2, l.N)
	require.Equal(t, 3, cur.Pos())

	// ExpectAny reports which pattern matched; lines already consumed are
	// not matched again.
	l, i, err := cur.ExpectAny(ctx, []*regexp.Regexp{regexp.MustCompile(`provisioned`), regexp.MustCompile(`^last$`)}, nil)
	require.NoError(t, err)
	require.Equal(t, 1, i)
	require.Equal(t, "last", l.Text)

	// From the start, the first line matches.
	l, err = c.CursorAt(0).Expect(ctx, regexp.MustCompile(`provisioned`), nil)
	require.NoError(t, err)
	require.Equal(t, 0, l.N)
}

func TestCursorExpectDeadlineAndStop(t *testing.T) {
	c, _ := newTestConsole(t)
	c.write([]byte("Starting kernel ...\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.CursorAt(0).Expect(ctx, regexp.MustCompile(`login:`), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "/login:/")
	require.ErrorContains(t, err, "Starting kernel ...", "the error shows the console's last lines")

	stop := make(chan struct{})
	go func() {
		c.write([]byte("reboot: Power down\n"))
		close(stop)
	}()
	_, err = c.CursorAt(0).Expect(context.Background(), regexp.MustCompile(`login:`), stop)
	require.ErrorContains(t, err, "the machine stopped before a line matched /login:/")

	// A line that arrived before the stop is still found.
	l, err := c.CursorAt(0).Expect(context.Background(), regexp.MustCompile(`Power down`), stop)
	require.NoError(t, err)
	require.Equal(t, "reboot: Power down", l.Text)
}

func TestArgs(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	require.NoError(t, os.WriteFile(disk, nil, 0o600))
	m, err := New(Config{
		Dir: dir, Disk: disk,
		Forwards: []Forward{{GuestAddr: "10.0.2.100:8883", HostAddr: "127.0.0.1:41234"}, {GuestAddr: "10.0.2.101:80", HostAddr: "127.0.0.1:41235"}},
		FwCfg:    []FwCfg{{Name: "opt/iot-fleet/serial", Value: "00000000c0ffee01"}},
	})
	require.NoError(t, err)
	defer m.Close()
	got := strings.Join(m.Args(), " ")
	for _, want := range []string{
		"-M virt -cpu cortex-a53 -m 1024 -smp 2 -nographic",
		"-bios " + DefaultBIOS,
		"-drive file=" + disk + ",if=virtio,format=raw",
		"-netdev user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:8883-cmd:socat - TCP:127.0.0.1:41234,guestfwd=tcp:10.0.2.101:80-cmd:socat - TCP:127.0.0.1:41235",
		"-fw_cfg name=opt/iot-fleet/serial,string=00000000c0ffee01",
	} {
		require.Contains(t, got, want)
	}
	require.NotContains(t, got, "-kernel")
}

func TestNewRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	require.NoError(t, os.WriteFile(disk, nil, 0o600))
	for name, tc := range map[string]struct {
		cfg  Config
		want string
	}{
		"no disk":         {Config{Dir: dir}, "Dir and Disk are required"},
		"missing disk":    {Config{Dir: dir, Disk: filepath.Join(dir, "nope.img")}, "qemu: disk:"},
		"guest hostname":  {Config{Dir: dir, Disk: disk, Forwards: []Forward{{GuestAddr: "iot.vm.internal:8883", HostAddr: "127.0.0.1:1"}}}, `forward guest address "iot.vm.internal:8883": want IPv4:port`},
		"host no port":    {Config{Dir: dir, Disk: disk, Forwards: []Forward{{GuestAddr: "10.0.2.100:8883", HostAddr: "127.0.0.1"}}}, `forward host address "127.0.0.1": want IP:port`},
		"comma in option": {Config{Dir: dir, Disk: disk, FwCfg: []FwCfg{{Name: "opt/x", Value: "a,b"}}}, `fw_cfg item "opt/x"`},
		"not opt/":        {Config{Dir: dir, Disk: disk, FwCfg: []FwCfg{{Name: "etc/x", Value: "a"}}}, `must start with opt/`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(tc.cfg)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
