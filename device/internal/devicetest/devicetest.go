// Package devicetest holds small helpers the device packages' tests share:
// a recorder of what a loop reports to its supervisor, a real systemd
// notify socket, and the claim files and provisioning denials of a device
// against the local IoT Core (sim/core). The log buffer is
// internal/testenv's.
package devicetest
