package main

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/jobs"
	"github.com/iot-fleet/iot-fleet/device/ota/jobsop"
	"github.com/iot-fleet/iot-fleet/device/outbox"
	"github.com/iot-fleet/iot-fleet/device/provision"
	"github.com/iot-fleet/iot-fleet/device/store"
)

// statusReport is what `fleet-agent status` prints (-o json: this, as
// JSON). Everything comes from the state directory, so it works whether
// or not the agent runs.
type statusReport struct {
	StateDir string `json:"stateDir"`
	// Agent is the agent process as it last wrote agent-status.json.
	Agent agentStatus `json:"agent"`
	// Identity is absent before provisioning; Provisioning then says
	// how far it got.
	Identity     *identityStatus     `json:"identity,omitempty"`
	Provisioning *provisioningStatus `json:"provisioning,omitempty"`
	Connection   connectionStatus    `json:"connection"`
	Job          *jobStatus          `json:"job,omitempty"`
	OTA          *otaStatus          `json:"ota,omitempty"`
	Outbox       outboxStatus        `json:"outbox"`
}

type agentStatus struct {
	// Running: the process that wrote the status file still runs.
	Running   bool               `json:"running"`
	PID       int                `json:"pid,omitempty"`
	Version   string             `json:"version,omitempty"`
	Phase     string             `json:"phase,omitempty"`
	StartedAt *time.Time         `json:"startedAt,omitempty"`
	UpdatedAt *time.Time         `json:"updatedAt,omitempty"`
	Error     string             `json:"error,omitempty"`
	Loops     []agent.LoopHealth `json:"loops,omitempty"`
	// Status is what each part reported (as in systemd's STATUS=).
	Status map[string]string `json:"status,omitempty"`
}

type identityStatus struct {
	ThingName     string    `json:"thingName"`
	Serial        string    `json:"serial,omitempty"`
	CertificateID string    `json:"certificateId,omitempty"`
	CertNotAfter  time.Time `json:"certificateNotAfter,omitzero"`
	CertError     string    `json:"certificateError,omitempty"`
	ProvisionedAt time.Time `json:"provisionedAt,omitzero"`
}

type provisioningStatus struct {
	Step        string    `json:"step,omitempty"`
	Recovery    bool      `json:"recovery,omitempty"`
	Failures    int       `json:"failures,omitempty"`
	Denials     int       `json:"denials,omitempty"`
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
	LastError   string    `json:"lastError,omitempty"`
}

type connectionStatus struct {
	// State: connected, disconnected, or unknown (the agent does not run).
	State          string     `json:"state"`
	ConnectedAt    *time.Time `json:"connectedAt,omitempty"`
	DisconnectedAt *time.Time `json:"disconnectedAt,omitempty"`
	Connections    int64      `json:"connections,omitempty"`
}

type jobStatus struct {
	jobs.Snapshot
	Summary string `json:"summary"`
}

