// Package testenv holds what the tests of every side (device, lambdas,
// sim, e2e, internal) share: a real dynalite (local DynamoDB API) and a
// real Debian mosquitto over mutual TLS, started on free 127.0.0.1 ports
// and stopped when the test ends, LogBuffer, the one goroutine-safe
// buffer for logs and a child process's output, and RequireAPIError, the
// check of an AWS error as an SDK client surfaces it. Only tests and test
// helper packages import it.
package testenv
