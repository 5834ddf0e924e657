// Package fleetctl is the operator's tool for an iot-fleet stack, as a
// library: the cobra commands of cmd/fleetctl (Run) and the operations they
// perform (Fleet), which cmd/fleet-demo calls in-process. It reads what it
// needs from the stack itself (its Pulumi configuration and outputs) and
// talks to AWS with aws-sdk-go-v2, so the same code path works against a
// deployed stack and against the local IoT Core (fleet-sim serve), which
// answers the same APIs on one endpoint (--local DIR, or AWS_ENDPOINT_URL).
//
// Exit codes, for scripts: 0 done; 1 failed (an AWS call, a file, a device
// that failed); 2 usage (unknown command or flag, missing argument); 3 the
// input is invalid (an allowlist line, a job document); 4 refused (e.g. an
// allowlist change over the revocation limit); 5 timed out waiting (the
// operation goes on without fleetctl).
package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	ExitOK       = 0
	ExitFailed   = 1
	ExitUsage    = 2
	ExitInvalid  = 3
	ExitRefused  = 4
	ExitTimedOut = 5
)

// exitError carries an exit code with its message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

// ExitCode is the exit code fleetctl gives err (ExitOK for nil).
func ExitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ee):
		return ee.code
	case isUsage(err):
		return ExitUsage
	default:
		return ExitFailed
	}
}

// Run executes one fleetctl command line and returns its exit code.
// Results go to stdout, progress and errors to stderr.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintln(stderr, "fleetctl:", err)
	return ExitCode(err)
}

// usageError marks errors of the command line itself.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func isUsage(err error) bool {
	var u usageError
	// cobra reports an unknown subcommand with this plain error.
	return errors.As(err, &u) || strings.HasPrefix(err.Error(), "unknown command ")
}

const exitCodesHelp = `Exit codes: 0 done, 1 failed (an AWS call, a file, a device that failed),
2 usage, 3 invalid input, 4 refused, 5 timed out waiting.`

// NewRootCommand returns the fleetctl command tree.
func NewRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "fleetctl",
		Short: "Operate an iot-fleet stack",
		Long: `fleetctl operates an iot-fleet stack: the device registry, the allowlist, OTA
updates and jobs, SSM sessions, certificate rotation and emergency revocation.
It reads the stack's configuration (Pulumi.<stack>.yaml) and its outputs
(pulumi stack output --json, a file, or the local IoT Core's DIR/outputs.json
with --local DIR) and talks to AWS with the AWS SDK's usual credentials and
endpoint settings (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, ...).

` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	g.register(root)
	root.AddCommand(
		newAllowlistCommand(g),
		newDevicesCommand(g),
		newOTACommand(g),
		newJobsCommand(g),
		newSSMCommand(g),
		newRotateCommand(g),
		newRevokeCommand(g),
	)
	return root
}

// cobraArgs wraps a cobra argument validator so its errors are usage errors.
func cobraArgs(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := v(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
