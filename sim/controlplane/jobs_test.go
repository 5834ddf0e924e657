package controlplane_test

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

const arnPrefix = "arn:aws:iot:local-1:000000000000:"

func TestJobs(t *testing.T) {
	c, client, _, things := setup(t, 2)
	ctx := context.Background()
	group := c.Names().ThingGroup
	doc := `{"operation":"reboot",  "note":"kept <exactly>"}`

	out, err := client.CreateJob(ctx, &iot.CreateJobInput{
		JobId: aws.String("reboot-1"), Document: aws.String(doc), Description: aws.String("reboot the fleet"),
		Targets:       []string{arnPrefix + "thinggroup/" + group},
		TimeoutConfig: &types.TimeoutConfig{InProgressTimeoutInMinutes: aws.Int64(30)},
	})
	require.NoError(t, err)
	assert.Equal(t, arnPrefix+"job/reboot-1", aws.ToString(out.JobArn))
	assert.Equal(t, "reboot the fleet", aws.ToString(out.Description))

	// The same id again: 409 ResourceAlreadyExistsException.
	_, err = client.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("reboot-1"), Document: aws.String(doc), Targets: []string{arnPrefix + "thing/" + things[0]}})
	testenv.RequireAPIError(t, err, "ResourceAlreadyExistsException", 409)
	var exists *types.ResourceAlreadyExistsException
	assert.ErrorAs(t, err, &exists)
	// Bad requests name what is wrong.
	for name, in := range map[string]*iot.CreateJobInput{
		"not JSON":      {JobId: aws.String("bad-1"), Document: aws.String("{"), Targets: []string{arnPrefix + "thing/" + things[0]}},
		"bad target":    {JobId: aws.String("bad-3"), Document: aws.String(doc), Targets: []string{"dev-x"}},
		"no document":   {JobId: aws.String("bad-4"), Targets: []string{arnPrefix + "thing/" + things[0]}},
		"S3 document":   {JobId: aws.String("bad-5"), DocumentSource: aws.String("https://s3.amazonaws.com/b/doc.json"), Targets: []string{arnPrefix + "thing/" + things[0]}},
		"presigned URL": {JobId: aws.String("bad-6"), Document: aws.String(doc), Targets: []string{arnPrefix + "thing/" + things[0]}, PresignedUrlConfig: &types.PresignedUrlConfig{RoleArn: aws.String("arn:aws:iam::000000000000:role/r")}},
		"continuous on things": {JobId: aws.String("bad-7"), Document: aws.String(doc), Targets: []string{arnPrefix + "thing/" + things[0]},
			TargetSelection: types.TargetSelectionContinuous},
	} {
		_, err := client.CreateJob(ctx, in)
		testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
		t.Logf("%s: %v", name, err)
	}
	_, err = client.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bad-8"), Document: aws.String(doc), Targets: []string{arnPrefix + "thing/no-such-thing"}})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	_, err = client.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("bad-1")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)

	// The first device starts and reports progress over the Jobs MQTT API.
	c.Jobs().Handle(ctx, protocol.JobsUpdateTopic(things[0], "reboot-1"),
		[]byte(`{"status":"IN_PROGRESS","statusDetails":{"step":"rebooting"}}`), func(string, []byte) {})

	d, err := client.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("reboot-1")})
	require.NoError(t, err)
	job := d.Job
	require.NotNil(t, job)
	assert.Equal(t, types.JobStatusInProgress, job.Status)
	assert.Equal(t, types.TargetSelectionSnapshot, job.TargetSelection)
	require.NotNil(t, job.TimeoutConfig)
	assert.Equal(t, int64(30), aws.ToInt64(job.TimeoutConfig.InProgressTimeoutInMinutes))
	assert.Equal(t, []string{arnPrefix + "thinggroup/" + group}, job.Targets)
	require.NotNil(t, job.JobProcessDetails)
	assert.Equal(t, int32(1), aws.ToInt32(job.JobProcessDetails.NumberOfQueuedThings))
	assert.Equal(t, int32(1), aws.ToInt32(job.JobProcessDetails.NumberOfInProgressThings))
	require.NotNil(t, job.CreatedAt)

	doc2, err := client.GetJobDocument(ctx, &iot.GetJobDocumentInput{JobId: aws.String("reboot-1")})
	require.NoError(t, err)
	assert.Equal(t, doc, aws.ToString(doc2.Document), "the document exactly as created")

	x, err := client.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("reboot-1"), ThingName: aws.String(things[0])})
	require.NoError(t, err)
	assert.Equal(t, types.JobExecutionStatusInProgress, x.Execution.Status)
	assert.Equal(t, map[string]string{"step": "rebooting"}, x.Execution.StatusDetails.DetailsMap)
	assert.Equal(t, arnPrefix+"thing/"+things[0], aws.ToString(x.Execution.ThingArn))
	require.NotNil(t, x.Execution.StartedAt)
	_, err = client.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("reboot-1"), ThingName: aws.String("no-such-thing")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)

	// Executions of the job, in pages, and filtered by status.
	ex, err := client.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("reboot-1"), MaxResults: aws.Int32(1)})
	require.NoError(t, err)
	require.Len(t, ex.ExecutionSummaries, 1)
	assert.Equal(t, arnPrefix+"thing/"+things[0], aws.ToString(ex.ExecutionSummaries[0].ThingArn))
	require.NotNil(t, ex.NextToken)
	ex, err = client.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("reboot-1"), NextToken: ex.NextToken})
	require.NoError(t, err)
	require.Len(t, ex.ExecutionSummaries, 1)
	assert.Equal(t, types.JobExecutionStatusQueued, ex.ExecutionSummaries[0].JobExecutionSummary.Status)
	assert.Nil(t, ex.NextToken)
	ex, err = client.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("reboot-1"), Status: types.JobExecutionStatusInProgress})
	require.NoError(t, err)
	require.Len(t, ex.ExecutionSummaries, 1)
	_, err = client.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("nope")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)

	// A second job on one thing; the thing's executions across jobs.
	_, err = client.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("ping-2"), Document: aws.String(`{"operation":"ping"}`),
		Targets: []string{arnPrefix + "thing/" + things[1]}})
	require.NoError(t, err)
	ft, err := client.ListJobExecutionsForThing(ctx, &iot.ListJobExecutionsForThingInput{ThingName: aws.String(things[1])})
	require.NoError(t, err)
	var ids []string
	for _, s := range ft.ExecutionSummaries {
		ids = append(ids, aws.ToString(s.JobId))
	}
	assert.Equal(t, []string{"reboot-1", "ping-2"}, ids)
	ft, err = client.ListJobExecutionsForThing(ctx, &iot.ListJobExecutionsForThingInput{ThingName: aws.String(things[1]), MaxResults: aws.Int32(1)})
	require.NoError(t, err)
	require.Len(t, ft.ExecutionSummaries, 1)
	require.NotNil(t, ft.NextToken)
	_, err = client.ListJobExecutionsForThing(ctx, &iot.ListJobExecutionsForThingInput{ThingName: aws.String("no-such-thing")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)

	// ListJobs pages and filters.
	var listed []string
	for p := iot.NewListJobsPaginator(client, &iot.ListJobsInput{MaxResults: aws.Int32(1)}); p.HasMorePages(); {
		out, err := p.NextPage(ctx)
		require.NoError(t, err)
		for _, j := range out.Jobs {
			listed = append(listed, aws.ToString(j.JobId))
		}
	}
	assert.Equal(t, []string{"reboot-1", "ping-2"}, listed)
	byGroup, err := client.ListJobs(ctx, &iot.ListJobsInput{ThingGroupName: aws.String(group)})
	require.NoError(t, err)
	require.Len(t, byGroup.Jobs, 1)
	assert.Equal(t, "reboot-1", aws.ToString(byGroup.Jobs[0].JobId))
	_, err = client.ListJobs(ctx, &iot.ListJobsInput{NextToken: aws.String("x")})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)

	// CancelJob without force cancels QUEUED executions only.
	cj, err := client.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("reboot-1"), Comment: aws.String("wrong image")})
	require.NoError(t, err)
	assert.Equal(t, arnPrefix+"job/reboot-1", aws.ToString(cj.JobArn))
	d, err = client.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("reboot-1")})
	require.NoError(t, err)
	assert.Equal(t, types.JobStatusCanceled, d.Job.Status)
	assert.Equal(t, int32(1), aws.ToInt32(d.Job.JobProcessDetails.NumberOfCanceledThings))
	assert.Equal(t, int32(1), aws.ToInt32(d.Job.JobProcessDetails.NumberOfInProgressThings))
	// With force, IN_PROGRESS ones too.
	_, err = client.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("force-3"), Document: aws.String(doc), Targets: []string{arnPrefix + "thing/" + things[0]}})
	require.NoError(t, err)
	c.Jobs().Handle(ctx, protocol.JobsUpdateTopic(things[0], "force-3"), []byte(`{"status":"IN_PROGRESS"}`), func(string, []byte) {})
	x, err = client.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("force-3"), ThingName: aws.String(things[0])})
	require.NoError(t, err)
	require.Equal(t, types.JobExecutionStatusInProgress, x.Execution.Status)
	_, err = client.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("force-3"), Force: true})
	require.NoError(t, err)
	x, err = client.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("force-3"), ThingName: aws.String(things[0])})
	require.NoError(t, err)
	assert.Equal(t, types.JobExecutionStatusCanceled, x.Execution.Status)
	_, err = client.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("nope")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	canceled, err := client.ListJobs(ctx, &iot.ListJobsInput{Status: types.JobStatusCanceled})
	require.NoError(t, err)
	require.Len(t, canceled.Jobs, 2)
}

