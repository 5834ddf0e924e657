package awsiot

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// MaxTemplateVersions is how many versions AWS IoT keeps of a
// provisioning template: creating one more fails with
// VersionsLimitExceededException.
const MaxTemplateVersions = 5

// TemplateVersions serves the provisioning-template version calls of the
// aws-sdk-go-v2 *iot.Client with AWS's observable behaviour: a new template
// has version 1 (its default); version ids grow and are never reused; at
// most MaxTemplateVersions versions exist; the default version cannot be
// deleted (DeleteConflictException); an unknown template or version is a
// ResourceNotFoundException; listing is paginated. It is in memory and safe
// for concurrent use.
type TemplateVersions struct {
	// PageSize is the listing's page size when the caller gives no
	// MaxResults (0: 25). Tests set it small to exercise pagination.
	PageSize int

	now func() time.Time

	mu        sync.Mutex
	templates map[string]*template
}

type template struct {
	versions []templateVersion // ascending VersionId
	nextID   int32
	def      int32
}

type templateVersion struct {
	id      int32
	body    string
	created time.Time
}

// NewTemplateVersions returns an empty TemplateVersions; now stamps
// creation dates (time.Now when nil).
func NewTemplateVersions(now func() time.Time) *TemplateVersions {
	if now == nil {
		now = time.Now
	}
	return &TemplateVersions{now: now, templates: map[string]*template{}}
}

// lookup returns template name, or op's ResourceNotFoundException;
// the caller holds t.mu.
func (t *TemplateVersions) lookup(op, name string) (*template, error) {
	tpl, ok := t.templates[name]
	if !ok {
		return nil, notFound(op, "template %s does not exist", name)
	}
	return tpl, nil
}

func notFound(op, format string, args ...any) error {
	return fmt.Errorf("%s: %w", op, &types.ResourceNotFoundException{Message: aws.String(fmt.Sprintf(format, args...))})
}

// CreateProvisioningTemplate creates a template with its body as version 1.
func (t *TemplateVersions) CreateProvisioningTemplate(ctx context.Context, in *iot.CreateProvisioningTemplateInput, _ ...func(*iot.Options)) (*iot.CreateProvisioningTemplateOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	name := aws.ToString(in.TemplateName)
	if name == "" || aws.ToString(in.TemplateBody) == "" {
		return nil, fmt.Errorf("CreateProvisioningTemplate: %w", &types.InvalidRequestException{Message: aws.String("templateName and templateBody are required")})
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.templates[name]; ok {
		return nil, fmt.Errorf("CreateProvisioningTemplate: %w", &types.ResourceAlreadyExistsException{Message: aws.String("template " + name + " already exists")})
	}
	t.templates[name] = &template{versions: []templateVersion{{id: 1, body: aws.ToString(in.TemplateBody), created: t.now()}}, nextID: 2, def: 1}
	return &iot.CreateProvisioningTemplateOutput{TemplateName: aws.String(name), DefaultVersionId: aws.Int32(1)}, nil
}

// CreateProvisioningTemplateVersion adds a version, the default one when
// SetAsDefault, unless the template already has MaxTemplateVersions.
func (t *TemplateVersions) CreateProvisioningTemplateVersion(ctx context.Context, in *iot.CreateProvisioningTemplateVersionInput, _ ...func(*iot.Options)) (*iot.CreateProvisioningTemplateVersionOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	name := aws.ToString(in.TemplateName)
	t.mu.Lock()
	defer t.mu.Unlock()
	tpl, err := t.lookup("CreateProvisioningTemplateVersion", name)
	if err != nil {
		return nil, err
	}
	if len(tpl.versions) >= MaxTemplateVersions {
		return nil, fmt.Errorf("CreateProvisioningTemplateVersion: %w", &types.VersionsLimitExceededException{
			Message: aws.String(fmt.Sprintf("template %s already has %d versions", name, len(tpl.versions))),
		})
	}
	v := templateVersion{id: tpl.nextID, body: aws.ToString(in.TemplateBody), created: t.now()}
	tpl.nextID++
	tpl.versions = append(tpl.versions, v)
	if in.SetAsDefault {
		tpl.def = v.id
	}
	return &iot.CreateProvisioningTemplateVersionOutput{
		TemplateName: aws.String(name), VersionId: aws.Int32(v.id), IsDefaultVersion: v.id == tpl.def,
	}, nil
}

// ListProvisioningTemplateVersions lists a template's versions in
// ascending id order, MaxResults (default 25) at a time.
func (t *TemplateVersions) ListProvisioningTemplateVersions(ctx context.Context, in *iot.ListProvisioningTemplateVersionsInput, _ ...func(*iot.Options)) (*iot.ListProvisioningTemplateVersionsOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	name := aws.ToString(in.TemplateName)
	t.mu.Lock()
	defer t.mu.Unlock()
	tpl, err := t.lookup("ListProvisioningTemplateVersions", name)
	if err != nil {
		return nil, err
	}
	start := 0
	if tok := aws.ToString(in.NextToken); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 || n > len(tpl.versions) {
			return nil, fmt.Errorf("ListProvisioningTemplateVersions: %w", &types.InvalidRequestException{Message: aws.String("bad nextToken " + tok)})
		}
		start = n
	}
	size := int(aws.ToInt32(in.MaxResults))
	if size <= 0 {
		size = t.PageSize
	}
	if size <= 0 {
		size = 25
	}
	end := min(start+size, len(tpl.versions))
	out := &iot.ListProvisioningTemplateVersionsOutput{}
	for _, v := range tpl.versions[start:end] {
		out.Versions = append(out.Versions, types.ProvisioningTemplateVersionSummary{
			VersionId: aws.Int32(v.id), IsDefaultVersion: v.id == tpl.def, CreationDate: aws.Time(v.created),
		})
	}
	if end < len(tpl.versions) {
		out.NextToken = aws.String(strconv.Itoa(end))
	}
	return out, nil
}

