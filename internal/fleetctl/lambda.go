package fleetctl

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	ltypes "github.com/aws/aws-sdk-go-v2/service/lambda/types"
)

// FunctionError is a Lambda handler's error (the invocation succeeded;
// the function returned an error).
type FunctionError struct {
	Function string
	Type     string `json:"errorType"`
	Message  string `json:"errorMessage"`
}

func (e *FunctionError) Error() string {
	if e.Type != "" {
		return fmt.Sprintf("%s: %s (%s)", e.Function, e.Message, e.Type)
	}
	return e.Function + ": " + e.Message
}

// invoke calls the Lambda named by the stack output output with req
// (RequestResponse) and decodes its answer into resp. A handler error is
// a *FunctionError; its payload, if it is also a response, is decoded
// into resp too (resp may be nil).
func (f *Fleet) invoke(ctx context.Context, output string, req, resp any) error {
	name, err := f.Outputs.String(output)
	if err != nil {
		return err
	}
	payload, err := json.Marshal(req)
	if err != nil {
		return err
	}
	out, err := f.Lambda.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String(name), Payload: payload, InvocationType: ltypes.InvocationTypeRequestResponse})
	if err != nil {
		return fmt.Errorf("invoke %s: %w", name, err)
	}
	if out.FunctionError != nil {
		fe := &FunctionError{Function: name}
		if json.Unmarshal(out.Payload, fe) != nil || fe.Message == "" {
			fe.Message = string(out.Payload)
		}
		return fe
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(out.Payload, resp); err != nil {
		return fmt.Errorf("%s answered %q: %w", name, out.Payload, err)
	}
	return nil
}
