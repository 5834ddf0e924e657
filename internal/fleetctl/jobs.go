package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/spf13/cobra"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/jobs"
	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/device/ota"
	"github.com/iot-fleet/iot-fleet/device/ota/jobsop"
)

var jobIDRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// JobSpec is a job to create.
type JobSpec struct {
	// JobID is unique per account: 1-64 letters, digits, '_' or '-'.
	JobID string
	// Document is the job document (JSON).
	Document []byte
	// Targets are thing or thing group ARNs (Fleet.Targets).
	Targets     []string
	Description string
	// Continuous keeps the job open for devices added to a target group
	// later.
	Continuous bool
	// MaxPerMinute is the rollout rate (0: AWS's default, no limit).
	MaxPerMinute int32
	// AbortThresholdPercent and AbortMinExecuted cancel the job when that
	// share of at least that many executed devices FAILED (0: no abort
	// rule).
	AbortThresholdPercent float64
	AbortMinExecuted      int32
	// InProgressMinutes times out an execution IN_PROGRESS for longer (0:
	// none).
	InProgressMinutes int64
	// Presign is the presigned-URL configuration (OTA jobs).
	Presign *types.PresignedUrlConfig
}

// input is the CreateJob request for spec.
func (s JobSpec) input() (*iot.CreateJobInput, error) {
	if !jobIDRE.MatchString(s.JobID) {
		return nil, usagef("job id %q: 1-64 letters, digits, '_' or '-'", s.JobID)
	}
	if len(s.Targets) == 0 {
		return nil, usagef("no targets: give --group or --thing")
	}
	in := &iot.CreateJobInput{
		JobId: aws.String(s.JobID), Targets: s.Targets, Document: aws.String(string(s.Document)),
		TargetSelection: types.TargetSelectionSnapshot, PresignedUrlConfig: s.Presign,
	}
	if s.Description != "" {
		in.Description = aws.String(s.Description)
	}
	if s.Continuous {
		in.TargetSelection = types.TargetSelectionContinuous
	}
	if s.MaxPerMinute < 0 || s.MaxPerMinute > 1000 {
		return nil, usagef("--max-per-minute %d: AWS IoT accepts 1-1000", s.MaxPerMinute)
	}
	if s.MaxPerMinute > 0 {
		in.JobExecutionsRolloutConfig = &types.JobExecutionsRolloutConfig{MaximumPerMinute: aws.Int32(s.MaxPerMinute)}
	}
	if s.AbortThresholdPercent < 0 || s.AbortThresholdPercent > 100 {
		return nil, usagef("--abort-threshold %g: a percentage, 0-100", s.AbortThresholdPercent)
	}
	if s.AbortThresholdPercent > 0 {
		if s.AbortMinExecuted < 1 {
			return nil, usagef("--abort-min-executed %d: at least 1", s.AbortMinExecuted)
		}
		in.AbortConfig = &types.AbortConfig{CriteriaList: []types.AbortCriteria{{
			FailureType: types.JobExecutionFailureTypeFailed, Action: types.AbortActionCancel,
			ThresholdPercentage: aws.Float64(s.AbortThresholdPercent), MinNumberOfExecutedThings: aws.Int32(s.AbortMinExecuted),
		}}}
	}
	if s.InProgressMinutes < 0 || s.InProgressMinutes > 10080 {
		return nil, usagef("--in-progress-timeout %d minutes: AWS IoT accepts 1-10080", s.InProgressMinutes)
	}
	if s.InProgressMinutes > 0 {
		in.TimeoutConfig = &types.TimeoutConfig{InProgressTimeoutInMinutes: aws.Int64(s.InProgressMinutes)}
	}
	return in, nil
}

// CreateJob creates the job and returns its ARN.
func (f *Fleet) CreateJob(ctx context.Context, spec JobSpec) (string, error) {
	in, err := spec.input()
	if err != nil {
		return "", err
	}
	out, err := f.IoT.CreateJob(ctx, in)
	if err != nil {
		return "", fmt.Errorf("create job %s: %w", spec.JobID, err)
	}
	return aws.ToString(out.JobArn), nil
}

