// Package qemu runs an emulated arm64 machine (QEMU's `virt` board, software
// emulation) from a raw disk image, the way the virtual Raspberry Pi runs:
// U-Boot as firmware (or a kernel and initrd given directly), user-mode
// networking whose only ways out are the guestfwd forwards to services on
// the host's loopback, and the serial console captured to a file and read
// line by line with deadlines. A machine can be stopped gracefully (the
// power button), powered off hard (kill -9 of the QEMU process: a power
// cut) and started again from the same disk.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultBIOS is Debian's U-Boot for QEMU's arm64 virt board (package
// u-boot-qemu).
const DefaultBIOS = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"

// Forward sends the guest's TCP connections to GuestAddr (an address on
// the user-mode network, e.g. 10.0.2.100:8883) to HostAddr on the host
// (e.g. 127.0.0.1:41234). Each connection gets its own relay process, so
// the guest may connect any number of times.
type Forward struct {
	GuestAddr string
	HostAddr  string
}

// FwCfg is a QEMU firmware configuration item the guest reads from
// /sys/firmware/qemu_fw_cfg/by_name/NAME/raw (module qemu_fw_cfg).
type FwCfg struct {
	// Name must start with "opt/" (e.g. opt/iot-fleet/serial).
	Name  string
	Value string
}

// Config describes a machine.
type Config struct {
	// Dir holds the console log and the QMP socket.
	Dir string
	// Disk is the raw disk image (the guest's /dev/vda); it is written in
	// place and survives every run.
	Disk string
	// BIOS is the firmware; default DefaultBIOS. Ignored with Kernel.
	BIOS string
	// Kernel, Initrd and Append boot a kernel directly instead of the
	// firmware (no bootloader).
	Kernel, Initrd, Append string
	// Binary is the QEMU program; default qemu-system-aarch64.
	Binary string
	// CPU is the emulated CPU; default cortex-a53 (the Raspberry Pi 3's,
	// and cheaper to emulate than "max").
	CPU string
	// MemoryMiB defaults to 1024, SMP to 2.
	MemoryMiB int
	SMP       int
	// Forwards are the guest's only ways out (user-mode networking,
	// restricted: no other connection leaves the guest).
	Forwards []Forward
	// Relay is the program a forward runs per connection with the guest's
	// socket on its standard input and output, followed by
	// TCP:HOST:PORT; default "socat -" (Debian's socat).
	Relay string
	FwCfg []FwCfg
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
	Logger    *slog.Logger
}

// Machine is a QEMU machine that can be started, stopped and killed any
// number of times; its console spans every run.
type Machine struct {
	cfg     Config
	Console *Console
	log     *slog.Logger
	qmpPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
	err    error
	runs   int
}

