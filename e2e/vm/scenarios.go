package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/infra/otajob"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/qemu"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/certscan"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
	simreg "github.com/iot-fleet/iot-fleet/sim/registry"
)

// Scenario is one step of the run. The scenarios share one machine and
// run in order (each starts from the state the previous one left), so
// that as few boots as possible — each costs minutes under emulation —
// cover them all.
type Scenario struct {
	Name string
	// Timeout bounds the scenario.
	Timeout time.Duration
	Run     func(e *Env, ctx context.Context) error
}

// Scenarios are the run's scenarios, in order (issue #14, "The run"):
//
//  1. first-boot: the first-boot unit, the agent provisions by claim.
//  2. job: a schema 1.0 job (runCommand, then runHandler) SUCCEEDS.
//  3. power-cut-during-ota: OTA to v2; QEMU is killed (kill -9) while mender
//     writes rootfs B; the machine restarts from the same disk, boots v1, and
//     the job shows why the attempt did not finish.
//  4. ota-v2: the retry installs, the VM really reboots into B, the agent
//     health-checks and commits: SUCCEEDED, v2 on partition 3.
//  5. reboot-job: the Device Client's sample reboot.json SUCCEEDS after the
//     VM is back, still v2 (the update survived a reboot).
//  6. ota-v3-bad: a raw dd of the rootfs for comparison, then OTA to v3,
//     whose health check fails: mender rolls back, the VM runs v2 again, the
//     job is FAILED with the reason.
//  7. rotation: certificate rotation with a key made in the VM.
//  8. agent-killed-during-job: systemctl kill -s KILL fleet-agent while a job
//     runs: systemd restarts the agent and the job completes.
//  9. watchdog: SIGSTOP to the agent: systemd's watchdog restarts it.
func Scenarios() []Scenario {
	return []Scenario{
		{"first-boot", 15 * time.Minute, (*Env).firstBoot},
		{"job", 5 * time.Minute, (*Env).job},
		{"power-cut-during-ota", 20 * time.Minute, (*Env).powerCutDuringOTA},
		{"ota-v2", 25 * time.Minute, (*Env).otaV2},
		{"reboot-job", 15 * time.Minute, (*Env).rebootJob},
		{"ota-v3-bad", 30 * time.Minute, (*Env).otaBad},
		{"rotation", 5 * time.Minute, (*Env).rotation},
		{"agent-killed-during-job", 5 * time.Minute, (*Env).agentKilledDuringJob},
		{"watchdog", 5 * time.Minute, (*Env).watchdog},
	}
}

var (
	reUBoot       = regexp.MustCompile(`^U-Boot 20\d\d`)
	reBootPart    = regexp.MustCompile(`^iot-fleet: booting partition (\d+) `)
	reRollingBack = regexp.MustCompile(`^iot-fleet: update on partition \d+ failed to boot`)
	reRestarting  = regexp.MustCompile(`reboot: Restarting system`)
)

// bootedPartition waits for the boot script's "booting partition N" line
// after the cursor and returns N.
func (e *Env) bootedPartition(ctx context.Context, cur *qemu.Cursor) (int, error) {
	if _, err := cur.Expect(ctx, reUBoot, e.VM.Exited()); err != nil {
		return 0, fmt.Errorf("U-Boot did not start: %w", err)
	}
	l, err := cur.Expect(ctx, reBootPart, e.VM.Exited())
	if err != nil {
		return 0, fmt.Errorf("the boot script did not choose a partition: %w", err)
	}
	return strconv.Atoi(reBootPart.FindStringSubmatch(l.Text)[1])
}

// boot starts the machine and waits until its boot script chose partition
// want and the agent started on it; what names the boot in errors.
func (e *Env) boot(ctx context.Context, want int, what string) (time.Time, error) {
	n := e.obs.agentStarts()
	cur := e.VM.Console.Cursor()
	if err := e.VM.Start(); err != nil {
		return time.Time{}, err
	}
	part, err := e.bootedPartition(ctx, cur)
	if err != nil {
		return time.Time{}, err
	}
	if part != want {
		return time.Time{}, fmt.Errorf("%s booted partition %d, want %d", what, part, want)
	}
	at, err := e.obs.waitAgentStart(ctx, n, e.VM.Exited())
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %w; console:\n%s", what, err, e.VM.Console.Tail(40))
	}
	return at, nil
}