// CheckDocument validates a job document with the agent's own parser
// (device/jobs/jobdoc, what `fleet-agent check-job` runs), for an agent
// with the configuration file agentConfig ("" : the agent's defaults). An
// invalid document is ExitInvalid with the parser's field and reason.
func CheckDocument(doc []byte, agentConfig string) error {
	cfg := config.Default()
	source := "the agent's default configuration"
	if agentConfig != "" {
		var err error
		if cfg, err = config.LoadValid(agentConfig); err != nil {
			return fmt.Errorf("agent configuration %s: %w", agentConfig, err)
		}
		source = agentConfig
	}
	// The operations that agent registers (validation only), as
	// fleet-agent check-job builds them: OTA's mender_install with its
	// allowed hosts, none when OTA is off.
	ops := jobs.NewRegistry()
	if cfg.OTA.Enabled {
		if err := ops.Register(ota.Operation, jobsop.New(nil, ota.Policy{Template: true, AllowedHosts: cfg.OTA.AllowedHosts})); err != nil {
			return err
		}
	}
	if _, err := jobdoc.Parse(doc, jobdoc.Options{Operations: ops, RunCommand: cfg.Jobs.RunCommandPolicy()}); err != nil {
		var de *jobdoc.Error
		if errors.As(err, &de) {
			field := de.Field
			if field == "" {
				field = "(document)"
			}
			return withCode(ExitInvalid, fmt.Errorf("job document refused by the agent's parser (%s): field %s: %s; nothing was created", source, field, de.Problem))
		}
		return withCode(ExitInvalid, fmt.Errorf("job document refused by the agent's parser (%s): %w; nothing was created", source, err))
	}
	return nil
}

// Targets resolves thing groups and things (thing names or serials) to
// ARNs. With neither, the target is the stack's thing group.
func (f *Fleet) Targets(ctx context.Context, groups, things []string) ([]string, error) {
	if len(groups) == 0 && len(things) == 0 {
		if arn := f.Outputs.optional(OutThingGroupArn); arn != "" {
			return []string{arn}, nil
		}
		g, err := f.Outputs.String(OutThingGroup)
		if err != nil {
			return nil, err
		}
		groups = []string{g}
	}
	var arns []string
	for _, g := range groups {
		if g == f.Outputs.optional(OutThingGroup) && f.Outputs.optional(OutThingGroupArn) != "" {
			arns = append(arns, f.Outputs.optional(OutThingGroupArn))
			continue
		}
		out, err := f.IoT.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String(g)})
		if err != nil {
			return nil, fmt.Errorf("thing group %q: %w", g, err)
		}
		arns = append(arns, aws.ToString(out.ThingGroupArn))
	}
	for _, t := range things {
		name, err := f.thingName(ctx, t)
		if err != nil {
			return nil, err
		}
		out, err := f.IoT.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(name)})
		if err != nil {
			return nil, fmt.Errorf("thing %q: %w", name, err)
		}
		arns = append(arns, aws.ToString(out.ThingArn))
	}
	return arns, nil
}

// thingName is id if it names a thing, else the thing of the registry
// record with serial (or thing name) id.
func (f *Fleet) thingName(ctx context.Context, id string) (string, error) {
	_, err := f.IoT.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(id)})
	if err == nil {
		return id, nil
	}
	if !isNotFound(err) {
		return "", fmt.Errorf("thing %q: %w", id, err)
	}
	d, ferr := f.findDevice(ctx, id)
	if ferr != nil {
		return "", fmt.Errorf("no thing %q, and %w", id, ferr)
	}
	if d.ThingName == "" {
		return "", fmt.Errorf("device %s has no thing (state %s)", d.Serial, d.State)
	}
	return d.ThingName, nil
}

// JobSummary is one job of ListJobs.
type JobSummary struct {
	JobID           string     `json:"jobId"`
	Status          string     `json:"status"`
	TargetSelection string     `json:"targetSelection"`
	CreatedAt       *time.Time `json:"createdAt,omitempty"`
	CompletedAt     *time.Time `json:"completedAt,omitempty"`
}

// ListJobs lists the jobs, optionally of one status.
func (f *Fleet) ListJobs(ctx context.Context, status string) ([]JobSummary, error) {
	var out []JobSummary
	p := iot.NewListJobsPaginator(f.IoT, &iot.ListJobsInput{Status: types.JobStatus(status)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list jobs: %w", err)
		}
		for _, j := range page.Jobs {
			out = append(out, JobSummary{JobID: aws.ToString(j.JobId), Status: string(j.Status), TargetSelection: string(j.TargetSelection),
				CreatedAt: j.CreatedAt, CompletedAt: j.CompletedAt})
		}
	}
	return out, nil
}

