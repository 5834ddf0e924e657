package awsiot_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

func TestCallsFaultsAndPaging(t *testing.T) {
	reg := registry.New(nil)
	c := awsiot.New(reg, "aws", "local-1", "000000000000")
	ctx := context.Background()
	_, err := reg.CreateThing("t1", nil)
	require.NoError(t, err)
	var ids []string
	for i := range 3 {
		id := fmt.Sprintf("%064x", i+1)
		require.NoError(t, reg.RegisterCertificate(id, "", registry.CertActive, time.Now().Add(time.Hour)))
		require.NoError(t, reg.AttachThingPrincipal("t1", id))
		ids = append(ids, c.CertificateARN(id))
	}

	// Paging.
	c.SetPageSize(2)
	out, err := c.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String("t1")})
	require.NoError(t, err)
	assert.Equal(t, ids[:2], out.Principals)
	require.NotNil(t, out.NextToken)
	out, err = c.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String("t1"), NextToken: out.NextToken})
	require.NoError(t, err)
	assert.Equal(t, ids[2:], out.Principals)
	assert.Nil(t, out.NextToken)
	_, err = c.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String("t1"), NextToken: aws.String("x")})
	var invalid *types.InvalidRequestException
	require.ErrorAs(t, err, &invalid)

	// An injected failure comes once, before the registry changes.
	throttled := &types.ThrottlingException{Message: aws.String("Rate exceeded")}
	id := fmt.Sprintf("%064x", 1)
	c.FailNext("UpdateCertificate", id, throttled)
	_, err = c.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: types.CertificateStatusRevoked})
	require.True(t, errors.Is(err, throttled))
	cert, err := reg.Certificate(id)
	require.NoError(t, err)
	assert.Equal(t, registry.CertActive, cert.Status)
	var after []string
	c.AfterEach(func(op, key string) { after = append(after, op+" "+key) })
	_, err = c.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: types.CertificateStatusRevoked})
	require.NoError(t, err)
	assert.Equal(t, []string{"UpdateCertificate " + id}, after, "after runs for successful calls only")
	assert.Equal(t, []string{id, id}, c.CallsOf("UpdateCertificate"))
	assert.Len(t, c.Calls(), 5)

	// A canceled context fails the call, which is still recorded.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = c.DeleteThing(cctx, &iot.DeleteThingInput{ThingName: aws.String("t1")})
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, []string{"t1"}, c.CallsOf("DeleteThing"))
}
