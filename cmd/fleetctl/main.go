// Command fleetctl is the operator's tool for an iot-fleet stack. It reads
// what it needs from the stack itself (its Pulumi configuration and
// outputs) and talks to AWS with aws-sdk-go-v2, so the same commands work
// against a deployed stack and against local stand-ins reached through the
// SDK's endpoint settings (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_DYNAMODB, …).
//
// Exit codes, for scripts: 0 done; 1 failed (an AWS call, a file); 2 usage
// (unknown command or flag); 3 the input is invalid (e.g. an allowlist line);
// 4 refused (e.g. an allowlist change over the revocation limit).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1
	exitUsage   = 2
	exitInvalid = 3
	exitRefused = 4
)

// exitError carries an exit code with its message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns its exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "fleetctl:", err)
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case isUsage(err):
		return exitUsage
	default:
		return exitFailed
	}
}

// usageError marks errors of the command line itself.
type usageError struct{ error }

func isUsage(err error) bool {
	var u usageError
	// cobra reports an unknown subcommand with this plain error.
	return errors.As(err, &u) || strings.HasPrefix(err.Error(), "unknown command ")
}

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "fleetctl",
		Short: "Operate an iot-fleet stack",
		Long: `fleetctl operates an iot-fleet stack: the device registry, the allowlist and
the devices. It reads the stack's configuration (Pulumi.<stack>.yaml) and its
outputs (pulumi stack output --json, or a file) and talks to AWS with the AWS
SDK's usual credentials and endpoint settings.

Exit codes: 0 done, 1 failed, 2 usage, 3 invalid input, 4 refused.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	g.register(root)
	root.AddCommand(newAllowlistCommand(g))
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