// CancelJob cancels a job; force also cancels executions IN_PROGRESS
// (the device is told to stop where it is).
func (f *Fleet) CancelJob(ctx context.Context, jobID, reason string, force bool) error {
	in := &iot.CancelJobInput{JobId: aws.String(jobID), Force: force}
	if reason != "" {
		in.Comment = aws.String(reason)
	}
	if _, err := f.IoT.CancelJob(ctx, in); err != nil {
		return fmt.Errorf("cancel job %s: %w", jobID, err)
	}
	return nil
}

// targetFlags are --group and --thing.
type targetFlags struct {
	groups, things []string
}

func (t *targetFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&t.groups, "group", nil, "thing group to target (repeatable; default: the stack's thingGroup when no --thing)")
	cmd.Flags().StringSliceVar(&t.things, "thing", nil, "thing (name or serial) to target (repeatable)")
}

// rolloutFlags are the rollout, abort and timeout settings of a job.
type rolloutFlags struct {
	continuous        bool
	maxPerMinute      int32
	abortThreshold    float64
	abortMinExecuted  int32
	inProgressMinutes int64
}

func (r *rolloutFlags) register(cmd *cobra.Command, maxPerMinute int32, abortThreshold float64, abortMin int32, inProgress int64) {
	fl := cmd.Flags()
	fl.BoolVar(&r.continuous, "continuous", false, "keep the job open for devices added to a target group later (targetSelection CONTINUOUS)")
	fl.Int32Var(&r.maxPerMinute, "max-per-minute", maxPerMinute, "rollout: devices notified per minute, 1-1000 (0: no limit)")
	fl.Float64Var(&r.abortThreshold, "abort-threshold", abortThreshold, "abort: cancel the job when this percentage of executed devices FAILED (0: never)")
	fl.Int32Var(&r.abortMinExecuted, "abort-min-executed", abortMin, "abort: ... once at least this many devices executed it")
	fl.Int64Var(&r.inProgressMinutes, "in-progress-timeout", inProgress, "minutes an execution may stay IN_PROGRESS before it TIMED_OUT (0: none)")
}

func (r rolloutFlags) apply(s *JobSpec) {
	s.Continuous, s.MaxPerMinute, s.AbortThresholdPercent, s.AbortMinExecuted, s.InProgressMinutes =
		r.continuous, r.maxPerMinute, r.abortThreshold, r.abortMinExecuted, r.inProgressMinutes
}

func newJobsCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "Create, list, watch and cancel AWS IoT jobs (general job documents)",
		Long: `jobs runs general job documents (docs/jobs.md: the AWS IoT Device Client
schema the agent runs) on a thing group or things. A document is validated with
the agent's own parser (what fleet-agent check-job runs) before anything is
created; a refused document creates nothing. For full-system updates use
"fleetctl ota".`,
	}
	cmd.AddCommand(newJobsCreateCommand(g), newJobsListCommand(g), newWatchCommand(g, "watch", false), newWatchCommand(g, "status", false), newJobsCancelCommand(g))
	return cmd
}

