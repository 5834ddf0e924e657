package vm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// The test reaches into the guest only as an operator reaches a Pi: with
// jobs. The handlers it needs are installed by a job's runCommand step
// into the agent's handler directory (on the data partition, so they
// survive updates).

// HandlerDir is the agent's handler directory in the VM image (the
// default, <stateDir>/handlers).
const HandlerDir = "/var/lib/fleet-agent/handlers"

// vmInfoHandler prints what the virtual Pi runs, one key=value per line
// (read from the job's stdout).
const vmInfoHandler = `#!/bin/sh
# vm-info.sh: what this virtual Pi runs, as key=value lines.
env_get() { fw_printenv -n "$1" 2>/dev/null; }
echo "release=$(cat /etc/iot-fleet-release 2>/dev/null)"
echo "artifact=$(mender show-artifact 2>/dev/null)"
echo "root=$(sed -n 's/.*root=\([^ ]*\).*/\1/p' /proc/cmdline)"
echo "boot_part=$(env_get mender_boot_part)"
echo "upgrade_available=$(env_get upgrade_available)"
echo "bootcount=$(env_get bootcount)"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
echo "firstboot_ran_this_boot=$(systemctl show fleet-firstboot.service -p ConditionResult --value)"
echo "firstboot_marker=$(test -e /var/lib/fleet-agent/.firstboot-done && echo yes || echo no)"
echo "agent_type=$(systemctl show fleet-agent.service -p Type --value)"
echo "agent_restarts=$(systemctl show fleet-agent.service -p NRestarts --value)"
echo "agent_watchdog_usec=$(systemctl show fleet-agent.service -p WatchdogUSec --value)"
echo "data_mounted=$(findmnt -n -o SOURCE /data 2>/dev/null)"
echo "fw_env=$(fw_printenv mender_boot_part 2>&1 | tr '\n' ' ')"
`

// rebootHandler stands in for the AWS IoT Device Client's sample
// reboot.sh (its sample reboot.json names it): it asks systemd to reboot
// and waits for the reboot to take it down. (reboot returns at once; a
// handler that exited then would race its own report against the
// shutdown.) The agent reports the step after the reboot: the boot id
// changed, the step succeeded.
const rebootHandler = `#!/bin/sh
set -e
echo "Running reboot.sh"
user=$1
echo "Username: $user"
if command -v sudo >/dev/null; then
  sudo -n -u "${user:-root}" -- /sbin/reboot
else
  echo "WARNING: sudo command not found"
  /sbin/reboot
fi
exec sleep 600
`

// installHandlersCommand is a runCommand value that installs the handlers
// (base64 has no commas, which runCommand would split on).
func installHandlersCommand() string {
	var b strings.Builder
	b.WriteString("sh,-c,set -e; install -d -m 0700 " + HandlerDir)
	for name, script := range map[string]string{"vm-info.sh": vmInfoHandler, "reboot.sh": rebootHandler} {
		enc := base64.StdEncoding.EncodeToString([]byte(script))
		fmt.Fprintf(&b, "; echo %s | base64 -d > %s/%s.tmp; chmod 0700 %s/%s.tmp; mv %s/%s.tmp %s/%s",
			enc, HandlerDir, name, HandlerDir, name, HandlerDir, name, HandlerDir, name)
	}
	b.WriteString("; ls -l " + HandlerDir)
	return b.String()
}

// runCommandStep is a schema 1.0 runCommand action.
func runCommandStep(name, command string, ignoreFailure bool) map[string]any {
	a := map[string]any{"name": name, "type": "runCommand", "input": map[string]any{"command": command}}
	if ignoreFailure {
		a["ignoreStepFailure"] = "true"
	}
	return map[string]any{"action": a}
}

// runHandlerStep is a schema 1.0 runHandler action for a handler in the
// handler directory.
func runHandlerStep(name, handler string, args ...string) map[string]any {
	in := map[string]any{"handler": handler, "path": "default"}
	if len(args) > 0 {
		in["args"] = args
	}
	return map[string]any{"action": map[string]any{"name": name, "type": "runHandler", "input": in}}
}

// jobDoc is a schema 1.0 document with stdout in statusDetails.
func jobDoc(steps ...map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"version": "1.0", "includeStdOut": true, "steps": steps})
	return b
}

// startJob creates a job for the VM's thing and follows it, adding its
// state changes to the timeline.
func (e *Env) startJob(ctx context.Context, id string, doc []byte) (*jobWatch, error) {
	if _, err := e.Fleet.Stack.Core.CreateJob(ctx, jobs.CreateJobInput{JobID: id, Document: doc, Things: []string{e.Thing}}); err != nil {
		return nil, fmt.Errorf("create job %s: %w", id, err)
	}
	e.TL.Now("job %s created", id)
	return watchJob(e.Fleet.Stack.Core.Jobs(), id, e.Thing, func(c jobChange) {
		e.TL.Add(c.At, "job %s: %s", id, describeExec(c.Exec))
	}), nil
}

// runJob creates a job and waits for its terminal status.
func (e *Env) runJob(ctx context.Context, id string, doc []byte) (jobs.Execution, error) {
	w, err := e.startJob(ctx, id, doc)
	if err != nil {
		return jobs.Execution{}, err
	}
	defer w.stop()
	c, err := w.terminal(ctx)
	return c.Exec, err
}

// requireSucceeded runs a job that must succeed.
func (e *Env) requireSucceeded(ctx context.Context, id string, doc []byte) (jobs.Execution, error) {
	ex, err := e.runJob(ctx, id, doc)
	if err != nil {
		return ex, err
	}
	if ex.Status != protocol.JobSucceeded {
		return ex, fmt.Errorf("job %s ended %s, want SUCCEEDED (%s; stderr %q)", id, ex.Status, describeExec(ex), ex.StatusDetails["stderr"])
	}
	return ex, nil
}

// GuestInfo is what vm-info.sh reports.
type GuestInfo map[string]string

// probe runs vm-info.sh in the guest by a job.
func (e *Env) probe(ctx context.Context, id string) (GuestInfo, error) {
	ex, err := e.requireSucceeded(ctx, id, jobDoc(runHandlerStep("vm-info", "vm-info.sh")))
	if err != nil {
		return nil, err
	}
	info := GuestInfo{}
	for _, line := range strings.Split(ex.StatusDetails["stdout"], "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			info[k] = strings.TrimSpace(v)
		}
	}
	if info["release"] == "" || info["boot_id"] == "" {
		return info, fmt.Errorf("job %s: vm-info.sh printed no release or boot id: stdout %q", id, ex.StatusDetails["stdout"])
	}
	e.TL.Now("guest: release %s, artifact %s, root %s, mender_boot_part %s, upgrade_available %s",
		info["release"], info["artifact"], info["root"], info["boot_part"], info["upgrade_available"])
	return info, nil
}

// expectRunning checks the guest runs release on root partition part with
// no update pending.
func (info GuestInfo) expectRunning(release string, part int) error {
	want := map[string]string{
		"release": release, "artifact": release, "root": fmt.Sprintf("/dev/vda%d", part),
		"boot_part": fmt.Sprint(part), "upgrade_available": "0",
	}
	var bad []string
	for k, v := range want {
		if info[k] != v {
			bad = append(bad, fmt.Sprintf("%s=%q (want %q)", k, info[k], v))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("the guest does not run %s from partition %d: %s (vm-info: %v)", release, part, strings.Join(bad, ", "), map[string]string(info))
	}
	return nil
}

// since is a helper for timeline durations.
func since(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() }