// TestContinuousJobTargetsThingsAddedLater: a CONTINUOUS job on a thing
// group gains an execution when AddThingToThingGroup adds a thing.
func TestContinuousJobTargetsThingsAddedLater(t *testing.T) {
	c, client, _, things := setup(t, 2)
	ctx := context.Background()
	group := c.Names().ThingGroup
	_, err := client.RemoveThingFromThingGroup(ctx, &iot.RemoveThingFromThingGroupInput{ThingGroupName: aws.String(group), ThingName: aws.String(things[1])})
	require.NoError(t, err)
	_, err = client.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("cont"), Document: aws.String(`{"operation":"x"}`),
		Targets: []string{arnPrefix + "thinggroup/" + group}, TargetSelection: types.TargetSelectionContinuous})
	require.NoError(t, err)
	ex, err := client.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("cont")})
	require.NoError(t, err)
	require.Len(t, ex.ExecutionSummaries, 1)
	_, err = client.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String(group), ThingName: aws.String(things[1])})
	require.NoError(t, err)
	ex, err = client.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("cont")})
	require.NoError(t, err)
	require.Len(t, ex.ExecutionSummaries, 2)
	d, err := client.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("cont")})
	require.NoError(t, err)
	assert.Equal(t, types.TargetSelectionContinuous, d.Job.TargetSelection)
}

