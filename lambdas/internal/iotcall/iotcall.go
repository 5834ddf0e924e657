// Package iotcall runs one AWS IoT control-plane call the way the Lambdas
// do: bounded by a timeout, wrapped with the operation's name, and with
// AWS IoT's "resource not found" recognised.
package iotcall

import (
	"context"
	"errors"
	"fmt"
	"time"

	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/smithy-go"
)

// IsNotFound reports whether err is AWS IoT's answer for a resource that
// does not exist, wrapped or not: *types.ResourceNotFoundException, or the
// same error code where the SDK does not model it for the operation (e.g.
// DetachPolicy, whose not-found answer the SDK surfaces as a
// *smithy.GenericAPIError).
func IsNotFound(err error) bool {
	var nf *iottypes.ResourceNotFoundException
	if errors.As(err, &nf) {
		return true
	}
	var api smithy.APIError
	return errors.As(err, &api) && api.ErrorCode() == "ResourceNotFoundException"
}

// Do runs fn with a context bounded by timeout. It returns nil when fn
// succeeds, and also when goneIsDone and fn's error is not-found (the
// resource to remove is gone already); any other error comes back as
// "<op>: <error>", still matching errors.As.
func Do(ctx context.Context, timeout time.Duration, op string, goneIsDone bool, fn func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := fn(cctx)
	if err == nil || goneIsDone && IsNotFound(err) {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}