type otaStatus struct {
	JobID     string    `json:"jobId"`
	Step      string    `json:"step"`
	Status    string    `json:"status,omitempty"`
	Attempt   int       `json:"attempt,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	UpdatedAt time.Time `json:"updatedAt,omitzero"`
}

type outboxStatus struct {
	Pending int `json:"pending"`
	Dead    int `json:"dead"`
}

// statusMain is `fleet-agent status [--config FILE] [--state-dir DIR] [-o text|json]`.
func statusMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleet-agent status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", DefaultConfigFile, "agent configuration (its stateDir is read)")
	stateDir := fs.String("state-dir", "", "state directory (default: stateDir of --config)")
	output := fs.String("o", "text", "output format: text or json")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: fleet-agent status [--config FILE] [--state-dir DIR] [-o text|json]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fleet-agent status: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "fleet-agent status: -o %q: want text or json\n", *output)
		return 2
	}
	dir := *stateDir
	if dir == "" {
		cfg, err := config.Load(*configFile)
		if err != nil {
			fmt.Fprintf(stderr, "fleet-agent status: %s: %v (or give --state-dir)\n", *configFile, err)
			return 1
		}
		dir = cfg.StateDir
	}
	rep, err := readStatus(dir, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "fleet-agent status: %v\n", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "fleet-agent status: %v\n", err)
			return 1
		}
		return 0
	}
	printStatus(stdout, rep, time.Now())
	return 0
}

// readStatus reads every state file of the state directory dir without
// changing anything in it.
func readStatus(dir string, now time.Time) (statusReport, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return statusReport{}, fmt.Errorf("state directory: %w", err)
	}
	if !fi.IsDir() {
		return statusReport{}, fmt.Errorf("state directory %s is not a directory", dir)
	}
	// store.Open creates nothing but a missing certs/ directory.
	st, err := store.Open(dir)
	if err != nil {
		return statusReport{}, err
	}
	rep := statusReport{StateDir: st.Dir(), Connection: connectionStatus{State: "unknown"}}

	rs, found, err := agent.ReadRunState(st)
	if err != nil {
		return rep, err
	}
	if found {
		rep.Agent = agentStatus{
			Running: rs.Alive(), PID: rs.PID, Version: rs.Version, Phase: rs.Phase,
			StartedAt: &rs.StartedAt, UpdatedAt: &rs.UpdatedAt, Error: rs.Error, Loops: rs.Loops, Status: rs.Status,
		}
		rep.Connection.ConnectedAt, rep.Connection.DisconnectedAt = rs.ConnectedAt, rs.DisconnectedAt
		rep.Connection.Connections = rs.Connections
		if rep.Agent.Running {
			rep.Connection.State = "disconnected"
			if rs.Connected {
				rep.Connection.State = "connected"
			}
		}
	}

	id, found, err := st.Identity()
	if err != nil {
		return rep, err
	}
	if found {
		is := &identityStatus{ThingName: id.ThingName, Serial: id.Serial, CertificateID: id.CertificateID, ProvisionedAt: id.ProvisionedAt}
		if na, err := certNotAfter(st.Path(id.CertFile)); err != nil {
			is.CertError = err.Error()
		} else {
			is.CertNotAfter = na
		}
		rep.Identity = is
	}
	var ps provision.State
	var pr provision.Retry
	psFound, err := st.ReadJSON(store.ProvisionFile, &ps)
	if err != nil {
		return rep, err
	}
	prFound, err := st.ReadJSON(provision.RetryFile, &pr)
	if err != nil {
		return rep, err
	}
	if psFound || prFound || !found {
		rep.Provisioning = &provisioningStatus{Step: string(ps.Step), Recovery: ps.Recovery,
			Failures: pr.Failures, Denials: pr.Denials, NextAttempt: pr.NextAttempt, LastError: pr.LastError}
	}

	snap, err := jobs.ReadSnapshot(st.Path(store.JobsDir))
	if err != nil {
		return rep, err
	}
	if snap.JobID != "" {
		rep.Job = &jobStatus{Snapshot: snap, Summary: agent.JobStatusText(snap)}
	}
	otaSt, err := jobsop.LastState(st.Path(store.JobsDir))
	if err != nil {
		return rep, err
	}
	if otaSt != nil {
		rep.OTA = &otaStatus{JobID: otaSt.JobID, Step: string(otaSt.Step), Status: string(otaSt.Status),
			Attempt: otaSt.Attempt, Reason: otaSt.Reason, UpdatedAt: otaSt.UpdatedAt}
	}
	rep.Outbox.Pending, rep.Outbox.Dead, err = outbox.Count(st.Path(store.OutboxDir))
	if err != nil {
		return rep, err
	}
	return rep, nil
}

func certNotAfter(path string) (time.Time, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, fmt.Errorf("read certificate: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return time.Time{}, fmt.Errorf("%s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %w", path, err)
	}
	return c.NotAfter, nil
}

func ago(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		return "in " + (-d).String()
	}
	return d.String() + " ago"
}

func printStatus(w io.Writer, r statusReport, now time.Time) {
	row := func(k, format string, a ...any) { fmt.Fprintf(w, "%-20s%s\n", k, fmt.Sprintf(format, a...)) }
	ag := r.Agent
	switch {
	case ag.PID == 0:
		row("agent", "never ran with this state directory")
	case ag.Running:
		row("agent", "running (pid %d, version %s, %s, since %s)", ag.PID, ag.Version, ag.Phase, ag.StartedAt.Format(time.RFC3339))
	default:
		row("agent", "not running (last: %s, pid %d, version %s, %s)", ag.Phase, ag.PID, ag.Version, ago(now, *ag.UpdatedAt))
	}
	if ag.Error != "" {
		row("agent error", "%s", ag.Error)
	}
	if len(ag.Loops) > 0 {
		var ls []string
		for _, l := range ag.Loops {
			s := l.Name + " ok"
			if l.Overdue {
				s = l.Name + " NOT BEATING"
			}
			ls = append(ls, s)
		}
		row("loops", "%s", strings.Join(ls, ", "))
	}
	if id := r.Identity; id != nil {
		row("thing", "%s", id.ThingName)
		row("serial", "%s", id.Serial)
		row("certificate", "%s", id.CertificateID)
		if id.CertError != "" {
			row("certificate expiry", "unknown: %s", id.CertError)
		} else {
			row("certificate expiry", "%s (%s)", id.CertNotAfter.UTC().Format(time.RFC3339), strings.TrimSuffix(ago(id.CertNotAfter, now), " ago")+" left")
		}
	} else {
		row("thing", "not provisioned")
	}
	if p := r.Provisioning; p != nil {
		s := "step " + p.Step
		if p.Step == "" {
			s = "not started"
		}
		if p.Recovery {
			s += " (recovering a refused certificate)"
		}
		if p.Failures+p.Denials > 0 {
			s += fmt.Sprintf(", %d failure(s), %d denial(s), next attempt %s", p.Failures, p.Denials, p.NextAttempt.UTC().Format(time.RFC3339))
		}
		if p.LastError != "" {
			s += ", last error: " + p.LastError
		}
		row("provisioning", "%s", s)
	}
	c := r.Connection
	switch {
	case c.State == "connected" && c.ConnectedAt != nil:
		row("connection", "connected since %s (%d connection(s))", c.ConnectedAt.Format(time.RFC3339), c.Connections)
	case c.State == "disconnected" && c.DisconnectedAt != nil:
		row("connection", "disconnected since %s", c.DisconnectedAt.Format(time.RFC3339))
	case c.State == "unknown":
		row("connection", "unknown (the agent does not run)")
	default:
		row("connection", "%s", c.State)
	}
	if r.Job != nil {
		row("job", "%s", r.Job.Summary)
	} else {
		row("job", "none")
	}
	if o := r.OTA; o != nil {
		s := fmt.Sprintf("job %s step %s", o.JobID, o.Step)
		if o.Status != "" {
			s += " (" + o.Status + ")"
		}
		if o.Attempt > 0 {
			s += fmt.Sprintf(", attempt %d", o.Attempt)
		}
		if o.Reason != "" {
			s += ", " + o.Reason
		}
		row("ota", "%s", s)
	} else {
		row("ota", "none")
	}
	row("outbox", "%d message(s) waiting, %d dead letter(s)", r.Outbox.Pending, r.Outbox.Dead)
}
