package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
	"github.com/iot-fleet/iot-fleet/sim/rules"
)

// observer records what the cloud side sees of the device: every agent
// process start (its status message after each connect), the OTA progress
// messages, and the job executions' state changes.
type observer struct {
	mu       sync.Mutex
	changed  chan struct{}
	starts   []agentStart
	progress []progressMsg
}

type agentStart struct {
	StartedAt time.Time // the guest's clock
	SeenAt    time.Time // the host's clock, first status of that process
}

type progressMsg struct {
	At      time.Time
	JobID   string `json:"jobId"`
	Percent *int   `json:"percent"`
	Bytes   *int64 `json:"bytes"`
}

func newObserver() *observer { return &observer{changed: make(chan struct{})} }

func (o *observer) notifyLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// rules adds the topic rules through which the observer sees the device's
// messages.
func (o *observer) addRules(e *rules.Engine, thing string) error {
	if err := e.Add(rules.Rule{
		Name:   "vm-agent-starts",
		SQL:    "SELECT startedAt FROM '" + protocol.DataTopic(thing, protocol.KindStatus) + "'",
		Action: o.onStatus,
	}); err != nil {
		return fmt.Errorf("vm: status rule: %w", err)
	}
	if err := e.Add(rules.Rule{
		Name:   "vm-ota-progress",
		SQL:    "SELECT * FROM '" + protocol.DataTopic(thing, protocol.KindOTAProgress) + "'",
		Action: o.onProgress,
	}); err != nil {
		return fmt.Errorf("vm: progress rule: %w", err)
	}
	return nil
}