// firstBoot starts the machine for the first time.
func (e *Env) firstBoot(ctx context.Context) error {
	start := time.Now()
	at, err := e.boot(ctx, 2, "the first boot (rootfs A)")
	if err != nil {
		return err
	}
	e.Figures.FirstBootToProvisioned = secs(at.Sub(start))
	e.Figures.Boots = append(e.Figures.Boots, e.Figures.FirstBootToProvisioned)
	e.TL.Add(at, "agent provisioned and connected as %s, %s after QEMU started", e.Thing, at.Sub(start).Round(time.Second))

	// The cloud side: the thing, in the fleet's group, with one ACTIVE
	// certificate carrying the device policy, recorded as provisioned.
	core := e.Fleet.Stack.Core
	th, err := core.Registry().Thing(e.Thing)
	if err != nil {
		return fmt.Errorf("thing %s: %w", e.Thing, err)
	}
	if !slices.Contains(th.Groups, core.Names().ThingGroup) || len(th.Principals) != 1 {
		return fmt.Errorf("thing %s: groups %v, principals %v; want group %s and one certificate", e.Thing, th.Groups, th.Principals, core.Names().ThingGroup)
	}
	cert, err := core.Registry().Certificate(th.Principals[0])
	if err != nil {
		return err
	}
	if cert.Status != simreg.CertActive || !slices.Contains(cert.Policies, core.Names().DevicePolicy) {
		return fmt.Errorf("certificate %s: status %s, policies %v", cert.ID, cert.Status, cert.Policies)
	}
	dev, err := e.Fleet.Stack.Registry.Get(ctx, e.Serial)
	if err != nil {
		return err
	}
	if dev.State != registry.StateProvisioned || dev.CertificateID != cert.ID {
		return fmt.Errorf("device registry: %s is %s with certificate %s, want provisioned with %s", e.Serial, dev.State, dev.CertificateID, cert.ID)
	}
	e.certID = cert.ID
	return nil
}

// job runs a schema 1.0 job: a runCommand step installs the test's
// handlers, a runHandler step reports what the guest runs.
func (e *Env) job(ctx context.Context) error {
	ex, err := e.requireSucceeded(ctx, "vm-setup", jobDoc(
		runCommandStep("install handlers", installHandlersCommand(), false),
		runHandlerStep("vm-info", "vm-info.sh"),
	))
	if err != nil {
		return err
	}
	if ex.StatusDetails["reason"] != "all 2 step(s) succeeded" {
		return fmt.Errorf("job vm-setup: reason %q", ex.StatusDetails["reason"])
	}
	info := parseInfo(ex.StatusDetails["stdout"])
	if err := info.expectRunning("v1", 2); err != nil {
		return err
	}
	want := map[string]string{"firstboot_ran_this_boot": "yes", "firstboot_marker": "yes", "agent_type": "notify", "data_mounted": "/dev/vda4"}
	for k, v := range want {
		if info[k] != v {
			return fmt.Errorf("guest: %s=%q, want %q (vm-info: %v)", k, info[k], v, info)
		}
	}
	e.bootID = info["boot_id"]
	e.TL.Now("guest: v1 on /dev/vda2; first-boot unit ran; fleet-agent is Type=notify; data partition on /data")
	return nil
}

func parseInfo(stdout string) GuestInfo {
	info := GuestInfo{}
	for _, line := range strings.Split(stdout, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			info[k] = strings.TrimSpace(v)
		}
	}
	return info
}

