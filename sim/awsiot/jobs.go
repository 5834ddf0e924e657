package awsiot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
)

// Jobs serves the AWS IoT Jobs control-plane calls of the aws-sdk-go-v2
// *iot.Client (CreateJob, DescribeJob, …) from the local Jobs service, the
// one implementation of jobs in the local IoT Core.
type Jobs struct {
	svc       *jobs.Service
	iot       *Client // ARNs and page sizes
	arnPrefix string
	docs      DocumentSource
}

// DocumentSource reads the job document a CreateJob documentSource (an S3
// URL) names.
type DocumentSource func(ctx context.Context, s3URL string) ([]byte, error)

// SetDocumentSource sets where CreateJob reads documentSource documents
// (nil: documentSource is refused).
func (j *Jobs) SetDocumentSource(src DocumentSource) { j.docs = src }

// NewJobs returns the Jobs calls over svc, with the ARNs and page sizes of
// c.
func NewJobs(svc *jobs.Service, c *Client) *Jobs {
	return &Jobs{svc: svc, iot: c, arnPrefix: c.arnPrefix}
}

// JobARN is the ARN of job id.
func (j *Jobs) JobARN(id string) string { return j.arnPrefix + "job/" + id }

// translateJobs maps Jobs service errors onto the AWS IoT error types.
func translateJobs(op string, err error) error {
	msg := aws.String(err.Error())
	switch {
	case errors.Is(err, jobs.ErrNotFound):
		return fmt.Errorf("%s: %w", op, &types.ResourceNotFoundException{Message: msg})
	case errors.Is(err, jobs.ErrAlreadyExists):
		return fmt.Errorf("%s: %w", op, &types.ResourceAlreadyExistsException{Message: msg})
	case errors.Is(err, jobs.ErrInvalid):
		return fmt.Errorf("%s: %w", op, &types.InvalidRequestException{Message: msg})
	}
	return fmt.Errorf("%s: %w", op, &types.InternalFailureException{Message: msg})
}

func invalid(op, format string, args ...any) error {
	return &types.InvalidRequestException{Message: aws.String(op + ": " + fmt.Sprintf(format, args...))}
}

// CreateJob creates a job on things and thing groups (target ARNs) with
// an inline document or a documentSource (an S3 URL of the local artifact
// store, see SetDocumentSource); targetSelection CONTINUOUS also targets
// things added to the groups later, timeoutConfig times out executions
// that stay IN_PROGRESS, presignedUrlConfig replaces the
// ${aws:iot:s3-presigned-url:URL} placeholders in the document devices
// receive, jobExecutionsRolloutConfig.maximumPerMinute paces the
// executions and abortConfig cancels the job when its criteria are met.
// What the local IoT Core cannot honour (an exponential rollout, retry
// and scheduling configs, job templates, namespaces) is an
// InvalidRequestException naming it, rather than silently ignored. Tags
// are accepted and not stored.
func (j *Jobs) CreateJob(ctx context.Context, in *iot.CreateJobInput, _ ...func(*iot.Options)) (*iot.CreateJobOutput, error) {
	id := aws.ToString(in.JobId)
	return serve(ctx, j.iot, "CreateJob", id, func() (*iot.CreateJobOutput, error) {
		const op = "CreateJob"
		for name, set := range map[string]bool{
			"jobExecutionsRolloutConfig.exponentialRate": in.JobExecutionsRolloutConfig != nil && in.JobExecutionsRolloutConfig.ExponentialRate != nil,
			"jobExecutionsRetryConfig":                   in.JobExecutionsRetryConfig != nil,
			"schedulingConfig":                           in.SchedulingConfig != nil,
			"jobTemplateArn":                             in.JobTemplateArn != nil,
			"documentParameters":                         in.DocumentParameters != nil,
			"destinationPackageVersions":                 in.DestinationPackageVersions != nil,
			"namespaceId":                                in.NamespaceId != nil,
		} {
			if set {
				return nil, invalid(op, "%s is not supported by the local IoT Core", name)
			}
		}
		doc, err := j.document(ctx, in)
		if err != nil {
			return nil, err
		}
		if len(in.Targets) == 0 {
			return nil, invalid(op, "targets is required (thing or thing group ARNs)")
		}
		create := jobs.CreateJobInput{JobID: id, Document: doc, Description: aws.ToString(in.Description)}
		if err := jobConfigs(in, &create); err != nil {
			return nil, err
		}
		for _, t := range in.Targets {
			if name, ok := arnResource(t, "thing/"); ok {
				create.Things = append(create.Things, name)
			} else if name, ok := arnResource(t, "thinggroup/"); ok {
				create.Groups = append(create.Groups, name)
			} else {
				return nil, invalid(op, "target %q is not a thing or thing group ARN (arn:aws:iot:REGION:ACCOUNT:thing/NAME or thinggroup/NAME)", t)
			}
		}
		switch in.TargetSelection {
		case "", types.TargetSelectionSnapshot:
		case types.TargetSelectionContinuous:
			create.Continuous = true
		default:
			return nil, invalid(op, "targetSelection %q must be SNAPSHOT or CONTINUOUS", in.TargetSelection)
		}
		job, err := j.svc.CreateJob(ctx, create)
		if err != nil {
			return nil, translateJobs(op, err)
		}
		return &iot.CreateJobOutput{JobId: aws.String(job.JobID), JobArn: aws.String(j.JobARN(job.JobID)), Description: optToken(job.Description)}, nil
	})
}

