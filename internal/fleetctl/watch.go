package fleetctl

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/spf13/cobra"

	"github.com/iot-fleet/iot-fleet/device/backoff"
)

// Execution is one device's execution of a job.
type Execution struct {
	ThingName     string            `json:"thingName"`
	Status        string            `json:"status"`
	StatusDetails map[string]string `json:"statusDetails,omitempty"`
	UpdatedAt     *time.Time        `json:"updatedAt,omitempty"`
}

// JobView is a job with its executions.
type JobView struct {
	JobID           string      `json:"jobId"`
	Status          string      `json:"status"`
	TargetSelection string      `json:"targetSelection"`
	Executions      []Execution `json:"executions"`
	// Counts are the executions per status.
	Counts map[string]int `json:"counts"`
	// Done: every execution finished (and the job has any, or is over).
	Done bool `json:"done"`
	// Failed lists the devices whose execution FAILED, was REJECTED,
	// TIMED_OUT or CANCELED.
	Failed []string `json:"failed,omitempty"`
}

var terminalExecution = map[string]bool{"SUCCEEDED": true, "FAILED": true, "REJECTED": true, "TIMED_OUT": true, "REMOVED": true, "CANCELED": true}
var failedExecution = map[string]bool{"FAILED": true, "REJECTED": true, "TIMED_OUT": true, "CANCELED": true}

// jobReader reads a job and its executions, fetching statusDetails only
// for executions that changed since the last read.
type jobReader struct {
	f     *Fleet
	cache map[string]Execution
}

// JobStatus reads a job and every execution's status and statusDetails.
func (f *Fleet) JobStatus(ctx context.Context, jobID string) (JobView, error) {
	return (&jobReader{f: f, cache: map[string]Execution{}}).read(ctx, jobID)
}

func (r *jobReader) read(ctx context.Context, jobID string) (JobView, error) {
	job, err := r.f.IoT.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String(jobID)})
	if err != nil {
		return JobView{}, fmt.Errorf("job %s: %w", jobID, err)
	}
	v := JobView{JobID: jobID, Counts: map[string]int{}}
	if job.Job != nil {
		v.Status, v.TargetSelection = string(job.Job.Status), string(job.Job.TargetSelection)
	}
	var stale []int
	p := iot.NewListJobExecutionsForJobPaginator(r.f.IoT, &iot.ListJobExecutionsForJobInput{JobId: aws.String(jobID)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return JobView{}, fmt.Errorf("job %s executions: %w", jobID, err)
		}
		for _, s := range page.ExecutionSummaries {
			if s.JobExecutionSummary == nil {
				continue
			}
			e := Execution{ThingName: thingOfARN(aws.ToString(s.ThingArn)), Status: string(s.JobExecutionSummary.Status), UpdatedAt: s.JobExecutionSummary.LastUpdatedAt}
			if c, ok := r.cache[e.ThingName]; ok && c.Status == e.Status && sameTime(c.UpdatedAt, e.UpdatedAt) {
				e.StatusDetails = c.StatusDetails
			} else {
				stale = append(stale, len(v.Executions))
			}
			v.Executions = append(v.Executions, e)
		}
	}
	// statusDetails are only in DescribeJobExecution.
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for _, i := range stale {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			out, err := r.f.IoT.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String(jobID), ThingName: aws.String(v.Executions[i].ThingName)})
			if err != nil {
				mu.Lock()
				firstErr = cmp.Or(firstErr, fmt.Errorf("job %s on %s: %w", jobID, v.Executions[i].ThingName, err))
				mu.Unlock()
				return
			}
			if out.Execution != nil {
				v.Executions[i].Status = string(out.Execution.Status)
				if out.Execution.StatusDetails != nil {
					v.Executions[i].StatusDetails = out.Execution.StatusDetails.DetailsMap
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return JobView{}, firstErr
	}
	slices.SortFunc(v.Executions, func(a, b Execution) int { return strings.Compare(a.ThingName, b.ThingName) })
	for _, e := range v.Executions {
		r.cache[e.ThingName] = e
	}
	v.summarize()
	return v, nil
}