// otaDoc is the old-schema mender_install document for an artifact.
func (e *Env) otaDoc(name string) ([]byte, int64, error) {
	sum, size, err := otajob.FileSHA256(filepath.Join(e.artifactDir, name))
	if err != nil {
		return nil, 0, err
	}
	b, err := json.Marshal(map[string]string{"operation": "mender_install", "url": e.artifacts.URL(name), "sha256": sum})
	return b, size, err
}

// powerCutDuringOTA starts the v2 update and cuts the power while mender
// writes the inactive partition.
func (e *Env) powerCutDuringOTA(ctx context.Context) error {
	doc, size, err := e.otaDoc(ArtifactGood)
	if err != nil {
		return err
	}
	e.Figures.ArtifactBytes = size
	w, err := e.startJob(ctx, "ota-v2", doc)
	if err != nil {
		return err
	}
	e.otaJob = w
	// mender streams the artifact (step downloading, progress messages) and
	// writes rootfs B as it goes; cut the power well inside that.
	p, err := e.obs.waitProgress(ctx, "ota-v2", 30)
	if err != nil {
		return err
	}
	pid := e.VM.PID()
	cut := time.Now()
	if err := e.VM.Kill(); err != nil {
		return err
	}
	e.TL.Now("POWER CUT: kill -9 of QEMU (pid %d) at %d%% of mender's install", pid, *p.Percent)

	at, err := e.boot(ctx, 2, "the boot after the power cut (the update was not finished)")
	if err != nil {
		return err
	}
	e.Figures.PowerCutRecovery = secs(at.Sub(cut))
	e.Figures.Boots = append(e.Figures.Boots, secs(at.Sub(cut)))
	e.TL.Add(at, "agent back after the power cut (%s)", at.Sub(cut).Round(time.Second))

	// The job is in a defined state with the reason: either the agent
	// retries (attempt 2, reason: attempt 1 interrupted by the restart) or
	// it failed the job with the reason.
	c, err := w.wait(ctx, "the interrupted attempt's outcome", func(ex jobs.Execution) bool {
		return ex.Status.Terminal() || ex.StatusDetails["attempt"] == "2"
	})
	if err != nil {
		return err
	}
	reason := c.Exec.StatusDetails["reason"]
	if !strings.Contains(reason, "install attempt 1/") || !strings.Contains(reason, "interrupted") {
		return fmt.Errorf("after the power cut: %s; want a reason saying attempt 1 was interrupted", describeExec(c.Exec))
	}
	if c.Exec.Status.Terminal() && c.Exec.Status != protocol.JobFailed {
		return fmt.Errorf("after the power cut the job ended %s, want FAILED or a retry", c.Exec.Status)
	}
	e.TL.Now("job ota-v2 after the power cut: %s, reason %q", c.Exec.Status, reason)
	return nil
}