func newJobsCreateCommand(g *globalFlags) *cobra.Command {
	var (
		docFile, jobID, description, agentConfig string
		targets                                  targetFlags
		rollout                                  rolloutFlags
		watch                                    bool
		timeout, interval                        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create --document FILE [--group G | --thing T ...]",
		Short: "Validate a job document with the agent's parser, then create the job",
		Long: `create reads the job document (--document FILE, - for stdin), validates it with
the agent's own parser for an agent with --agent-config FILE (default: the
agent's default configuration; give the image's rendered config.json to check
its runCommand rule and OTA hosts exactly), and creates the job for the
targets (default: the stack's thing group). With --watch it then watches the
job as "jobs watch" does.

` + exitCodesHelp + ` A refused document is 3 and creates nothing.`,
		Args: cobraArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if docFile == "" {
				return usagef("--document FILE is required")
			}
			if err := g.validate(); err != nil {
				return err
			}
			doc, err := readDocument(docFile, cmd.InOrStdin())
			if err != nil {
				return err
			}
			if err := CheckDocument(doc, agentConfig); err != nil {
				return err
			}
			if jobID == "" {
				jobID = "job-" + time.Now().UTC().Format("20060102-150405")
			}
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			arns, err := f.Targets(ctx, targets.groups, targets.things)
			if err != nil {
				return err
			}
			spec := JobSpec{JobID: jobID, Document: doc, Targets: arns, Description: description}
			rollout.apply(&spec)
			arn, err := f.CreateJob(ctx, spec)
			if err != nil {
				return err
			}
			if err := printCreated(cmd.OutOrStdout(), g.output, jobID, arn, arns, "jobs"); err != nil {
				return err
			}
			if !watch {
				return nil
			}
			if interval > 0 {
				f.Poll = interval
			}
			return watchAndReport(cmd, g, f, jobID, timeout)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&docFile, "document", "", "job document file (JSON; - reads stdin)")
	fl.StringVar(&jobID, "job-id", "", "job id (default job-<UTC time>)")
	fl.StringVar(&description, "description", "", "job description")
	fl.StringVar(&agentConfig, "agent-config", "", "agent configuration whose rules the document must pass (default: the agent's defaults)")
	fl.BoolVar(&watch, "watch", false, "watch the job until every device finished")
	fl.DurationVar(&timeout, "timeout", 30*time.Minute, "with --watch: give up watching after this long (exit 5)")
	fl.DurationVar(&interval, "interval", 5*time.Second, "with --watch: polling interval")
	targets.register(cmd)
	rollout.register(cmd, 0, 0, 5, 0)
	return cmd
}

func readDocument(path string, stdin io.Reader) ([]byte, error) {
	if path == "-" {
		b, err := io.ReadAll(io.LimitReader(stdin, jobdoc.MaxDocumentBytes+1))
		if err != nil {
			return nil, fmt.Errorf("job document from stdin: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("job document: %w", err)
	}
	return b, nil
}

func printCreated(w io.Writer, format, jobID, arn string, targets []string, group string) error {
	if format == "json" {
		return writeJSON(w, map[string]any{"jobId": jobID, "jobArn": arn, "targets": targets})
	}
	_, err := fmt.Fprintf(w, "created job %s (%s)\ntargets: %s\nwatch it: fleetctl %s watch %s\n", jobID, arn, strings.Join(targets, ", "), group, jobID)
	return err
}

func newJobsListCommand(g *globalFlags) *cobra.Command {
	var status string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs",
		Long:  "list prints the jobs (ListJobs), optionally only those of --status.\n\n" + exitCodesHelp,
		Args:  cobraArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch status {
			case "", "IN_PROGRESS", "CANCELED", "COMPLETED", "DELETION_IN_PROGRESS", "SCHEDULED":
			default:
				return usagef("--status %q: IN_PROGRESS, CANCELED, COMPLETED, DELETION_IN_PROGRESS or SCHEDULED", status)
			}
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			list, err := f.ListJobs(cmd.Context(), status)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if g.output == "json" {
				if list == nil {
					list = []JobSummary{}
				}
				return writeJSON(w, list)
			}
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB\tSTATUS\tSELECTION\tCREATED\tCOMPLETED")
			for _, j := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", j.JobID, j.Status, j.TargetSelection, timeOrDash(j.CreatedAt), timeOrDash(j.CompletedAt))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&status, "status", "", "only jobs of this status (IN_PROGRESS, COMPLETED, CANCELED, ...)")
	return cmd
}

func newJobsCancelCommand(g *globalFlags) *cobra.Command {
	var (
		reason string
		force  bool
	)
	cmd := &cobra.Command{
		Use:   "cancel JOB",
		Short: "Cancel a job (queued executions are canceled; --force also stops running ones)",
		Long: `cancel cancels JOB: its QUEUED executions are canceled and no new device gets it.
Executions IN_PROGRESS finish unless --force (the device is told the job was
canceled where it is: a half-done step may be left behind, and a full-system
update must not be force-canceled while it installs).

` + exitCodesHelp,
		Args: cobraArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			if err := f.CancelJob(cmd.Context(), args[0], reason, force); err != nil {
				return err
			}
			if g.output == "json" {
				return writeJSON(cmd.OutOrStdout(), map[string]any{"jobId": args[0], "canceled": true, "force": force})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "canceled job %s%s\n", args[0], map[bool]string{true: " (forced: executions in progress were canceled too)"}[force])
			return err
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "comment recorded with the cancellation")
	cmd.Flags().BoolVar(&force, "force", false, "also cancel executions IN_PROGRESS")
	return cmd
}
