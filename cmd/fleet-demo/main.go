// Command fleet-demo runs iot-fleet's main job on one machine, with no AWS
// account: it starts the local IoT Core with the stack's real policies and
// Lambda handlers, builds fleet-agent, starts a small fleet of real agent
// processes (one with a serial that is not on the allowlist), and prints a
// timeline of what happens. The operator's actions go through fleetctl's
// library (internal/fleetctl, the code of cmd/fleetctl) against the local
// IoT Core's AWS endpoint, and the demo prints the fleetctl command an
// operator would type for each. It exits 0 only if everything it shows
// actually happened.
//
//	go run ./cmd/fleet-demo [--devices 3] [--keep] [--timeout 3m]
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/fleetctl"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleet-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	devices := fs.Int("devices", 3, "allowlisted devices to start (1-20)")
	keep := fs.Bool("keep", false, "keep the working directory (agent logs, state) after the demo")
	timeout := fs.Duration("timeout", 3*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *devices < 1 || *devices > 20 {
		fmt.Fprintln(stderr, "fleet-demo: --devices must be between 1 and 20")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	dir, err := os.MkdirTemp("", "fleet-demo-*")
	if err != nil {
		fmt.Fprintf(stderr, "fleet-demo: %v\n", err)
		return 1
	}
	d := &demo{out: stdout, start: time.Now(), dir: dir}
	err = d.run(ctx, *devices)
	d.shutdown()
	if *keep || err != nil {
		fmt.Fprintf(stdout, "\nworking directory (agent logs and state): %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	if err != nil {
		fmt.Fprintf(stdout, "\nDEMO FAILED: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "\nDEMO PASSED: every step above happened (%s)\n", time.Since(d.start).Round(100*time.Millisecond))
	return 0
}

type demo struct {
	out    io.Writer
	start  time.Time
	dir    string
	fleet  *harness.Fleet
	aws    *harness.LocalAWS // the local AWS endpoint fleetctl talks to
	ctl    *fleetctl.Fleet   // fleetctl's operations, in-process
	agents []*harness.Agent  // the allowlisted devices, then the stranger
	ota    []*harness.OTADevice
	ssm    *harness.Agent
	stops  []*harness.Agent // every started agent, stopped at the end
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "[%6.2fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

// op prints the fleetctl command line an operator would type for the
// next step.
func (d *demo) op(args string) {
	fmt.Fprintf(d.out, "[%6.2fs] $ fleetctl --local %s %s\n", time.Since(d.start).Seconds(), d.aws.OutputsDir, args)
}

func (d *demo) shutdown() {
	for _, a := range d.stops {
		_ = a.Stop(10 * time.Second)
	}
	if d.fleet != nil {
		d.fleet.Close()
	}
}

// serial makes the i-th demo serial (16 hex digits, like a Raspberry Pi's).
func serial(i int) string { return fmt.Sprintf("10000000de70%04x", i) }

func (d *demo) run(ctx context.Context, n int) error {
	d.say("building fleet-agent")
	bin, err := harness.BuildAgent(ctx, d.dir)
	if err != nil {
		return err
	}
	allowed := make([]string, n)
	for i := range allowed {
		allowed[i] = serial(i + 1)
	}
	stranger := "10000000deadbeef"
	otaSerials := []string{"10000000de70a001", "10000000de70a002"}
	const ssmSerial = "10000000de705501"
	d.say("starting the local IoT Core (mutual TLS, the stack's claim and device policies, real pre-provisioning hook)")
	d.fleet, err = harness.Start(ctx, harness.Options{
		Dir: d.dir, AgentBin: bin, JobMinute: 10 * time.Second,
		Allowlist: "# demo allowlist\n" + strings.Join(append(append(append([]string{}, allowed...), otaSerials...), ssmSerial), "\n") + "\n",
	})
	if err != nil {
		return err
	}
	if d.aws, err = d.fleet.ServeAWS(); err != nil {
		return err
	}
	if d.ctl, err = fleetctl.Connect(ctx, fleetctl.Outputs(d.aws.Outputs), ""); err != nil {
		return err
	}
	d.ctl.Poll = 200 * time.Millisecond
	d.say("the local IoT Core serves AWS's APIs on %s (IoT, Lambda, DynamoDB, S3); fleetctl --local %s uses it", d.aws.URL, d.aws.OutputsDir)
	d.say("allowlist.txt deployed: %d serials (%s; %s for the OTA demo; %s for SSM)", n+len(otaSerials)+1, strings.Join(allowed, ", "), strings.Join(otaSerials, ", "), ssmSerial)

	for i, sn := range append(append([]string{}, allowed...), stranger) {
		a, err := d.fleet.NewAgent(fmt.Sprintf("device-%d", i+1), harness.AgentOptions{Serial: sn})
		if err != nil {
			return err
		}
		if err := a.Start(); err != nil {
			return err
		}
		d.agents = append(d.agents, a)
		d.stops = append(d.stops, a)
	}
	d.say("started %d fleet-agent processes with the shared claim certificate (serial %s is NOT on the allowlist)", len(d.agents), stranger)

	if err := d.provisioning(ctx, n); err != nil {
		return err
	}
	if err := d.clone(ctx); err != nil {
		return err
	}
	if err := d.groupJob(ctx, n); err != nil {
		return err
	}
	if err := d.otaUpdate(ctx, otaSerials); err != nil {
		return err
	}
	if err := d.rotation(ctx); err != nil {
		return err
	}
	if err := d.ssmToggle(ctx, ssmSerial); err != nil {
		return err
	}
	if err := d.revocation(ctx); err != nil {
		return err
	}
	if err := d.emergencyRevoke(ctx); err != nil {
		return err
	}
	return d.devices(ctx)
}

// devices lists the fleet as fleetctl shows it.
func (d *demo) devices(ctx context.Context) error {
	d.op("devices list")
	views, err := d.ctl.ListDevices(ctx)
	if err != nil {
		return err
	}
	for _, v := range views {
		d.say("device       %s %-11s %-20s certificate %-7s connectivity %s", v.Serial, v.State, orDash(v.ThingName), orDash(v.CertificateStatus), v.Connectivity)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (d *demo) provisioning(ctx context.Context, n int) error {
	pending := map[*harness.Agent]bool{}
	for _, a := range d.agents[:n] {
		pending[a] = true
	}
	err := harness.Poll(ctx, "devices to provision", func() bool {
		for a := range pending {
			if d.fleet.Connected(a.ThingName()) {
				id, _, _ := a.Identity()
				d.say("provisioned  %-20s key made on the device, certificate %s…, connected as itself", a.ThingName(), short(id.CertificateID))
				delete(pending, a)
			}
		}
		return len(pending) == 0
	})
	if err != nil {
		return fmt.Errorf("%w (%s)", err, d.tails(pending))
	}
	stranger := d.agents[n]
	if err := stranger.WaitLog(ctx, "AccessDenied"); err != nil {
		return err
	}
	if _, err := d.fleet.Stack.Core.Registry().Thing(stranger.ThingName()); err == nil {
		return errors.New("the unknown serial got a thing")
	}
	d.say("denied       serial %s: the pre-provisioning hook refused it (not on the allowlist); it backs off and holds no identity", stranger.Serial)
	return nil
}

// clone plays an attacker who copied the claim certificate off an SD card
// and read a provisioned device's serial off its board: a second agent
// with its own key asks to provision that serial. The hook denies it and
// the device keeps its certificate and its connection.
func (d *demo) clone(ctx context.Context) error {
	victim := d.agents[0]
	id, _, err := victim.Identity()
	if err != nil {
		return err
	}
	c, err := d.fleet.NewAgent("clone-of-device-1", harness.AgentOptions{Serial: victim.Serial})
	if err != nil {
		return err
	}
	if err := c.Start(); err != nil {
		return err
	}
	d.stops = append(d.stops, c)
	if err := c.WaitLog(ctx, "AccessDenied"); err != nil {
		return err
	}
	if err := c.Stop(10 * time.Second); err != nil {
		return err
	}
	th, err := d.fleet.Stack.Core.Registry().Thing(victim.ThingName())
	if err != nil {
		return err
	}
	cert, err := d.fleet.Stack.Core.Registry().Certificate(id.CertificateID)
	if err != nil {
		return err
	}
	if len(th.Principals) != 1 || th.Principals[0] != id.CertificateID || cert.Status != "ACTIVE" || !d.fleet.Connected(victim.ThingName()) {
		return fmt.Errorf("after the clone's attempt %s has principals %v, certificate %s, connected %v", victim.ThingName(), th.Principals, cert.Status, d.fleet.Connected(victim.ThingName()))
	}
	d.say("denied       a clone of serial %s (claim certificate + the serial, its own key): already provisioned; %s keeps certificate %s… (ACTIVE, still connected)", victim.Serial, victim.ThingName(), short(id.CertificateID))
	return nil
}

const demoJob = `{
  "version": "1.0",
  "includeStdOut": "true",
  "steps": [
    {"action": {"name": "whoami", "type": "runCommand", "input": {"command": "uname,-sm"}}},
    {"action": {"name": "optional-check", "type": "runCommand", "ignoreStepFailure": "true",
                "input": {"command": "/bin/sh,-c,echo disk check skipped in the demo >&2; exit 1"}}}
  ],
  "finalStep": {"action": {"name": "report", "type": "runCommand", "input": {"command": "/bin/echo,job done\\, all good"}}}
}`

// escapeJob is a job document a device must refuse: a handler outside the
// handler directory.
const escapeJob = `{"version": "1.0", "steps": [{"action": {"name": "escape", "type": "runHandler", "input": {"handler": "../../bin/sh", "args": ["-c", "id"]}}}]}`

func (d *demo) groupJob(ctx context.Context, n int) error {
	d.op("jobs create --document escape.json")
	err := fleetctl.CheckDocument([]byte(escapeJob), "")
	if err == nil {
		return errors.New("the agent's parser accepted a handler outside the handler directory")
	}
	d.say("refused      escape.json before anything was created: %v", err)

	group := d.fleet.Stack.Core.Names().ThingGroup
	d.op("jobs create --document demo-hello.json --job-id demo-hello --group " + group)
	if err := fleetctl.CheckDocument([]byte(demoJob), ""); err != nil {
		return err
	}
	targets, err := d.ctl.Targets(ctx, []string{group}, nil)
	if err != nil {
		return err
	}
	if _, err := d.ctl.CreateJob(ctx, fleetctl.JobSpec{JobID: "demo-hello", Document: []byte(demoJob), Targets: targets}); err != nil {
		return err
	}
	d.say("job demo-hello created for thing group %s (2 steps, one allowed to fail, and a final step)", group)
	d.op("jobs watch demo-hello")
	v, err := d.ctl.WatchJob(ctx, "demo-hello", nil)
	if err != nil {
		return err
	}
	if len(v.Executions) != n {
		return fmt.Errorf("job ran on %d devices, want %d", len(v.Executions), n)
	}
	for _, e := range v.Executions {
		d.say("job result   %-20s %-9s %s | stdout: %s", e.ThingName, e.Status, e.StatusDetails["reason"], strings.TrimSpace(e.StatusDetails["stdout"]))
		if e.Status != string(protocol.JobSucceeded) {
			return fmt.Errorf("job on %s ended %s", e.ThingName, e.Status)
		}
	}
	return nil
}

func (d *demo) revocation(ctx context.Context) error {
	victim := d.agents[0]
	var keep []string
	for _, a := range d.agents[1 : len(d.agents)-1] {
		keep = append(keep, a.Serial)
	}
	for _, o := range d.ota {
		keep = append(keep, o.Serial)
	}
	if d.ssm != nil {
		keep = append(keep, d.ssm.Serial)
	}
	id, _, err := victim.Identity()
	if err != nil {
		return err
	}
	// A tired operator deploys an emptied allowlist.txt: revocation is
	// permanent, so fleetctl's diff (the pull request's check) and the
	// sync refuse it, and nothing changes.
	d.op("allowlist diff allowlist.txt   # every serial deleted by mistake")
	plan, err := d.ctl.PlanAllowlist(ctx, "", nil, allowlist.Limits{})
	if err != nil {
		return err
	}
	if !plan.Refused {
		return errors.New("fleetctl allowlist diff accepted an empty allowlist")
	}
	d.say("refused      by allowlist diff: %s", plan.Reason)
	if _, err := d.fleet.Stack.DeployAllowlist(ctx, []byte("# every serial deleted by mistake\n")); err == nil {
		return errors.New("the allowlist sync accepted an empty allowlist")
	}
	for _, a := range d.agents[:len(d.agents)-1] {
		if !d.fleet.Connected(a.ThingName()) {
			return fmt.Errorf("%s disconnected after the refused empty allowlist", a.ThingName())
		}
	}
	d.say("refused      an empty allowlist.txt: the sync revokes nothing (an empty file never revokes; a large removal needs confirm-revocations)")
	entries := make([]allowlist.Entry, 0, len(keep))
	for _, sn := range keep {
		entries = append(entries, allowlist.Entry{Serial: sn})
	}
	d.op("allowlist diff allowlist.txt   # " + victim.Serial + " removed")
	if plan, err = d.ctl.PlanAllowlist(ctx, "", entries, allowlist.Limits{}); err != nil {
		return err
	}
	if plan.Refused || len(plan.Remove) != 1 || plan.Remove[0].Serial != victim.Serial {
		return fmt.Errorf("allowlist diff: refused %v, revokes %d", plan.Refused, len(plan.Remove))
	}
	d.say("plan         revokes 1 device(s): %s %s (limit %d per sync)", victim.Serial, victim.ThingName(), plan.Limit)
	res, err := d.fleet.Stack.DeployAllowlist(ctx, []byte(strings.Join(keep, "\n")+"\n"))
	if err != nil {
		return err
	}
	if res.Revoked != 1 {
		return fmt.Errorf("allowlist sync revoked %d devices, want 1", res.Revoked)
	}
	cert, err := d.fleet.Stack.Core.Registry().Certificate(id.CertificateID)
	if err != nil {
		return err
	}
	if cert.Status != "REVOKED" {
		return fmt.Errorf("certificate of %s is %s after revocation", victim.ThingName(), cert.Status)
	}
	if _, err := d.fleet.Stack.Core.Registry().Thing(victim.ThingName()); err == nil {
		return fmt.Errorf("thing %s still exists after revocation", victim.ThingName())
	}
	if err := harness.Poll(ctx, victim.ThingName()+" disconnected", func() bool { return !d.fleet.Connected(victim.ThingName()) }); err != nil {
		return err
	}
	d.say("revoked      %-20s removed from allowlist.txt: certificate %s, thing deleted, connection closed", victim.ThingName(), cert.Status)
	return nil
}

// otaUpdate runs a full-system update (mender install → reboot → commit or
// rollback) on two more devices. Their mender client is the fake one
// (A/B partitions) and the test plays the reboots; on the second device the
// new partition does not boot, so the commit fails and the agent rolls back.
func (d *demo) otaUpdate(ctx context.Context, serials []string) error {
	fake, err := harness.BuildFakeMender(ctx, d.dir)
	if err != nil {
		return err
	}
	for i, sn := range serials {
		o, err := d.fleet.NewOTADevice(fmt.Sprintf("ota-%d", i+1), sn, fake, map[string]any{"artifactSizeMiB": 16}, nil)
		if err != nil {
			return err
		}
		// Artifacts come from the local artifacts bucket (plain HTTP on
		// loopback) by the presigned URL the Jobs service gives.
		if err := o.Reconfigure(func(c *config.Config) {
			c.OTA.AllowedHosts = []string{d.aws.ArtifactsHost}
			c.OTA.AllowHTTP = true
		}); err != nil {
			return err
		}
		if err := o.Start(); err != nil {
			return err
		}
		d.ota = append(d.ota, o)
		d.stops = append(d.stops, o.Agent)
	}
	var things []string
	for _, o := range d.ota {
		if err := o.WaitConnected(ctx); err != nil {
			return err
		}
		things = append(things, o.ThingName())
	}
	d.say("provisioned  %s for the OTA demo (mender client with A/B partitions)", strings.Join(things, ", "))
	artifact := filepath.Join(d.dir, "rpi-os-2026.12.mender")
	content := make([]byte, 512<<10)
	if _, err := rand.Read(content); err != nil {
		return err
	}
	if err := os.WriteFile(artifact, content, 0o644); err != nil {
		return err
	}
	d.op("ota create --artifact rpi-os-2026.12.mender --job-id demo-ota --thing " + strings.Join(things, " --thing "))
	targets, err := d.ctl.Targets(ctx, nil, things)
	if err != nil {
		return err
	}
	plan, err := d.ctl.CreateOTA(ctx, fleetctl.OTASpec{JobID: "demo-ota", ArtifactFile: artifact, Targets: targets, AbortThresholdPercent: 20, AbortMinExecuted: 5}, false)
	if err != nil {
		return err
	}
	d.say("job demo-ota created: mender_install of s3://%s/%s (sha256 %s…, uploaded to the local S3); each device gets its own presigned URL", plan.Bucket, plan.Key, plan.SHA256[:12])
	for _, o := range d.ota {
		if err := o.WaitRebootRequests(ctx, 1); err != nil {
			return err
		}
		v, err := d.ctl.JobStatus(ctx, "demo-ota")
		if err != nil {
			return err
		}
		step := ""
		for _, e := range v.Executions {
			if e.ThingName == o.ThingName() {
				step = e.StatusDetails["step"]
			}
		}
		d.say("ota          %-20s installed to the inactive partition; job step %q; asks for a reboot", o.ThingName(), step)
	}
	broken := d.ota[1]
	if err := broken.SetScenario(map[string]any{"artifactSizeMiB": 16, "bootedOld": true}); err != nil {
		return err
	}
	for _, o := range d.ota {
		if err := o.Reboot(); err != nil {
			return err
		}
	}
	d.say("ota          rebooted both devices (kill -9 + restart); %s's new partition fails to boot, so it comes back on the old one", broken.ThingName())
	d.op("ota watch demo-ota")
	v, err := d.ctl.WatchJob(ctx, "demo-ota", nil)
	if err != nil {
		return err
	}
	want := map[string]string{d.ota[0].ThingName(): string(protocol.JobSucceeded), broken.ThingName(): string(protocol.JobFailed)}
	wantStep := map[string]string{d.ota[0].ThingName(): "committed", broken.ThingName(): "rolled_back"}
	for _, e := range v.Executions {
		d.say("ota result   %-20s %-9s step=%s %s", e.ThingName, e.Status, e.StatusDetails["step"], e.StatusDetails["reason"])
		if e.Status != want[e.ThingName] || e.StatusDetails["step"] != wantStep[e.ThingName] {
			return fmt.Errorf("OTA on %s ended %s step %q, want %s step %q", e.ThingName, e.Status, e.StatusDetails["step"], want[e.ThingName], wantStep[e.ThingName])
		}
	}
	return nil
}

// rotation rotates one device's certificate on demand (docs/rotation.md):
// a new key made on the device, the old certificate retired only after the
// device connected with the new one.
func (d *demo) rotation(ctx context.Context) error {
	// The second allowlisted device (the only one with --devices 1; the
	// last agent is the stranger, which holds no certificate).
	a := d.agents[min(1, len(d.agents)-2)]
	old, _, err := a.Identity()
	if err != nil {
		return err
	}
	d.op("rotate " + a.ThingName())
	rep, err := d.ctl.RequestRotation(ctx, a.ThingName(), "")
	if err != nil {
		return err
	}
	id, ok := rep.Requested[a.ThingName()]
	if !ok {
		return fmt.Errorf("rotation of %s not requested: %+v", a.ThingName(), rep)
	}
	d.say("rotation     %-20s requested on cmd/fleet/%s/rotate/request", a.ThingName(), a.ThingName())
	rotations, err := d.ctl.WaitRotations(ctx, rep.Requested)
	if err != nil {
		return err
	}
	rec, err := d.fleet.Stack.Registry.Get(ctx, a.Serial)
	if err != nil {
		return err
	}
	if len(rotations) != 1 || rotations[0].Status != string(registry.RotationCompleted) || rec.LastRotationID != id {
		return fmt.Errorf("rotation of %s: %+v", a.ThingName(), rotations)
	}
	if rec.LastRotationStatus != registry.RotationCompleted {
		return fmt.Errorf("rotation of %s ended %s", a.ThingName(), rec.LastRotationStatus)
	}
	if _, err := d.fleet.Stack.Core.Registry().Certificate(old.CertificateID); err == nil {
		return fmt.Errorf("old certificate of %s still exists after the rotation", a.ThingName())
	}
	if err := harness.Poll(ctx, a.ThingName()+" connected with its new certificate", func() bool {
		id, _, _ := a.Identity()
		return id.CertificateID == rec.CertificateID && d.fleet.Connected(a.ThingName())
	}); err != nil {
		return err
	}
	d.say("rotated      %-20s certificate %s… -> %s… (new key made on the device, valid until %s); the old one was deleted only after the device connected with the new one",
		a.ThingName(), short(old.CertificateID), short(rec.CertificateID), rec.CertNotAfter.Format("2006-01-02"))
	return nil
}

// ssmToggle turns AWS Systems Manager on for one device and off again, as
// an operator would with the toggle Lambda. The device's SSM tooling is a
// fake (scripts recording their arguments); the activation, the
// registration event and the registry are the real handlers' work.
func (d *demo) ssmToggle(ctx context.Context, serial string) error {
	host, err := harness.NewFakeSSMHost(filepath.Join(d.dir, "ssm"))
	if err != nil {
		return err
	}
	a, err := d.fleet.NewAgent("ssm-device", harness.AgentOptions{Serial: serial, Configure: func(c *config.Config) { c.SSM = host.Config }})
	if err != nil {
		return err
	}
	if err := a.Start(); err != nil {
		return err
	}
	d.ssm = a
	d.stops = append(d.stops, a)
	if err := a.WaitConnected(ctx); err != nil {
		return err
	}
	w, err := d.fleet.Stack.WatchSSMStatus(ctx)
	if err != nil {
		return err
	}
	defer w.Close()

	d.op("ssm on " + serial)
	act, err := d.toggle(ctx, serial, ssmtoggle.ActionActivate)
	if err != nil {
		return err
	}
	for _, x := range d.fleet.Stack.SSM.Service.Activations() {
		if x.ID == act.ActivationID && x.Limit != 1 {
			return fmt.Errorf("activation %s allows %d registrations, want 1", x.ID, x.Limit)
		}
	}
	d.say("ssm          %-20s activation %s created (limit 1, expires %s); code sent on cmd/fleet/%s/ssm, never stored",
		a.ThingName(), act.ActivationID, act.ActivationExpiresAt.Format(time.RFC3339), a.ThingName())
	// The device installs the SSM agent and registers it; Systems Manager
	// (local, fake) answers it.
	if err := harness.Poll(ctx, "the device to register its SSM agent", func() bool { return len(host.RegisterCalls()) > 0 }); err != nil {
		return err
	}
	call := host.RegisterCalls()[0]
	reg, err := d.fleet.Stack.SSM.Register(ctx, call.ActivationID, call.Code)
	if err != nil {
		return err
	}
	if err := host.Answer(call.ActivationID, reg.InstanceID); err != nil {
		return err
	}
	results, err := d.ctl.WaitSSMRegistered(ctx, []string{serial})
	if err != nil {
		return err
	}
	if len(results) != 1 || results[0].State != ssmstate.StateActive || results[0].InstanceID != reg.InstanceID {
		return fmt.Errorf("ssm on: %+v", results)
	}
	if _, err := w.Wait(ctx, a.ThingName(), func(s protocol.SSMStatus) bool { return s.State == protocol.SSMStateRegistered }); err != nil {
		return err
	}
	d.say("ssm          %-20s SSM agent installed and registered as managed node %s (registry: %s); open a session: %s",
		a.ThingName(), results[0].InstanceID, reg.Outcome.Result, d.ctl.StartSessionCommand(results[0].InstanceID))

	d.op("ssm off " + serial)
	off, err := d.toggle(ctx, serial, ssmtoggle.ActionDeactivate)
	if err != nil {
		return err
	}
	if _, err := w.Wait(ctx, a.ThingName(), func(s protocol.SSMStatus) bool { return s.State == protocol.SSMStateDeactivated }); err != nil {
		return err
	}
	d.say("ssm          %-20s deactivated: %s; the device stopped, cleared and removed its SSM agent", a.ThingName(), off.Message)
	return nil
}

func (d *demo) toggle(ctx context.Context, serial, action string) (ssmtoggle.Result, error) {
	resp, err := d.ctl.SSM(ctx, action, serial, "")
	if err != nil {
		return ssmtoggle.Result{}, err
	}
	if len(resp.Results) != 1 || !resp.Results[0].OK {
		return ssmtoggle.Result{}, fmt.Errorf("ssm %s: %+v", action, resp.Results)
	}
	return resp.Results[0], nil
}

// emergencyRevoke takes a device off the fleet at once, without an
// allowlist deploy, recorded with a reason; its serial stays listed but
// the next deploy does not admit it again.
func (d *demo) emergencyRevoke(ctx context.Context) error {
	if _, ok := d.aws.Outputs["revokeLambda"]; !ok {
		return errors.New("the local stack has no revoke Lambda")
	}
	a := d.ota[0].Agent
	id, _, err := a.Identity()
	if err != nil {
		return err
	}
	d.op("revoke " + a.Serial + ` --reason "INC-4711 device stolen"`)
	resp, err := d.ctl.Revoke(ctx, a.Serial, "INC-4711 device stolen", "demo-operator")
	if err != nil {
		return err
	}
	if resp.State != string(registry.StateRevoked) || resp.CertificateID != id.CertificateID {
		return fmt.Errorf("revoke %s: %+v", a.Serial, resp)
	}
	if err := harness.Poll(ctx, a.ThingName()+" disconnected", func() bool { return !d.fleet.Connected(a.ThingName()) }); err != nil {
		return err
	}
	d.say("revoked      %-20s at once (no deploy): certificate %s… revoked, thing deleted, connection closed; recorded with its reason", a.ThingName(), short(resp.CertificateID))
	return nil
}

func (d *demo) tails(agents map[*harness.Agent]bool) string {
	var b strings.Builder
	for a := range agents {
		fmt.Fprintf(&b, "\n--- %s ---\n%s", a.Serial, a.LogTail(15))
	}
	return b.String()
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
