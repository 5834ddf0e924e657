// Command fleetctl is the operator's tool for an iot-fleet stack: devices,
// the allowlist, OTA updates and jobs, SSM sessions, certificate rotation
// and emergency revocation, against a deployed stack or the local IoT Core
// with the same code path. The commands live in package internal/fleetctl
// (docs/fleetctl.md).
//
// Exit codes, for scripts: 0 done; 1 failed; 2 usage; 3 invalid input;
// 4 refused; 5 timed out waiting.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/iot-fleet/iot-fleet/internal/fleetctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := fleetctl.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
