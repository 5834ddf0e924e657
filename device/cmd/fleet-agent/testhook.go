//go:build !fleetagent_testhooks

package main

// testHook is nil in the release binary: no fault can be injected.
func testHook() func(loop string) { return nil }