// New checks cfg and prepares a machine (not started).
func New(cfg Config) (*Machine, error) {
	if cfg.Dir == "" || cfg.Disk == "" {
		return nil, errors.New("qemu: Dir and Disk are required")
	}
	if _, err := os.Stat(cfg.Disk); err != nil {
		return nil, fmt.Errorf("qemu: disk: %w", err)
	}
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-aarch64"
	}
	if cfg.BIOS == "" && cfg.Kernel == "" {
		cfg.BIOS = DefaultBIOS
	}
	if cfg.CPU == "" {
		cfg.CPU = "cortex-a53"
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 1024
	}
	if cfg.SMP == 0 {
		cfg.SMP = 2
	}
	if cfg.Relay == "" {
		cfg.Relay = "socat -"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for _, f := range cfg.Forwards {
		if err := checkForward(f); err != nil {
			return nil, err
		}
	}
	for _, f := range cfg.FwCfg {
		if !strings.HasPrefix(f.Name, "opt/") || strings.ContainsAny(f.Name+f.Value, ",\n") {
			return nil, fmt.Errorf("qemu: fw_cfg item %q: the name must start with opt/ and neither name nor value may hold a comma or newline", f.Name)
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	con, err := newConsole(filepath.Join(cfg.Dir, "console.log"))
	if err != nil {
		return nil, err
	}
	m := &Machine{cfg: cfg, Console: con, log: cfg.Logger, qmpPath: filepath.Join(cfg.Dir, "qmp.sock")}
	return m, nil
}

func checkForward(f Forward) error {
	gh, gp, err := net.SplitHostPort(f.GuestAddr)
	if err != nil || net.ParseIP(gh).To4() == nil {
		return fmt.Errorf("qemu: forward guest address %q: want IPv4:port", f.GuestAddr)
	}
	if _, err := strconv.ParseUint(gp, 10, 16); err != nil {
		return fmt.Errorf("qemu: forward guest address %q: bad port", f.GuestAddr)
	}
	hh, hp, err := net.SplitHostPort(f.HostAddr)
	if err != nil || net.ParseIP(hh) == nil {
		return fmt.Errorf("qemu: forward host address %q: want IP:port", f.HostAddr)
	}
	if _, err := strconv.ParseUint(hp, 10, 16); err != nil {
		return fmt.Errorf("qemu: forward host address %q: bad port", f.HostAddr)
	}
	return nil
}

// Args is QEMU's command line (without the program).
func (m *Machine) Args() []string {
	c := m.cfg
	args := []string{
		"-M", "virt", "-cpu", c.CPU, "-m", strconv.Itoa(c.MemoryMiB), "-smp", strconv.Itoa(c.SMP),
		"-nographic", "-monitor", "none", "-serial", "stdio",
		"-qmp", "unix:" + m.qmpPath + ",server=on,wait=off",
		"-drive", "file=" + c.Disk + ",if=virtio,format=raw",
	}
	if c.Kernel != "" {
		args = append(args, "-kernel", c.Kernel)
		if c.Initrd != "" {
			args = append(args, "-initrd", c.Initrd)
		}
		if c.Append != "" {
			args = append(args, "-append", c.Append)
		}
	} else {
		args = append(args, "-bios", c.BIOS)
	}
	// restrict=on: the guest reaches nothing but the forwards (and QEMU's
	// own DHCP and DNS).
	netdev := "user,id=net0,restrict=on"
	for _, f := range c.Forwards {
		netdev += ",guestfwd=tcp:" + f.GuestAddr + "-cmd:" + c.Relay + " TCP:" + f.HostAddr
	}
	args = append(args, "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0")
	for _, f := range c.FwCfg {
		args = append(args, "-fw_cfg", "name="+f.Name+",string="+f.Value)
	}
	return append(args, c.ExtraArgs...)
}

// Start starts a run of the machine from its disk. It fails if a run is
// still going.
func (m *Machine) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return errors.New("qemu: the machine is already running")
	}
	_ = os.Remove(m.qmpPath)
	cmd := exec.Command(m.cfg.Binary, m.Args()...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	cmd.Stderr = cmd.Stdout
	// Its own process group (the forwards' relays are its children), and
	// it dies with the harness.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu: start %s: %w", m.cfg.Binary, err)
	}
	m.runs++
	m.Console.Mark(fmt.Sprintf("qemu: run %d started (pid %d)", m.runs, cmd.Process.Pid))
	m.log.Info("qemu started", "run", m.runs, "pid", cmd.Process.Pid, "disk", m.cfg.Disk)
	exited := make(chan struct{})
	m.cmd, m.stdin, m.exited, m.err = cmd, stdin, exited, nil
	run := m.runs
	go func() {
		m.Console.pump(stdout)
		err := cmd.Wait()
		m.Console.Mark(fmt.Sprintf("qemu: run %d exited (%v)", run, exitText(err)))
		m.log.Info("qemu exited", "run", run, "status", exitText(err))
		m.mu.Lock()
		m.err = err
		m.cmd, m.stdin = nil, nil
		m.mu.Unlock()
		close(exited)
	}()
	return nil
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// Runs counts the runs started so far.
func (m *Machine) Runs() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runs
}

// PID is the running QEMU process's id, 0 when stopped.
func (m *Machine) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Exited is closed when the current (or last) run ends; nil before the
// first Start.
func (m *Machine) Exited() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exited
}

// Running reports whether a run is going.
func (m *Machine) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

// Wait waits for the current run to end and returns QEMU's exit error.
func (m *Machine) Wait(ctx context.Context) error {
	ex := m.Exited()
	if ex == nil {
		return nil
	}
	select {
	case <-ex:
	case <-ctx.Done():
		return fmt.Errorf("qemu: waiting for the machine to stop: %w", ctx.Err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Kill cuts the power: SIGKILL to the QEMU process (only that process;
// the relays of open forwarded connections see their socket close and
// exit), then waits for it.
func (m *Machine) Kill() error {
	m.mu.Lock()
	cmd, ex := m.cmd, m.exited
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("qemu: kill -9 %d: %w", cmd.Process.Pid, err)
	}
	select {
	case <-ex:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("qemu: pid %d still running 30s after SIGKILL", cmd.Process.Pid)
	}
}

// Stop shuts the guest down gracefully: it presses the power button
// (QMP system_powerdown) and waits for QEMU to exit. If the guest has not
// powered off when ctx ends, the machine is killed and Stop fails.
func (m *Machine) Stop(ctx context.Context) error {
	ex := m.Exited()
	if ex == nil || !m.Running() {
		return nil
	}
	if err := m.QMP(ctx, "system_powerdown"); err != nil {
		_ = m.Kill()
		return err
	}
	select {
	case <-ex:
		return nil
	case <-ctx.Done():
		_ = m.Kill()
		return fmt.Errorf("qemu: the guest did not power off after the power button: %w", ctx.Err())
	}
}

// Type writes s to the guest's serial console input.
func (m *Machine) Type(s string) error {
	m.mu.Lock()
	in := m.stdin
	m.mu.Unlock()
	if in == nil {
		return errors.New("qemu: the machine is not running")
	}
	_, err := io.WriteString(in, s)
	return err
}

// Close kills a running machine and closes the console log.
func (m *Machine) Close() error {
	kerr := m.Kill()
	return errors.Join(kerr, m.Console.close())
}