// summarize counts the executions by status and sets Done and Failed.
func (v *JobView) summarize() {
	v.Counts, v.Failed = map[string]int{}, nil
	all := true
	for _, e := range v.Executions {
		v.Counts[e.Status]++
		all = all && terminalExecution[e.Status]
		if failedExecution[e.Status] {
			v.Failed = append(v.Failed, e.ThingName)
		}
	}
	jobOver := v.Status == "COMPLETED" || v.Status == "CANCELED" || v.Status == "DELETION_IN_PROGRESS"
	v.Done = all && (len(v.Executions) > 0 || jobOver)
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

func thingOfARN(arn string) string {
	if i := strings.LastIndex(arn, ":thing/"); i >= 0 {
		return arn[i+len(":thing/"):]
	}
	return arn
}

// WatchJob polls the job until every execution finished (JobView.Done),
// calling update with each reading. It returns the last reading; the
// context's end (e.g. a deadline) is its error.
func (f *Fleet) WatchJob(ctx context.Context, jobID string, update func(JobView)) (JobView, error) {
	r := &jobReader{f: f, cache: map[string]Execution{}}
	for {
		v, err := r.read(ctx, jobID)
		if err != nil {
			return v, err
		}
		if update != nil {
			update(v)
		}
		if v.Done {
			return v, nil
		}
		if err := backoff.Sleep(ctx, f.poll()); err != nil {
			return v, err
		}
	}
}

// otaSteps orders the OTA statusDetails steps (docs/ota.md) for the
// progress bar.
var otaSteps = map[string]int{"downloading": 1, "installing": 2, "rebooting": 3, "verifying": 4, "committed": 5}

// progress is an execution's progress as done/total (total 0: unknown)
// and a label.
func progress(e Execution) (done, total int, label string) {
	d := e.StatusDetails
	switch {
	case d["step"] != "":
		label = d["step"]
		if a := d["attempt"]; a != "" && a != "1" {
			label += " (attempt " + a + ")"
		}
		if n, ok := otaSteps[d["step"]]; ok {
			done, total = n, len(otaSteps)
		}
	case d["stepCount"] != "":
		total, _ = strconv.Atoi(d["stepCount"])
		done, _ = strconv.Atoi(d["stepIndex"]) // 1-based, the step running
		label = d["stepName"]
		if s := d["stepState"]; s != "" {
			label += " " + s
		}
		if e.Status == "IN_PROGRESS" && done > 0 {
			done-- // the step running is not done yet
		}
	}
	switch e.Status {
	case "SUCCEEDED":
		if total == 0 {
			total = 1
		}
		done = total
	case "QUEUED":
		label = "waiting for the device"
	}
	return done, total, label
}

func bar(done, total, width int) string {
	if total <= 0 {
		return "[" + strings.Repeat("?", width) + "]"
	}
	n := min(width, done*width/total)
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]"
}

// watchPrinter shows a job's progress: on a terminal, a block of progress
// bars redrawn in place; otherwise one line per change.
type watchPrinter struct {
	w     io.Writer
	tty   bool
	lines int               // lines drawn last time (tty)
	last  map[string]string // per thing, the last line printed (plain)
	start time.Time
}

func newWatchPrinter(w io.Writer) *watchPrinter {
	return &watchPrinter{w: w, tty: isTerminal(w), last: map[string]string{}, start: time.Now()}
}

func (p *watchPrinter) update(v JobView) {
	if p.tty {
		var b strings.Builder
		if p.lines > 0 {
			fmt.Fprintf(&b, "\x1b[%dA\x1b[J", p.lines)
		}
		fmt.Fprintf(&b, "job %s: %s, %s (%s)\n", v.JobID, v.Status, countsLine(v), time.Since(p.start).Round(time.Second))
		for _, e := range v.Executions {
			done, total, label := progress(e)
			fmt.Fprintf(&b, "  %-28s %-11s %s %s\n", e.ThingName, e.Status, bar(done, total, 20), label)
		}
		p.lines = 1 + len(v.Executions)
		io.WriteString(p.w, b.String())
		return
	}
	for _, e := range v.Executions {
		done, total, label := progress(e)
		line := e.Status
		if label != "" {
			line += " " + label
		}
		if total > 0 {
			line += fmt.Sprintf(" (%d/%d)", done, total)
		}
		if r := e.StatusDetails["reason"]; r != "" && terminalExecution[e.Status] {
			line += ": " + r
		}
		if p.last[e.ThingName] != line {
			p.last[e.ThingName] = line
			fmt.Fprintf(p.w, "%s %s %s\n", time.Now().UTC().Format("15:04:05"), e.ThingName, line)
		}
	}
}