// otaV2 follows the update to v2 to its end (the agent's retry, or a new
// job if the interrupted one failed).
func (e *Env) otaV2(ctx context.Context) error {
	w := e.otaJob
	if w == nil {
		return fmt.Errorf("no ota-v2 job: the power-cut scenario did not run")
	}
	defer w.stop()
	if last := w.last(); last.Status == protocol.JobFailed {
		doc, _, err := e.otaDoc(ArtifactGood)
		if err != nil {
			return err
		}
		if w, err = e.startJob(ctx, "ota-v2-retry", doc); err != nil {
			return err
		}
		defer w.stop()
	}
	attempt := w.last().StatusDetails["attempt"]
	dl, err := w.wait(ctx, "downloading (attempt "+attempt+")", func(ex jobs.Execution) bool {
		return ex.StatusDetails["step"] == "downloading" && ex.StatusDetails["attempt"] == attempt
	})
	if err != nil {
		return err
	}
	n := e.obs.agentStarts()
	rb, err := w.wait(ctx, "rebooting", func(ex jobs.Execution) bool { return ex.StatusDetails["step"] == "rebooting" })
	if err != nil {
		return err
	}
	// mender's install of this attempt: from its first progress message to
	// the rebooting report.
	if first, ok := firstProgressAfter(e.obs.progressFor(w.jobID), dl.At); ok {
		e.Figures.Download = secs(first.At.Sub(dl.At))
		e.Figures.Install = secs(rb.At.Sub(first.At))
		e.TL.Now("attempt %s: artifact downloaded in %s, mender install %s", attempt, first.At.Sub(dl.At).Round(100*time.Millisecond), rb.At.Sub(first.At).Round(100*time.Millisecond))
	}
	if err := e.rebootedInto(ctx, e.VM.Console.CursorAt(0), 3, "after the update", "rootfs B"); err != nil {
		return err
	}
	done, err := w.terminal(ctx)
	if err != nil {
		return err
	}
	if done.Exec.Status != protocol.JobSucceeded || done.Exec.StatusDetails["step"] != "committed" {
		return fmt.Errorf("OTA to v2: %s, want SUCCEEDED committed", describeExec(done.Exec))
	}
	e.Figures.RebootToCommitted = secs(done.At.Sub(rb.At))
	if at, err := e.obs.waitAgentStart(ctx, n, e.VM.Exited()); err == nil {
		e.Figures.Boots = append(e.Figures.Boots, secs(at.Sub(rb.At)))
	}
	// The steps the Jobs service saw, in order.
	var steps []string
	for _, c := range w.history() {
		if s := c.Exec.StatusDetails["step"]; s != "" && (len(steps) == 0 || steps[len(steps)-1] != s) {
			steps = append(steps, s)
		}
	}
	for _, want := range [][]string{{"downloading", "rebooting", "verifying", "committed"}} {
		if !isSubsequence(want, steps) {
			return fmt.Errorf("OTA to v2: steps %v, want %v in order", steps, want)
		}
	}
	info, err := e.probe(ctx, "vm-info-after-v2")
	if err != nil {
		return err
	}
	if err := info.expectRunning("v2", 3); err != nil {
		return err
	}
	if info["firstboot_ran_this_boot"] != "no" {
		return fmt.Errorf("the first-boot unit ran again after the update (ConditionResult=%q)", info["firstboot_ran_this_boot"])
	}
	e.rootfsBytes(info)
	return nil
}