// document is the document of a CreateJob: inline, or read from its
// documentSource.
func (j *Jobs) document(ctx context.Context, in *iot.CreateJobInput) ([]byte, error) {
	const op = "CreateJob"
	switch {
	case in.Document != nil && in.DocumentSource != nil:
		return nil, invalid(op, "document and documentSource are mutually exclusive")
	case in.Document != nil:
		return []byte(aws.ToString(in.Document)), nil
	case in.DocumentSource != nil:
		if j.docs == nil {
			return nil, invalid(op, "documentSource %q: the local IoT Core serves no S3 buckets here; pass document", aws.ToString(in.DocumentSource))
		}
		doc, err := j.docs(ctx, aws.ToString(in.DocumentSource))
		if err != nil {
			return nil, invalid(op, "documentSource: %v", err)
		}
		return doc, nil
	}
	return nil, invalid(op, "document or documentSource is required")
}

// jobConfigs copies the timeout, rollout, abort and presigned-URL
// configurations of in into create.
func jobConfigs(in *iot.CreateJobInput, create *jobs.CreateJobInput) error {
	const op = "CreateJob"
	if in.TimeoutConfig != nil {
		create.InProgressTimeoutMinutes = aws.ToInt64(in.TimeoutConfig.InProgressTimeoutInMinutes)
	}
	if r := in.JobExecutionsRolloutConfig; r != nil {
		if r.MaximumPerMinute == nil || *r.MaximumPerMinute < 1 {
			return invalid(op, "jobExecutionsRolloutConfig.maximumPerMinute must be 1..%d", jobs.MaxRolloutPerMinute)
		}
		create.MaximumPerMinute = int(*r.MaximumPerMinute)
	}
	if a := in.AbortConfig; a != nil {
		if len(a.CriteriaList) == 0 {
			return invalid(op, "abortConfig.criteriaList needs at least one criterion")
		}
		for _, c := range a.CriteriaList {
			create.Abort = append(create.Abort, jobs.AbortCriteria{
				FailureType: string(c.FailureType), Action: string(c.Action),
				ThresholdPercentage: aws.ToFloat64(c.ThresholdPercentage), MinExecutedThings: int(aws.ToInt32(c.MinNumberOfExecutedThings)),
			})
		}
	}
	if p := in.PresignedUrlConfig; p != nil {
		create.PresignExpiresSec = 3600 // AWS's default
		if p.ExpiresInSec != nil {
			create.PresignExpiresSec = *p.ExpiresInSec
		}
	}
	return nil
}

// arnResource returns the resource name of an IoT ARN of kind (e.g.
// "thing/").
func arnResource(arn, kind string) (string, bool) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "iot" {
		return "", false
	}
	name, ok := strings.CutPrefix(parts[5], kind)
	return name, ok && name != ""
}