func countsLine(v JobView) string {
	if len(v.Executions) == 0 {
		return "no executions yet"
	}
	var parts []string
	for _, s := range []string{"SUCCEEDED", "IN_PROGRESS", "QUEUED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"} {
		if n := v.Counts[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, strings.ToLower(s)))
		}
	}
	return strings.Join(parts, ", ")
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb"
}

// writeJobSummary prints the job's per-device table and a summary.
func writeJobSummary(w io.Writer, v JobView) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "THING\tSTATUS\tSTEP\tREASON")
	for _, e := range v.Executions {
		_, _, label := progress(e)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.ThingName, e.Status, orDash(label), orDash(e.StatusDetails["reason"]))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	state := "in progress"
	if v.Done {
		state = "finished"
	}
	_, err := fmt.Fprintf(w, "job %s: %s (job status %s): %s\n", v.JobID, state, v.Status, countsLine(v))
	return err
}

// jobResult is the exit status of a job reading: ExitFailed naming the
// devices that failed.
func jobResult(v JobView) error {
	if len(v.Failed) > 0 {
		return withCode(ExitFailed, fmt.Errorf("job %s failed on %d device(s): %s", v.JobID, len(v.Failed), strings.Join(v.Failed, ", ")))
	}
	return nil
}

// watchAndReport watches a job with progress on stderr, then prints the
// summary on stdout; exit 1 if a device failed, 5 on timeout.
func watchAndReport(cmd *cobra.Command, g *globalFlags, f *Fleet, jobID string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	p := newWatchPrinter(cmd.ErrOrStderr())
	v, err := f.WatchJob(ctx, jobID, p.update)
	if err != nil && v.JobID == "" {
		return timedOut(err, "job "+jobID, timeout)
	}
	if perr := printJob(cmd.OutOrStdout(), g.output, v); perr != nil {
		return perr
	}
	if err != nil {
		return timedOut(err, "job "+jobID, timeout)
	}
	return jobResult(v)
}

func printJob(w io.Writer, format string, v JobView) error {
	if format == "json" {
		if v.Executions == nil {
			v.Executions = []Execution{}
		}
		return writeJSON(w, v)
	}
	return writeJobSummary(w, v)
}

// newWatchCommand is "status JOB" (one reading) or "watch JOB" (until
// every device finished), for "jobs" and "ota".
func newWatchCommand(g *globalFlags, name string, ota bool) *cobra.Command {
	var (
		timeout  time.Duration
		interval time.Duration
	)
	what := "a job"
	if ota {
		what = "an OTA job"
	}
	short := "Show " + what + "'s per-device status once"
	long := name + ` reads JOB (DescribeJob, ListJobExecutionsForJob, DescribeJobExecution's
statusDetails) and prints each device's status, step and reason, and a summary.`
	if name == "watch" {
		short = "Watch " + what + " until every device finished, with per-device progress"
		long = `watch polls JOB until every device's execution finished, showing per-device
progress on stderr (progress bars on a terminal, one line per change otherwise:
the OTA steps downloading, installing, rebooting, verifying, committed; or the
job's step n of m), then prints the summary on stdout.`
	}
	cmd := &cobra.Command{
		Use:   name + " JOB",
		Short: short,
		Long: long + `

` + exitCodesHelp + ` 1 when any device FAILED, was REJECTED, TIMED_OUT or
CANCELED; 5 when --timeout ends the watch first.`,
		Args: cobraArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			if interval > 0 {
				f.Poll = interval
			}
			if name == "watch" {
				return watchAndReport(cmd, g, f, args[0], timeout)
			}
			v, err := f.JobStatus(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if err := printJob(cmd.OutOrStdout(), g.output, v); err != nil {
				return err
			}
			return jobResult(v)
		},
	}
	if name == "watch" {
		cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Hour, "give up watching after this long (exit 5; the job goes on)")
		cmd.Flags().DurationVar(&interval, "interval", 5*time.Second, "polling interval")
	}
	return cmd
}
