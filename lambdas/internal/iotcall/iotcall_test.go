package iotcall

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestIsNotFound(t *testing.T) {
	nf := &iottypes.ResourceNotFoundException{Message: aws.String("gone")}
	assert.True(t, IsNotFound(nf))
	assert.True(t, IsNotFound(fmt.Errorf("DescribeCertificate: %w", nf)))
	assert.False(t, IsNotFound(&iottypes.ThrottlingException{Message: aws.String("Rate exceeded")}))
	assert.False(t, IsNotFound(nil))
	// An operation whose model lacks the error: the SDK's generic error.
	assert.True(t, IsNotFound(fmt.Errorf("DetachPolicy: %w", &smithy.GenericAPIError{Code: "ResourceNotFoundException", Message: "gone"})))
	assert.False(t, IsNotFound(&smithy.GenericAPIError{Code: "InvalidRequestException"}))
}

func TestDo(t *testing.T) {
	nf := &iottypes.ResourceNotFoundException{Message: aws.String("gone")}
	ret := func(err error) func(context.Context) error { return func(context.Context) error { return err } }

	require.NoError(t, Do(context.Background(), time.Second, "Op", false, ret(nil)))
	require.NoError(t, Do(context.Background(), time.Second, "DetachPolicy", true, ret(nf)), "gone is done")

	err := Do(context.Background(), time.Second, "DescribeCertificate", false, ret(nf))
	require.EqualError(t, err, "DescribeCertificate: "+nf.Error())
	assert.True(t, IsNotFound(err))

	other := errors.New("boom")
	err = Do(context.Background(), time.Second, "DeleteThing", true, ret(other))
	require.EqualError(t, err, "DeleteThing: boom")
	assert.ErrorIs(t, err, other)

	var deadline time.Time
	var hasDeadline bool
	require.NoError(t, Do(context.Background(), time.Minute, "Op", false, func(ctx context.Context) error {
		deadline, hasDeadline = ctx.Deadline()
		return nil
	}))
	require.True(t, hasDeadline, "fn runs under the timeout")
	assert.WithinDuration(t, time.Now().Add(time.Minute), deadline, 10*time.Second)
}