func (j *Jobs) targets(job jobs.Job) []string {
	var out []string
	for _, t := range job.Things {
		out = append(out, j.iot.ThingARN(t))
	}
	for _, g := range job.Groups {
		out = append(out, j.iot.ThingGroupARN(g))
	}
	return out
}

func lastUpdated(job jobs.Job) time.Time {
	if job.CompletedAt.After(job.CreatedAt) {
		return job.CompletedAt
	}
	return job.CreatedAt
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return aws.Time(t)
}

// DescribeJob describes a job and counts its executions by status.
func (j *Jobs) DescribeJob(ctx context.Context, in *iot.DescribeJobInput, _ ...func(*iot.Options)) (*iot.DescribeJobOutput, error) {
	id := aws.ToString(in.JobId)
	return serve(ctx, j.iot, "DescribeJob", id, func() (*iot.DescribeJobOutput, error) {
		job, err := j.svc.Job(id)
		if err != nil {
			return nil, translateJobs("DescribeJob", err)
		}
		n := func(s protocol.JobStatus) *int32 { return aws.Int32(int32(job.Counts[s])) }
		return &iot.DescribeJobOutput{Job: &types.Job{
			JobId: aws.String(job.JobID), JobArn: aws.String(j.JobARN(job.JobID)), Description: optToken(job.Description),
			Status: types.JobStatus(job.Status), TargetSelection: types.TargetSelection(job.TargetSelection),
			Targets: j.targets(job), CreatedAt: aws.Time(job.CreatedAt), LastUpdatedAt: aws.Time(lastUpdated(job)),
			CompletedAt: optTime(job.CompletedAt), ReasonCode: optToken(job.ReasonCode), Comment: optToken(job.Comment),
			ForceCanceled: optBool(job.ForceCanceled), JobExecutionsRolloutConfig: rolloutConfig(job), AbortConfig: abortConfig(job),
			PresignedUrlConfig: presignConfig(job), TimeoutConfig: timeoutConfig(job),
			JobProcessDetails: &types.JobProcessDetails{
				NumberOfQueuedThings: n(protocol.JobQueued), NumberOfInProgressThings: n(protocol.JobInProgress),
				NumberOfSucceededThings: n(protocol.JobSucceeded), NumberOfFailedThings: n(protocol.JobFailed),
				NumberOfRejectedThings: n(protocol.JobRejected), NumberOfTimedOutThings: n(protocol.JobTimedOut),
				NumberOfRemovedThings: n(protocol.JobRemoved), NumberOfCanceledThings: n(protocol.JobCanceled),
			},
		}}, nil
	})
}

func optBool(b bool) *bool {
	if !b {
		return nil
	}
	return aws.Bool(true)
}

func rolloutConfig(job jobs.Job) *types.JobExecutionsRolloutConfig {
	if job.MaximumPerMinute == 0 {
		return nil
	}
	return &types.JobExecutionsRolloutConfig{MaximumPerMinute: aws.Int32(int32(job.MaximumPerMinute))}
}

func abortConfig(job jobs.Job) *types.AbortConfig {
	if len(job.Abort) == 0 {
		return nil
	}
	out := &types.AbortConfig{}
	for _, c := range job.Abort {
		out.CriteriaList = append(out.CriteriaList, types.AbortCriteria{
			FailureType: types.JobExecutionFailureType(c.FailureType), Action: types.AbortAction(c.Action),
			ThresholdPercentage: aws.Float64(c.ThresholdPercentage), MinNumberOfExecutedThings: aws.Int32(int32(c.MinExecutedThings)),
		})
	}
	return out
}

func timeoutConfig(job jobs.Job) *types.TimeoutConfig {
	if job.InProgressTimeoutMinutes == 0 {
		return nil
	}
	return &types.TimeoutConfig{InProgressTimeoutInMinutes: aws.Int64(job.InProgressTimeoutMinutes)}
}

func presignConfig(job jobs.Job) *types.PresignedUrlConfig {
	if job.PresignExpiresSec == 0 {
		return nil
	}
	return &types.PresignedUrlConfig{ExpiresInSec: aws.Int64(job.PresignExpiresSec)}
}

