// Package devicetest holds small helpers the device packages' tests share:
// a recorder of what a loop reports to its supervisor, and a real systemd
// notify socket. The log buffer is internal/testenv's.
package devicetest