// TestCancelCompletedJobIsRejected: a COMPLETED job cannot be canceled
// (400), and stays COMPLETED.
func TestCancelCompletedJobIsRejected(t *testing.T) {
	c, client, _, things := setup(t, 1)
	ctx := context.Background()
	_, err := client.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("done"), Document: aws.String(`{"operation":"x"}`),
		Targets: []string{arnPrefix + "thing/" + things[0]}})
	require.NoError(t, err)
	c.Jobs().Handle(ctx, protocol.JobsUpdateTopic(things[0], "done"), []byte(`{"status":"SUCCEEDED"}`), func(string, []byte) {})
	d, err := client.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("done")})
	require.NoError(t, err)
	require.Equal(t, types.JobStatusCompleted, d.Job.Status)
	require.NotNil(t, d.Job.CompletedAt)
	assert.Equal(t, int32(1), aws.ToInt32(d.Job.JobProcessDetails.NumberOfSucceededThings))
	_, err = client.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("done")})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	d, err = client.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("done")})
	require.NoError(t, err)
	assert.Equal(t, types.JobStatusCompleted, d.Job.Status)
}

// TestRolloutAndAbortConfigs: maximumPerMinute paces the executions, the
// abort criteria cancel the job with a reason, as DescribeJob shows.
func TestRolloutAndAbortConfigs(t *testing.T) {
	c, client, _, things := setup(t, 3)
	ctx := context.Background()
	group := arnPrefix + "thinggroup/" + c.Names().ThingGroup
	_, err := client.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("paced"), Document: aws.String(`{"operation":"x"}`),
		Targets: []string{group}, JobExecutionsRolloutConfig: &types.JobExecutionsRolloutConfig{MaximumPerMinute: aws.Int32(1)},
		AbortConfig: &types.AbortConfig{CriteriaList: []types.AbortCriteria{{FailureType: types.JobExecutionFailureTypeFailed,
			Action: types.AbortActionCancel, ThresholdPercentage: aws.Float64(50), MinNumberOfExecutedThings: aws.Int32(1)}}}})
	require.NoError(t, err)
	d, err := client.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("paced")})
	require.NoError(t, err)
	assert.Equal(t, int32(1), aws.ToInt32(d.Job.JobExecutionsRolloutConfig.MaximumPerMinute))
	require.NotNil(t, d.Job.AbortConfig)
	assert.Equal(t, types.JobExecutionFailureTypeFailed, d.Job.AbortConfig.CriteriaList[0].FailureType)
	assert.Equal(t, int32(1), aws.ToInt32(d.Job.JobProcessDetails.NumberOfQueuedThings), "one execution in the first minute")
	ex, err := client.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("paced")})
	require.NoError(t, err)
	require.Len(t, ex.ExecutionSummaries, 1)

	// The first device fails: 100% of 1 executed >= 50%: aborted.
	first := strings.TrimPrefix(aws.ToString(ex.ExecutionSummaries[0].ThingArn), arnPrefix+"thing/")
	require.Contains(t, things, first)
	c.Jobs().Handle(ctx, protocol.JobsUpdateTopic(first, "paced"), []byte(`{"status":"FAILED"}`), func(string, []byte) {})
	d, err = client.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("paced")})
	require.NoError(t, err)
	assert.Equal(t, types.JobStatusCanceled, d.Job.Status)
	assert.Equal(t, "AUTO_ABORT", aws.ToString(d.Job.ReasonCode))
	assert.Contains(t, aws.ToString(d.Job.Comment), "1 of 1")

	// CancelJob's reason and comment are kept.
	_, err = client.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("other"), Document: aws.String(`{"operation":"x"}`), Targets: []string{group}})
	require.NoError(t, err)
	_, err = client.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("other"), ReasonCode: aws.String("BAD_BUILD"), Comment: aws.String("wrong image")})
	require.NoError(t, err)
	d, err = client.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("other")})
	require.NoError(t, err)
	assert.Equal(t, "BAD_BUILD", aws.ToString(d.Job.ReasonCode))
	assert.Equal(t, "wrong image", aws.ToString(d.Job.Comment))

	for name, in := range map[string]*iot.CreateJobInput{
		"exponential": {JobExecutionsRolloutConfig: &types.JobExecutionsRolloutConfig{ExponentialRate: &types.ExponentialRolloutRate{
			BaseRatePerMinute: aws.Int32(1), IncrementFactor: aws.Float64(2), RateIncreaseCriteria: &types.RateIncreaseCriteria{NumberOfNotifiedThings: aws.Int32(1)}}}},
		"rate 0":         {JobExecutionsRolloutConfig: &types.JobExecutionsRolloutConfig{}},
		"bad threshold":  {AbortConfig: &types.AbortConfig{CriteriaList: []types.AbortCriteria{{FailureType: "FAILED", Action: "CANCEL", ThresholdPercentage: aws.Float64(150), MinNumberOfExecutedThings: aws.Int32(1)}}}},
		"both documents": {DocumentSource: aws.String("https://s3.amazonaws.com/b/k")},
		"retry":          {JobExecutionsRetryConfig: &types.JobExecutionsRetryConfig{CriteriaList: []types.RetryCriteria{{FailureType: types.RetryableFailureTypeFailed, NumberOfRetries: aws.Int32(1)}}}},
	} {
		in.JobId, in.Targets = aws.String("bad-"+strings.ReplaceAll(name, " ", "-")), []string{group}
		if in.DocumentSource == nil || name == "both documents" {
			in.Document = aws.String(`{}`)
		}
		_, err := client.CreateJob(ctx, in)
		testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
		t.Logf("%s: %v", name, err)
	}
}