// ListJobs lists jobs in creation order, filtered by status, target
// selection and thing group, in pages.
func (j *Jobs) ListJobs(ctx context.Context, in *iot.ListJobsInput, _ ...func(*iot.Options)) (*iot.ListJobsOutput, error) {
	return serve(ctx, j.iot, "ListJobs", "", func() (*iot.ListJobsOutput, error) {
		if in.NamespaceId != nil || in.ThingGroupId != nil {
			return nil, invalid("ListJobs", "namespaceId and thingGroupId are not supported by the local IoT Core (thingGroupName is)")
		}
		var all []types.JobSummary
		for _, job := range j.svc.Jobs() {
			if (in.Status != "" && string(in.Status) != job.Status) ||
				(in.TargetSelection != "" && string(in.TargetSelection) != job.TargetSelection) ||
				(in.ThingGroupName != nil && !slices.Contains(job.Groups, aws.ToString(in.ThingGroupName))) {
				continue
			}
			all = append(all, types.JobSummary{
				JobId: aws.String(job.JobID), JobArn: aws.String(j.JobARN(job.JobID)), Status: types.JobStatus(job.Status),
				TargetSelection: types.TargetSelection(job.TargetSelection), CreatedAt: aws.Time(job.CreatedAt),
				LastUpdatedAt: aws.Time(lastUpdated(job)), CompletedAt: optTime(job.CompletedAt),
			})
		}
		items, next, err := page(j.iot, "ListJobs", all, aws.ToString(in.NextToken), aws.ToInt32(in.MaxResults), in.MaxResults != nil)
		if err != nil {
			return nil, err
		}
		return &iot.ListJobsOutput{Jobs: items, NextToken: optToken(next)}, nil
	})
}

// CancelJob cancels a job: its QUEUED executions, and with Force its
// IN_PROGRESS ones, become CANCELED.
func (j *Jobs) CancelJob(ctx context.Context, in *iot.CancelJobInput, _ ...func(*iot.Options)) (*iot.CancelJobOutput, error) {
	id := aws.ToString(in.JobId)
	return serve(ctx, j.iot, "CancelJob", id, func() (*iot.CancelJobOutput, error) {
		job, err := j.svc.CancelJobWithReason(id, in.Force, aws.ToString(in.ReasonCode), aws.ToString(in.Comment))
		if err != nil {
			return nil, translateJobs("CancelJob", err)
		}
		return &iot.CancelJobOutput{JobId: aws.String(job.JobID), JobArn: aws.String(j.JobARN(job.JobID)), Description: optToken(job.Description)}, nil
	})
}

func executionSummary(e jobs.Execution) *types.JobExecutionSummary {
	return &types.JobExecutionSummary{
		Status: types.JobExecutionStatus(e.Status), ExecutionNumber: aws.Int64(e.ExecutionNumber),
		QueuedAt: aws.Time(e.QueuedAt), StartedAt: optTime(e.StartedAt), LastUpdatedAt: aws.Time(e.LastUpdatedAt),
	}
}

// ListJobExecutionsForJob lists a job's executions by thing name,
// optionally with one status, in pages.
func (j *Jobs) ListJobExecutionsForJob(ctx context.Context, in *iot.ListJobExecutionsForJobInput, _ ...func(*iot.Options)) (*iot.ListJobExecutionsForJobOutput, error) {
	id := aws.ToString(in.JobId)
	return serve(ctx, j.iot, "ListJobExecutionsForJob", id, func() (*iot.ListJobExecutionsForJobOutput, error) {
		execs, err := j.svc.Executions(id)
		if err != nil {
			return nil, translateJobs("ListJobExecutionsForJob", err)
		}
		var all []types.JobExecutionSummaryForJob
		for _, e := range execs {
			if in.Status == "" || string(in.Status) == string(e.Status) {
				all = append(all, types.JobExecutionSummaryForJob{ThingArn: aws.String(j.iot.ThingARN(e.ThingName)), JobExecutionSummary: executionSummary(e)})
			}
		}
		items, next, err := page(j.iot, "ListJobExecutionsForJob", all, aws.ToString(in.NextToken), aws.ToInt32(in.MaxResults), in.MaxResults != nil)
		if err != nil {
			return nil, err
		}
		return &iot.ListJobExecutionsForJobOutput{ExecutionSummaries: items, NextToken: optToken(next)}, nil
	})
}