// rootfsBytes records the size of the rootfs image mender wrote (the
// partition mender filled: the whole rootfs image of the artifact).
func (e *Env) rootfsBytes(GuestInfo) {
	if e.Figures.RootfsBytes == 0 {
		e.Figures.RootfsBytes = e.base.partitionSize(3)
	}
	if e.Figures.Install > 0 && e.Figures.RootfsBytes > 0 {
		e.Figures.InstallMBps = round1(float64(e.Figures.RootfsBytes) / 1e6 / e.Figures.Install)
	}
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

func firstProgressAfter(ps []progressMsg, t time.Time) (progressMsg, bool) {
	for _, p := range ps {
		if !p.At.Before(t) {
			return p, true
		}
	}
	return progressMsg{}, false
}

func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// cursorAfterLastRestart is a console cursor at the last "Restarting
// system" line.
// rebootedInto waits, from cur, until the guest restarted, and checks
// that the boot script of its last restart chose partition want (which
// holds desc); when names the reboot in errors.
func (e *Env) rebootedInto(ctx context.Context, cur *qemu.Cursor, want int, when, desc string) error {
	if _, err := cur.Expect(ctx, reRestarting, e.VM.Exited()); err != nil {
		return fmt.Errorf("the VM did not reboot: %w", err)
	}
	part, err := e.bootedPartition(ctx, e.cursorAfterLastRestart())
	if err != nil {
		return err
	}
	if part != want {
		return fmt.Errorf("%s the machine booted partition %d, want %d (%s)", when, part, want, desc)
	}
	return nil
}

func (e *Env) cursorAfterLastRestart() *qemu.Cursor {
	lines := e.VM.Console.Lines(0)
	for i := len(lines) - 1; i >= 0; i-- {
		if reRestarting.MatchString(lines[i].Text) {
			return e.VM.Console.CursorAt(lines[i].N)
		}
	}
	return e.VM.Console.CursorAt(0)
}

// rebootJob runs the AWS IoT Device Client's sample reboot.json.
func (e *Env) rebootJob(ctx context.Context) error {
	doc, err := os.ReadFile(e.Opts.RebootDoc)
	if err != nil {
		return fmt.Errorf("the Device Client's sample reboot.json: %w", err)
	}
	n := e.obs.agentStarts()
	cur := e.VM.Console.Cursor()
	start := time.Now()
	w, err := e.startJob(ctx, "reboot", doc)
	if err != nil {
		return err
	}
	defer w.stop()
	if err := e.rebootedInto(ctx, cur, 3, "after the reboot", "v2, committed"); err != nil {
		return err
	}
	done, err := w.terminal(ctx)
	if err != nil {
		return err
	}
	// The step was interrupted by the reboot (the engine records the boot
	// id it started under) and counted as succeeded after it.
	if done.Exec.Status != protocol.JobSucceeded || done.Exec.StatusDetails["bootIdAtStepStart"] == "" {
		return fmt.Errorf("reboot job: %s, want SUCCEEDED after the reboot (bootIdAtStepStart set)", describeExec(done.Exec))
	}
	e.Figures.RebootJob = secs(done.At.Sub(start))
	if at, err := e.obs.waitAgentStart(ctx, n, e.VM.Exited()); err == nil {
		e.Figures.Boots = append(e.Figures.Boots, secs(at.Sub(start)))
	}
	info, err := e.probe(ctx, "vm-info-after-reboot")
	if err != nil {
		return err
	}
	return info.expectRunning("v2", 3)
}

// otaBad measures a raw dd of the rootfs, then installs v3, whose health
// check fails.
func (e *Env) otaBad(ctx context.Context) error {
	// dd the running v2 rootfs (partition 3) onto the inactive partition
	// 2, which the v3 install overwrites next anyway: the same bytes on the
	// same emulated disk as mender's write.
	mib := e.Figures.RootfsBytes >> 20
	if mib == 0 {
		mib = e.base.partitionSize(3) >> 20
	}
	ex, err := e.requireSucceeded(ctx, "dd-rootfs", jobDoc(runCommandStep("dd",
		fmt.Sprintf("sh,-c,dd if=/dev/vda3 of=/dev/vda2 bs=1M count=%d conv=fsync 2>&1 | tail -n 1", mib), false)))
	if err != nil {
		return err
	}
	if secs, rate, ok := parseDD(ex.StatusDetails["stdout"]); ok {
		e.Figures.DD, e.Figures.DDMBps = secs, rate
		e.TL.Now("raw dd of %d MiB in the guest: %.1f s, %.1f MB/s", mib, secs, rate)
	} else {
		return fmt.Errorf("dd: cannot read its summary from %q", ex.StatusDetails["stdout"])
	}

	doc, _, err := e.otaDoc(ArtifactBad)
	if err != nil {
		return err
	}
	w, err := e.startJob(ctx, "ota-v3-bad", doc)
	if err != nil {
		return err
	}
	defer w.stop()
	rb, err := w.wait(ctx, "rebooting", func(ex jobs.Execution) bool { return ex.StatusDetails["step"] == "rebooting" })
	if err != nil {
		return err
	}
	done, err := w.terminal(ctx)
	if err != nil {
		return err
	}
	if done.Exec.Status != protocol.JobFailed || done.Exec.StatusDetails["step"] != "rolled_back" ||
		!strings.Contains(done.Exec.StatusDetails["reason"], "health check") {
		return fmt.Errorf("OTA to v3-bad: %s, want FAILED rolled_back with the health check's reason", describeExec(done.Exec))
	}
	e.TL.Now("v3-bad rolled back: %q", done.Exec.StatusDetails["reason"])
	// The console: v3 booted from partition 2, then (after the rollback)
	// partition 3 again.
	parts := e.partitionsBootedSince(rb.At)
	if len(parts) < 2 || parts[0] != 2 || parts[len(parts)-1] != 3 {
		return fmt.Errorf("boots since the v3 install: partitions %v, want 2 (v3) then 3 (v2 again)", parts)
	}
	e.Figures.Rollback = secs(done.At.Sub(rb.At))
	info, err := e.probe(ctx, "vm-info-after-rollback")
	if err != nil {
		return err
	}
	return info.expectRunning("v2", 3)
}

// partitionsBootedSince lists the partitions the boot script chose since t.
func (e *Env) partitionsBootedSince(t time.Time) []int {
	var out []int
	for _, l := range e.VM.Console.Lines(0) {
		if l.At.Before(t) {
			continue
		}
		if m := reBootPart.FindStringSubmatch(l.Text); m != nil {
			n, _ := strconv.Atoi(m[1])
			out = append(out, n)
		}
	}
	return out
}

var reDD = regexp.MustCompile(`copied, ([0-9.]+) s, ([0-9.]+) ([kMG]B)/s`)

// parseDD reads GNU dd's summary line.
func parseDD(out string) (seconds, mbps float64, ok bool) {
	m := reDD.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, false
	}
	seconds, _ = strconv.ParseFloat(m[1], 64)
	rate, _ := strconv.ParseFloat(m[2], 64)
	switch m[3] {
	case "kB":
		rate /= 1000
	case "GB":
		rate *= 1000
	}
	return seconds, rate, true
}

