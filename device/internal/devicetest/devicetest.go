// Package devicetest holds small helpers the device packages' tests share:
// a recorder of what a loop reports to its supervisor, and a real systemd
// notify socket. The log buffer is internal/testenv's.
package devicetest

import (
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// LogBuffer is testenv.LogBuffer (the same type), for the device tests
// that name it here.
type LogBuffer = testenv.LogBuffer
