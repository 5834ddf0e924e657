package templateversions

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/sim/awsiot"
)

const tplName = "iot-fleet-dev"

// newTemplate creates tplName with body "v1" in a fresh local stand-in
// (listing in pages of 2, so the handler's pagination is exercised).
func newTemplate(t *testing.T) *awsiot.TemplateVersions {
	t.Helper()
	tv := awsiot.NewTemplateVersions(nil)
	tv.PageSize = 2
	_, err := tv.CreateProvisioningTemplate(context.Background(), &iot.CreateProvisioningTemplateInput{
		TemplateName: aws.String(tplName), TemplateBody: aws.String("v1"),
	})
	require.NoError(t, err)
	return tv
}

// newTemplateWithVersions is newTemplate updated to versions 2 to n
// (bodies v2 to vn, each the default when created).
func newTemplateWithVersions(t *testing.T, n int) *awsiot.TemplateVersions {
	t.Helper()
	tv := newTemplate(t)
	for i := 2; i <= n; i++ {
		require.NoError(t, update(context.Background(), tv, fmt.Sprintf("v%d", i)))
	}
	return tv
}

// update does what the AWS provider does on a template-body change.
func update(ctx context.Context, tv *awsiot.TemplateVersions, body string) error {
	_, err := tv.CreateProvisioningTemplateVersion(ctx, &iot.CreateProvisioningTemplateVersionInput{
		TemplateName: aws.String(tplName), TemplateBody: aws.String(body), SetAsDefault: true,
	})
	return err
}

func versionIDs(t *testing.T, tv *awsiot.TemplateVersions) (ids []int32, def int32) {
	t.Helper()
	out, err := tv.ListProvisioningTemplateVersions(context.Background(), &iot.ListProvisioningTemplateVersionsInput{
		TemplateName: aws.String(tplName), MaxResults: aws.Int32(10),
	})
	require.NoError(t, err)
	for _, v := range out.Versions {
		ids = append(ids, aws.ToInt32(v.VersionId))
		if v.IsDefaultVersion {
			def = aws.ToInt32(v.VersionId)
		}
	}
	return ids, def
}

func newHandler(t *testing.T, client IoT, keep int) *Handler {
	t.Helper()
	h, err := New(Config{IoT: client, TemplateName: tplName, Keep: keep})
	require.NoError(t, err)
	return h
}

// Without pruning the sixth version is refused: the failure this Lambda
// exists to prevent (and proof the stand-in enforces AWS's limit).
func TestTheSixthVersionFailsWithoutPruning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tv := newTemplateWithVersions(t, MaxVersions)
	err := update(ctx, tv, "v6")
	var limit *types.VersionsLimitExceededException
	require.ErrorAs(t, err, &limit)
}

// Pruning before every update, as the stack does, lets any number of
// updates through; each leaves the new body as the default and at most
// MaxVersions versions.
func TestPruningBeforeEachUpdateNeverHitsTheLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tv := newTemplate(t)
	h := newHandler(t, tv, 0)
	for i := 2; i <= 12; i++ {
		res, err := h.Handle(ctx, Event{TemplateBodySHA256: fmt.Sprint(i)})
		require.NoError(t, err, "update %d", i)
		ids, _ := versionIDs(t, tv)
		assert.LessOrEqual(t, len(ids), DefaultKeep, "update %d: room for one more", i)
		assert.ElementsMatch(t, ids, res.Kept)
		body := fmt.Sprintf("v%d", i)
		require.NoError(t, update(ctx, tv, body), "update %d", i)
		got, err := tv.DefaultBody(tplName)
		require.NoError(t, err)
		assert.Equal(t, body, got)
	}
	ids, def := versionIDs(t, tv)
	assert.Equal(t, []int32{8, 9, 10, 11, 12}, ids, "the newest versions are kept for rollback")
	assert.Equal(t, int32(12), def)
}

// An operator rolled the default back to an old version: it is kept
// whatever its age, and the newest others fill the rest.
func TestTheDefaultVersionIsAlwaysKept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tv := newTemplateWithVersions(t, 5)
	_, err := tv.UpdateProvisioningTemplate(ctx, &iot.UpdateProvisioningTemplateInput{TemplateName: aws.String(tplName), DefaultVersionId: aws.Int32(2)})
	require.NoError(t, err)

	res, err := newHandler(t, tv, 2).Handle(ctx, Event{})
	require.NoError(t, err)
	assert.Equal(t, []int32{5, 2}, res.Kept)
	assert.Equal(t, []int32{1, 3, 4}, res.Deleted, "oldest first")
	ids, def := versionIDs(t, tv)
	assert.Equal(t, []int32{2, 5}, ids)
	assert.Equal(t, int32(2), def)
	body, err := tv.DefaultBody(tplName)
	require.NoError(t, err)
	assert.Equal(t, "v2", body, "devices keep provisioning with the rolled-back body")
}

func TestNothingToDoUnderTheLimit(t *testing.T) {
	t.Parallel()
	tv := newTemplate(t)
	res, err := newHandler(t, tv, 0).Handle(context.Background(), Event{})
	require.NoError(t, err)
	assert.Equal(t, []int32{1}, res.Kept)
	assert.Empty(t, res.Deleted)
}