// rotation rotates the VM's certificate: a new key made in the VM, a new
// certificate, the old one retired.
func (e *Env) rotation(ctx context.Context) error {
	start := time.Now()
	rep, err := e.Fleet.Stack.RequestRotation(ctx, certscan.Request{ThingName: e.Thing})
	if err != nil {
		return err
	}
	id, ok := rep.Requested[e.Thing]
	if !ok {
		return fmt.Errorf("rotation not requested for %s: %+v", e.Thing, rep)
	}
	d, err := e.Fleet.Stack.WaitRotation(ctx, e.Serial, id)
	if err != nil {
		return err
	}
	if d.LastRotationStatus != registry.RotationCompleted || d.CertificateID == e.certID || d.RetiredCertificateID != e.certID {
		return fmt.Errorf("rotation %s: %+v", id, d)
	}
	// The device uses the new certificate.
	if err := pollUntil(ctx, "connected with the new certificate", func() bool {
		for _, c := range e.Fleet.Stack.Core.Clients() {
			if c.ClientID == e.Thing && c.CertificateID == d.CertificateID {
				return true
			}
		}
		return false
	}); err != nil {
		return err
	}
	e.Figures.Rotation = secs(time.Since(start))
	e.TL.Now("certificate rotated: %s → %s", short(e.certID), short(d.CertificateID))
	e.certID = d.CertificateID
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}

