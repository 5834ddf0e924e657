package awsiot_test

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every call on a template that does not exist is AWS's
// ResourceNotFoundException, naming the call and the template.
func TestTemplateVersionsUnknownTemplateIsNotFound(t *testing.T) {
	ctx := context.Background()
	tv := awsiot.NewTemplateVersions(nil)
	_, err := tv.CreateProvisioningTemplate(ctx, &iot.CreateProvisioningTemplateInput{TemplateName: aws.String("known"), TemplateBody: aws.String("v1")})
	require.NoError(t, err)
	name := aws.String("missing")
	for op, call := range map[string]func() error{
		"CreateProvisioningTemplateVersion": func() error {
			_, err := tv.CreateProvisioningTemplateVersion(ctx, &iot.CreateProvisioningTemplateVersionInput{TemplateName: name, TemplateBody: aws.String("v2")})
			return err
		},
		"ListProvisioningTemplateVersions": func() error {
			_, err := tv.ListProvisioningTemplateVersions(ctx, &iot.ListProvisioningTemplateVersionsInput{TemplateName: name})
			return err
		},
		"DeleteProvisioningTemplateVersion": func() error {
			_, err := tv.DeleteProvisioningTemplateVersion(ctx, &iot.DeleteProvisioningTemplateVersionInput{TemplateName: name, VersionId: aws.Int32(1)})
			return err
		},
		"UpdateProvisioningTemplate": func() error {
			_, err := tv.UpdateProvisioningTemplate(ctx, &iot.UpdateProvisioningTemplateInput{TemplateName: name, DefaultVersionId: aws.Int32(1)})
			return err
		},
		"DefaultBody": func() error {
			_, err := tv.DefaultBody("missing")
			return err
		},
	} {
		err := call()
		var nf *types.ResourceNotFoundException
		require.ErrorAs(t, err, &nf, op)
		assert.ErrorContains(t, err, op+": ", op)
		assert.ErrorContains(t, err, "template missing does not exist", op)
	}
	body, err := tv.DefaultBody("known")
	require.NoError(t, err)
	assert.Equal(t, "v1", body)
}