// ListJobExecutionsForThing lists a thing's executions in job creation
// order, optionally with one status or of one job, in pages.
func (j *Jobs) ListJobExecutionsForThing(ctx context.Context, in *iot.ListJobExecutionsForThingInput, _ ...func(*iot.Options)) (*iot.ListJobExecutionsForThingOutput, error) {
	thing := aws.ToString(in.ThingName)
	return serve(ctx, j.iot, "ListJobExecutionsForThing", thing, func() (*iot.ListJobExecutionsForThingOutput, error) {
		if in.NamespaceId != nil {
			return nil, invalid("ListJobExecutionsForThing", "namespaceId is not supported by the local IoT Core")
		}
		if _, err := j.iot.reg.Thing(thing); err != nil {
			return nil, translate("ListJobExecutionsForThing", err)
		}
		var all []types.JobExecutionSummaryForThing
		for _, job := range j.svc.Jobs() {
			if in.JobId != nil && aws.ToString(in.JobId) != job.JobID {
				continue
			}
			e, err := j.svc.Execution(job.JobID, thing)
			if err != nil || (in.Status != "" && string(in.Status) != string(e.Status)) {
				continue // no execution on this thing
			}
			all = append(all, types.JobExecutionSummaryForThing{JobId: aws.String(job.JobID), JobExecutionSummary: executionSummary(e)})
		}
		items, next, err := page(j.iot, "ListJobExecutionsForThing", all, aws.ToString(in.NextToken), aws.ToInt32(in.MaxResults), in.MaxResults != nil)
		if err != nil {
			return nil, err
		}
		return &iot.ListJobExecutionsForThingOutput{ExecutionSummaries: items, NextToken: optToken(next)}, nil
	})
}

// DescribeJobExecution describes a job's execution on a thing (the
// latest; ExecutionNumber must match it when given).
func (j *Jobs) DescribeJobExecution(ctx context.Context, in *iot.DescribeJobExecutionInput, _ ...func(*iot.Options)) (*iot.DescribeJobExecutionOutput, error) {
	id, thing := aws.ToString(in.JobId), aws.ToString(in.ThingName)
	return serve(ctx, j.iot, "DescribeJobExecution", thing, func() (*iot.DescribeJobExecutionOutput, error) {
		e, err := j.svc.Execution(id, thing)
		if err != nil {
			return nil, translateJobs("DescribeJobExecution", err)
		}
		if in.ExecutionNumber != nil && *in.ExecutionNumber != e.ExecutionNumber {
			return nil, translateJobs("DescribeJobExecution", fmt.Errorf("job %s execution %d on %s: %w", id, *in.ExecutionNumber, thing, jobs.ErrNotFound))
		}
		x := &types.JobExecution{
			JobId: aws.String(e.JobID), ThingArn: aws.String(j.iot.ThingARN(e.ThingName)), Status: types.JobExecutionStatus(e.Status),
			ExecutionNumber: aws.Int64(e.ExecutionNumber), VersionNumber: e.VersionNumber,
			QueuedAt: aws.Time(e.QueuedAt), StartedAt: optTime(e.StartedAt), LastUpdatedAt: aws.Time(e.LastUpdatedAt),
		}
		if len(e.StatusDetails) > 0 {
			x.StatusDetails = &types.JobExecutionStatusDetails{DetailsMap: e.StatusDetails}
		}
		return &iot.DescribeJobExecutionOutput{Execution: x}, nil
	})
}

// GetJobDocument returns a job's document exactly as it was created.
func (j *Jobs) GetJobDocument(ctx context.Context, in *iot.GetJobDocumentInput, _ ...func(*iot.Options)) (*iot.GetJobDocumentOutput, error) {
	id := aws.ToString(in.JobId)
	return serve(ctx, j.iot, "GetJobDocument", id, func() (*iot.GetJobDocumentOutput, error) {
		job, err := j.svc.Job(id)
		if err != nil {
			return nil, translateJobs("GetJobDocument", err)
		}
		return &iot.GetJobDocumentOutput{Document: aws.String(string(job.Document))}, nil
	})
}
