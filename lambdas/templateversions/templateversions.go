// Package templateversions is the Lambda that keeps the fleet provisioning
// template under AWS IoT's limit of five versions. Every change of the
// template body makes the AWS provider create a new (default) version, and
// AWS refuses a sixth; the stack invokes this Lambda, before each such
// update, to delete the oldest non-default versions so that at most Keep
// (at most four) remain. The template's name, which flashed devices have
// baked in, never changes; the default version and the newest others are
// kept for rollback (SetDefaultProvisioningTemplateVersion).
//
// It acts only on the template its configuration names, whatever the
// event says.
package templateversions

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// MaxVersions is how many versions AWS IoT keeps of a provisioning
// template.
const MaxVersions = 5

// DefaultKeep leaves room for exactly one new version.
const DefaultKeep = MaxVersions - 1

// IoT is the part of the AWS IoT API the Lambda calls (*iot.Client in AWS,
// sim/awsiot.TemplateVersions locally).
type IoT interface {
	iot.ListProvisioningTemplateVersionsAPIClient
	DeleteProvisioningTemplateVersion(context.Context, *iot.DeleteProvisioningTemplateVersionInput, ...func(*iot.Options)) (*iot.DeleteProvisioningTemplateVersionOutput, error)
}

// Config configures a Handler.
type Config struct {
	IoT IoT
	// TemplateName is the one template the Lambda prunes.
	TemplateName string
	// Keep is how many versions, the default one included, remain
	// (1..MaxVersions-1); 0 means DefaultKeep.
	Keep int
	// AccessDeniedRetries and RetryDelay: on the first deployment the
	// Lambda runs right after IAM created its role's policy, which takes a
	// few seconds to apply everywhere; an AccessDenied listing is retried
	// that many times (0: 5), RetryDelay apart (0: 3 s), before it fails.
	AccessDeniedRetries int
	RetryDelay          time.Duration
	Logger              *slog.Logger
}

// Handler prunes the template's versions.
type Handler struct {
	cfg Config
}

// New checks cfg and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.IoT == nil || cfg.TemplateName == "" {
		return nil, errors.New("templateversions: IoT client and template name are required")
	}
	if cfg.Keep == 0 {
		cfg.Keep = DefaultKeep
	}
	if cfg.Keep < 1 || cfg.Keep > MaxVersions-1 {
		return nil, fmt.Errorf("templateversions: keep %d: must be 1 to %d, leaving room for the next version", cfg.Keep, MaxVersions-1)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AccessDeniedRetries == 0 {
		cfg.AccessDeniedRetries = 5
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = 3 * time.Second
	}
	return &Handler{cfg: cfg}, nil
}

// Event is what the deployment sends (the invocation's input). Only logged:
// the template is the configured one.
type Event struct {
	TemplateBodySHA256 string `json:"templateBodySha256,omitempty"`
}

// Result reports what was done.
type Result struct {
	Template string `json:"template"`
	// Missing: the template does not exist yet (first deployment).
	Missing bool    `json:"missing,omitempty"`
	Kept    []int32 `json:"kept"`
	Deleted []int32 `json:"deleted"`
}

// Version is one template version as listed.
type Version struct {
	ID      int32
	Default bool
}

// Plan splits versions into those to keep, newest first (the default
// version always, then the newest others up to keep in all), and those to
// delete, oldest first.
func Plan(versions []Version, keep int) (kept, deleted []int32) {
	sorted := slices.SortedFunc(slices.Values(versions), func(a, b Version) int { return cmp.Compare(b.ID, a.ID) })
	for _, v := range sorted {
		if v.Default {
			kept = append(kept, v.ID)
		}
	}
	for _, v := range sorted {
		if v.Default {
			continue
		}
		if len(kept) < keep {
			kept = append(kept, v.ID)
			continue
		}
		deleted = append(deleted, v.ID)
	}
	slices.SortFunc(kept, func(a, b int32) int { return cmp.Compare(b, a) })
	slices.Sort(deleted)
	return kept, deleted
}

// list lists every version of the template.
func (h *Handler) list(ctx context.Context) ([]Version, error) {
	var versions []Version
	pages := iot.NewListProvisioningTemplateVersionsPaginator(h.cfg.IoT, &iot.ListProvisioningTemplateVersionsInput{TemplateName: aws.String(h.cfg.TemplateName)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, v := range page.Versions {
			versions = append(versions, Version{ID: aws.ToInt32(v.VersionId), Default: v.IsDefaultVersion})
		}
	}
	return versions, nil
}

// accessDenied reports an AWS AccessDenied answer (IAM's error code, which
// the IoT API model does not declare as a type).
func accessDenied(err error) bool {
	var api interface{ ErrorCode() string } // smithy.APIError's method
	return errors.As(err, &api) && (api.ErrorCode() == "AccessDeniedException" || api.ErrorCode() == "AccessDenied")
}

// Handle lists the template's versions and deletes those Plan says to. An
// error leaves the remaining versions in place and fails the invocation,
// so the deployment stops before it would hit the limit.
func (h *Handler) Handle(ctx context.Context, ev Event) (Result, error) {
	name := h.cfg.TemplateName
	log := h.cfg.Logger.With("template", name, "templateBodySha256", ev.TemplateBodySHA256)
	res := Result{Template: name, Kept: []int32{}, Deleted: []int32{}}
	var versions []Version
	var err error
	for attempt := 0; ; attempt++ {
		versions, err = h.list(ctx)
		if err == nil || !accessDenied(err) || attempt >= h.cfg.AccessDeniedRetries {
			break
		}
		log.Warn("access denied listing versions (new role not yet effective?); retrying", "attempt", attempt+1, "err", err)
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("listing versions of template %s: %w (last: %w)", name, ctx.Err(), err)
		case <-time.After(h.cfg.RetryDelay):
		}
	}
	var nf *types.ResourceNotFoundException
	if errors.As(err, &nf) {
		log.Info("template does not exist yet: nothing to prune")
		res.Missing = true
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("listing versions of template %s: %w", name, err)
	}
	kept, deleted := Plan(versions, h.cfg.Keep)
	res.Kept = append(res.Kept, kept...)
	for _, id := range deleted {
		_, err := h.cfg.IoT.DeleteProvisioningTemplateVersion(ctx, &iot.DeleteProvisioningTemplateVersionInput{
			TemplateName: aws.String(name), VersionId: aws.Int32(id),
		})
		var nf *types.ResourceNotFoundException
		if err != nil && !errors.As(err, &nf) { // already gone counts as deleted
			return res, fmt.Errorf("deleting version %d of template %s (deleted so far: %v): %w", id, name, res.Deleted, err)
		}
		res.Deleted = append(res.Deleted, id)
	}
	log.Info("template versions pruned", "versions", len(versions), "kept", res.Kept, "deleted", res.Deleted)
	return res, nil
}