func (o *observer) onStatus(_ context.Context, event []byte) error {
	var ev struct {
		StartedAt time.Time `json:"startedAt"`
	}
	if err := json.Unmarshal(event, &ev); err != nil {
		return fmt.Errorf("vm: status event: %w", err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if !slices.ContainsFunc(o.starts, func(s agentStart) bool { return s.StartedAt.Equal(ev.StartedAt) }) {
		o.starts = append(o.starts, agentStart{StartedAt: ev.StartedAt, SeenAt: time.Now()})
		o.notifyLocked()
	}
	return nil
}

func (o *observer) onProgress(_ context.Context, event []byte) error {
	p := progressMsg{At: time.Now()}
	if err := json.Unmarshal(event, &p); err != nil {
		return fmt.Errorf("vm: progress event: %w", err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.progress = append(o.progress, p)
	o.notifyLocked()
	return nil
}

// agentStarts is the number of agent processes seen so far.
func (o *observer) agentStarts() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.starts)
}

// waitAgentStart waits until more than n agent processes have been seen
// (a new process connected and subscribed) and returns when the first of
// them was seen.
func (o *observer) waitAgentStart(ctx context.Context, n int, stop <-chan struct{}) (time.Time, error) {
	for {
		o.mu.Lock()
		if len(o.starts) > n {
			at := o.starts[n].SeenAt
			o.mu.Unlock()
			return at, nil
		}
		ch := o.changed
		o.mu.Unlock()
		select {
		case <-ch:
		case <-stop:
			return time.Time{}, fmt.Errorf("the virtual machine stopped while waiting for the agent (process %d) to connect", n+1)
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for the agent (process %d) to connect: %w", n+1, ctx.Err())
		}
	}
}

// progressFor returns the progress messages of job id.
func (o *observer) progressFor(jobID string) []progressMsg {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []progressMsg
	for _, p := range o.progress {
		if p.JobID == jobID {
			out = append(out, p)
		}
	}
	return out
}

// waitProgress waits for a progress message of job id with at least
// percent.
func (o *observer) waitProgress(ctx context.Context, jobID string, percent int) (progressMsg, error) {
	for {
		o.mu.Lock()
		for _, p := range o.progress {
			if p.JobID == jobID && p.Percent != nil && *p.Percent >= percent {
				o.mu.Unlock()
				return p, nil
			}
		}
		ch := o.changed
		o.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return progressMsg{}, fmt.Errorf("waiting for %d%% progress of job %s: %w", percent, jobID, ctx.Err())
		}
	}
}

// jobWatch follows one job execution by polling the Jobs service and
// records every change of status, OTA step and attempt.
type jobWatch struct {
	svc   *jobs.Service
	jobID string
	thing string

	mu      sync.Mutex
	changed chan struct{}
	changes []jobChange
	cancel  context.CancelFunc
	done    chan struct{}
}

type jobChange struct {
	At   time.Time
	Exec jobs.Execution
}

// key is what a change is: status plus the step keys.
func (c jobChange) key() string {
	d := c.Exec.StatusDetails
	return strings.Join([]string{string(c.Exec.Status), d["step"], d["attempt"], d["stepIndex"], d["stepState"], d["reason"]}, "|")
}

func watchJob(svc *jobs.Service, jobID, thing string, onChange func(jobChange)) *jobWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &jobWatch{svc: svc, jobID: jobID, thing: thing, changed: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		last := ""
		for {
			if ex, err := svc.Execution(jobID, thing); err == nil {
				c := jobChange{At: time.Now(), Exec: ex}
				if k := c.key(); k != last {
					last = k
					w.mu.Lock()
					w.changes = append(w.changes, c)
					close(w.changed)
					w.changed = make(chan struct{})
					w.mu.Unlock()
					onChange(c)
				}
				if ex.Status.Terminal() {
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return w
}

func (w *jobWatch) stop() {
	w.cancel()
	<-w.done
}

// history returns the changes so far.
func (w *jobWatch) history() []jobChange {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]jobChange(nil), w.changes...)
}

// wait waits until a change satisfies cond (checking those already seen
// first) and returns it.
func (w *jobWatch) wait(ctx context.Context, what string, cond func(jobs.Execution) bool) (jobChange, error) {
	seen := 0
	for {
		w.mu.Lock()
		changes := w.changes
		ch := w.changed
		w.mu.Unlock()
		for ; seen < len(changes); seen++ {
			if cond(changes[seen].Exec) {
				return changes[seen], nil
			}
		}
		select {
		case <-ch:
		case <-w.done:
			w.mu.Lock()
			n := len(w.changes)
			w.mu.Unlock()
			if seen < n {
				continue
			}
			return jobChange{}, fmt.Errorf("job %s ended (%s) before %s", w.jobID, describeExec(w.last()), what)
		case <-ctx.Done():
			return jobChange{}, fmt.Errorf("job %s: waiting for %s: %w (last: %s)", w.jobID, what, ctx.Err(), describeExec(w.last()))
		}
	}
}

func (w *jobWatch) last() jobs.Execution {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.changes) == 0 {
		return jobs.Execution{}
	}
	return w.changes[len(w.changes)-1].Exec
}

// terminal waits for the execution's terminal status.
func (w *jobWatch) terminal(ctx context.Context) (jobChange, error) {
	return w.wait(ctx, "a terminal status", func(e jobs.Execution) bool { return e.Status.Terminal() })
}

func describeExec(e jobs.Execution) string {
	if e.Status == "" {
		return "no execution yet"
	}
	keys := make([]string, 0, len(e.StatusDetails))
	for k := range e.StatusDetails {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString(string(e.Status))
	for _, k := range keys {
		if k == "stdout" || k == "stderr" {
			continue
		}
		fmt.Fprintf(&b, " %s=%q", k, e.StatusDetails[k])
	}
	return b.String()
}

// consoleEvents are the console lines worth a timeline entry.
var consoleEvents = []struct {
	re   *regexp.Regexp
	what func([]string) string
}{
	{regexp.MustCompile(`^U-Boot 20\d\d`), func([]string) string { return "U-Boot started" }},
	{regexp.MustCompile(`^iot-fleet: (booting partition \d+ .*)`), func(m []string) string { return "boot.scr: " + m[1] }},
	{regexp.MustCompile(`^iot-fleet: (update on partition .* rolling back)`), func(m []string) string { return "boot.scr: " + m[1] }},
	{regexp.MustCompile(`Started (fleet-agent\.service|.*iot-fleet device agent)`), func([]string) string { return "systemd: fleet-agent started" }},
	{regexp.MustCompile(`Finished (fleet-firstboot\.service|.*[Ff]irst.boot.*)`), func(m []string) string { return "systemd: " + strings.TrimSpace(m[0]) }},
	{regexp.MustCompile(`reboot: (Restarting system|Power down)`), func(m []string) string { return "kernel: " + m[1] }},
	{regexp.MustCompile(`^qemu: run \d+ (started|exited).*`), func(m []string) string { return m[0] }},
}

// watchConsole adds timeline events for notable console lines until ctx
// ends.
func (e *Env) watchConsole(ctx context.Context) {
	cur := e.VM.Console.CursorAt(0)
	res := make([]*regexp.Regexp, len(consoleEvents))
	for i, c := range consoleEvents {
		res[i] = c.re
	}
	for {
		l, i, err := cur.ExpectAny(ctx, res, nil)
		if err != nil {
			return
		}
		m := consoleEvents[i].re.FindStringSubmatch(l.Text)
		e.TL.Add(l.At, "console: %s", consoleEvents[i].what(m))
	}
}