// The first deployment invokes the Lambda before the template exists.
func TestMissingTemplateIsNotAnError(t *testing.T) {
	t.Parallel()
	res, err := newHandler(t, awsiot.NewTemplateVersions(nil), 0).Handle(context.Background(), Event{})
	require.NoError(t, err)
	assert.True(t, res.Missing)
	assert.Empty(t, res.Deleted)
}

// failingDelete is the stand-in with one delete failing (throttled).
type failingDelete struct {
	*awsiot.TemplateVersions
	failOn int32
}

func (f failingDelete) DeleteProvisioningTemplateVersion(ctx context.Context, in *iot.DeleteProvisioningTemplateVersionInput, opts ...func(*iot.Options)) (*iot.DeleteProvisioningTemplateVersionOutput, error) {
	if aws.ToInt32(in.VersionId) == f.failOn {
		return nil, &types.ThrottlingException{Message: aws.String("rate exceeded")}
	}
	return f.TemplateVersions.DeleteProvisioningTemplateVersion(ctx, in, opts...)
}

// A failed delete fails the invocation (so the deployment stops before the
// update would hit the limit), names the version, and deletes nothing
// else after it.
func TestAFailedDeleteFailsTheInvocation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tv := newTemplateWithVersions(t, 5)
	_, err := newHandler(t, failingDelete{TemplateVersions: tv, failOn: 1}, 3).Handle(ctx, Event{})
	var throttled *types.ThrottlingException
	require.ErrorAs(t, err, &throttled)
	assert.Contains(t, err.Error(), "deleting version 1 of template "+tplName)
	ids, _ := versionIDs(t, tv)
	assert.Equal(t, []int32{1, 2, 3, 4, 5}, ids)
}

// The stand-in refuses to delete the default version, as AWS does; Plan
// never asks it to.
func TestTheStandInRefusesToDeleteTheDefault(t *testing.T) {
	t.Parallel()
	tv := newTemplate(t)
	_, err := tv.DeleteProvisioningTemplateVersion(context.Background(), &iot.DeleteProvisioningTemplateVersionInput{
		TemplateName: aws.String(tplName), VersionId: aws.Int32(1),
	})
	var conflict *types.DeleteConflictException
	require.ErrorAs(t, err, &conflict)
}

func TestPlan(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name          string
		versions      []Version
		keep          int
		kept, deleted []int32
	}{
		{"empty", nil, 4, nil, nil},
		{"under", []Version{{1, false}, {2, true}}, 4, []int32{2, 1}, nil},
		{"five, newest default", []Version{{3, false}, {1, false}, {5, true}, {2, false}, {4, false}}, 4, []int32{5, 4, 3, 2}, []int32{1}},
		{"old default", []Version{{1, false}, {2, true}, {3, false}, {4, false}, {5, false}}, 3, []int32{5, 4, 2}, []int32{1, 3}},
		{"keep one", []Version{{7, false}, {8, true}, {9, false}}, 1, []int32{8}, []int32{7, 9}},
	}
	for _, c := range cases {
		kept, deleted := Plan(c.versions, c.keep)
		assert.Equal(t, c.kept, kept, c.name)
		assert.Equal(t, c.deleted, deleted, c.name)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	tv := awsiot.NewTemplateVersions(nil)
	for _, keep := range []int{-1, MaxVersions, 9} {
		_, err := New(Config{IoT: tv, TemplateName: tplName, Keep: keep})
		require.Error(t, err, "keep %d", keep)
		assert.Contains(t, err.Error(), "room for the next version")
	}
	_, err := New(Config{IoT: tv})
	require.Error(t, err)
	h, err := New(Config{IoT: tv, TemplateName: tplName})
	require.NoError(t, err)
	assert.Equal(t, DefaultKeep, h.cfg.Keep)
}

// accessDeniedError is how the SDK reports IAM's denial (an API error
// with code AccessDeniedException).
type accessDeniedError struct{}

func (accessDeniedError) Error() string {
	return "api error AccessDeniedException: not authorized to perform iot:ListProvisioningTemplateVersions"
}
func (accessDeniedError) ErrorCode() string { return "AccessDeniedException" }

// deniedAtFirst answers AccessDenied to the first n listings, as IAM does
// for a few seconds after the role's policy was created.
type deniedAtFirst struct {
	*awsiot.TemplateVersions
	n *int
}

func (d deniedAtFirst) ListProvisioningTemplateVersions(ctx context.Context, in *iot.ListProvisioningTemplateVersionsInput, opts ...func(*iot.Options)) (*iot.ListProvisioningTemplateVersionsOutput, error) {
	if *d.n > 0 {
		*d.n--
		return nil, accessDeniedError{}
	}
	return d.TemplateVersions.ListProvisioningTemplateVersions(ctx, in, opts...)
}

func TestAccessDeniedRightAfterCreationIsRetried(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tv := newTemplateWithVersions(t, 5)
	denials := 2
	h, err := New(Config{IoT: deniedAtFirst{tv, &denials}, TemplateName: tplName, AccessDeniedRetries: 3, RetryDelay: time.Millisecond})
	require.NoError(t, err)
	res, err := h.Handle(ctx, Event{})
	require.NoError(t, err)
	assert.Equal(t, []int32{1}, res.Deleted)
	assert.Zero(t, denials)

	// A lasting denial fails, naming it, after the retries.
	denials = 10
	_, err = h.Handle(ctx, Event{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "AccessDeniedException")
	assert.Equal(t, 6, denials, "one try and three retries")
}