// agentKilledDuringJob: a job whose first step has systemd kill the agent
// (SIGKILL, the whole unit: `systemctl kill -s KILL fleet-agent`, started
// outside the agent by systemd-run) while the step runs. systemd restarts
// the agent, which reports the step interrupted (ignored by the document)
// and runs the second step: the job SUCCEEDS. The same first step installs
// a runtime drop-in shortening the watchdog (WatchdogSec=20) for the next
// scenario; it applies from the restart and is gone after a reboot.
func (e *Env) agentKilledDuringJob(ctx context.Context) error {
	n := e.obs.agentStarts()
	start := time.Now()
	cmd := "sh,-c,set -e; mkdir -p /run/systemd/system/fleet-agent.service.d; " +
		"printf '[Service]\\nWatchdogSec=20\\n' > /run/systemd/system/fleet-agent.service.d/90-vm-test-watchdog.conf; " +
		"systemctl daemon-reload; " +
		"systemd-run --quiet --on-active=3 --timer-property=AccuracySec=100ms --unit=vm-test-kill-agent systemctl kill -s KILL fleet-agent.service; " +
		"sleep 120"
	w, err := e.startJob(ctx, "agent-killed", jobDoc(
		runCommandStep("killed with the agent", cmd, true),
		runHandlerStep("vm-info", "vm-info.sh"),
	))
	if err != nil {
		return err
	}
	defer w.stop()
	at, err := e.obs.waitAgentStart(ctx, n, e.VM.Exited())
	if err != nil {
		return err
	}
	e.TL.Add(at, "agent restarted by systemd after SIGKILL")
	done, err := w.terminal(ctx)
	if err != nil {
		return err
	}
	reason := done.Exec.StatusDetails["reason"]
	if done.Exec.Status != protocol.JobSucceeded || !strings.Contains(reason, "agent restarted during step") {
		return fmt.Errorf("job agent-killed: %s, want SUCCEEDED with the first step's failure (agent restarted) ignored", describeExec(done.Exec))
	}
	info := parseInfo(done.Exec.StatusDetails["stdout"])
	if r, _ := strconv.Atoi(info["agent_restarts"]); r < 1 {
		return fmt.Errorf("systemd counts %q restarts of fleet-agent, want at least 1", info["agent_restarts"])
	}
	if info["agent_watchdog_usec"] != "20s" {
		return fmt.Errorf("the restarted agent runs with WatchdogUSec=%q, want 20s", info["agent_watchdog_usec"])
	}
	e.Figures.KillRestart = secs(done.At.Sub(start))
	e.TL.Now("job agent-killed SUCCEEDED: %q", reason)
	return nil
}

// watchdog stops the agent with SIGSTOP (from a systemd timer, a few
// seconds after the job that set it up ended): the agent stops sending
// WATCHDOG=1, systemd aborts it and restarts it.
func (e *Env) watchdog(ctx context.Context) error {
	n := e.obs.agentStarts()
	if _, err := e.requireSucceeded(ctx, "agent-stop", jobDoc(runCommandStep("stop the agent in 5s",
		"systemd-run,--quiet,--on-active=5,--unit=vm-test-stop-agent,systemctl,kill,-s,STOP,--kill-whom=main,fleet-agent.service", false))); err != nil {
		return err
	}
	stopAt := time.Now().Add(5 * time.Second)
	e.TL.Now("SIGSTOP to fleet-agent scheduled in the guest in 5s (WatchdogSec=20)")
	at, err := e.obs.waitAgentStart(ctx, n, e.VM.Exited())
	if err != nil {
		return err
	}
	e.Figures.WatchdogRestart = secs(at.Sub(stopAt))
	e.TL.Add(at, "agent restarted after the watchdog fired (%s after SIGSTOP)", at.Sub(stopAt).Round(time.Second))
	ex, err := e.requireSucceeded(ctx, "watchdog-journal", jobDoc(runCommandStep("journal",
		"sh,-c,journalctl -b -u fleet-agent.service --no-pager -o cat | grep -E 'Watchdog timeout|Main process exited' | tail -n 4", false)))
	if err != nil {
		return err
	}
	if !strings.Contains(ex.StatusDetails["stdout"], "Watchdog timeout") {
		return fmt.Errorf("the journal does not show the watchdog firing: %q", ex.StatusDetails["stdout"])
	}
	return nil
}

// pollUntil polls cond every 100ms until it holds or ctx ends.
func pollUntil(ctx context.Context, what string, cond func() bool) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting until %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// RunScenario runs s within its timeout; the timeline's events carry its
// name.
func (e *Env) RunScenario(ctx context.Context, s Scenario) error {
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	e.TL.Scenario(s.Name)
	defer e.TL.Scenario("")
	start := time.Now()
	e.TL.Now("--- %s", s.Name)
	if err := s.Run(e, ctx); err != nil {
		e.TL.Now("FAILED after %s: %v", time.Since(start).Round(time.Second), firstLine(err.Error()))
		return fmt.Errorf("scenario %s: %w", s.Name, err)
	}
	e.TL.Now("passed in %s", time.Since(start).Round(time.Second))
	return nil
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}