// DeleteProvisioningTemplateVersion deletes a version that is not the
// template's default.
func (t *TemplateVersions) DeleteProvisioningTemplateVersion(ctx context.Context, in *iot.DeleteProvisioningTemplateVersionInput, _ ...func(*iot.Options)) (*iot.DeleteProvisioningTemplateVersionOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	name, id := aws.ToString(in.TemplateName), aws.ToInt32(in.VersionId)
	t.mu.Lock()
	defer t.mu.Unlock()
	tpl, err := t.lookup("DeleteProvisioningTemplateVersion", name)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(tpl.versions, func(v templateVersion) bool { return v.id == id })
	if i < 0 {
		return nil, notFound("DeleteProvisioningTemplateVersion", "template %s has no version %d", name, id)
	}
	if id == tpl.def {
		return nil, fmt.Errorf("DeleteProvisioningTemplateVersion: %w", &types.DeleteConflictException{
			Message: aws.String(fmt.Sprintf("version %d is the default version of template %s", id, name)),
		})
	}
	tpl.versions = slices.Delete(tpl.versions, i, i+1)
	return &iot.DeleteProvisioningTemplateVersionOutput{}, nil
}

// UpdateProvisioningTemplate serves the one field of the call that
// concerns versions: DefaultVersionId makes an existing version the
// default (an operator's rollback). Other fields are ignored.
func (t *TemplateVersions) UpdateProvisioningTemplate(ctx context.Context, in *iot.UpdateProvisioningTemplateInput, _ ...func(*iot.Options)) (*iot.UpdateProvisioningTemplateOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if in.DefaultVersionId == nil {
		return &iot.UpdateProvisioningTemplateOutput{}, nil
	}
	name, id := aws.ToString(in.TemplateName), aws.ToInt32(in.DefaultVersionId)
	t.mu.Lock()
	defer t.mu.Unlock()
	tpl, err := t.lookup("UpdateProvisioningTemplate", name)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(tpl.versions, func(v templateVersion) bool { return v.id == id }) {
		return nil, notFound("UpdateProvisioningTemplate", "template %s has no version %d", name, id)
	}
	tpl.def = id
	return &iot.UpdateProvisioningTemplateOutput{}, nil
}

// DefaultBody is the body of a template's default version (what devices
// provisioning now get).
func (t *TemplateVersions) DefaultBody(name string) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tpl, err := t.lookup("DefaultBody", name)
	if err != nil {
		return "", err
	}
	for _, v := range tpl.versions {
		if v.id == tpl.def {
			return v.body, nil
		}
	}
	return "", fmt.Errorf("template %s: default version %d missing", name, tpl.def)
}
