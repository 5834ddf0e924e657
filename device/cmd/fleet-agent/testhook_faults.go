//go:build fleetagent_testhooks

package main

import (
	"os"
	"path/filepath"
	"runtime"
)

// testHook, in a binary built with -tags fleetagent_testhooks (tests
// only), injects faults into the agent's supervised loops: when the file
// $FLEET_AGENT_TEST_FAULT_DIR/<loop>.exit exists, the loop's goroutine
// exits at its next beat (runtime.Goexit); <loop>.hang makes it block
// forever there, so it stops beating.
func testHook() func(loop string) {
	dir := os.Getenv("FLEET_AGENT_TEST_FAULT_DIR")
	if dir == "" {
		return nil
	}
	return func(loop string) {
		if _, err := os.Stat(filepath.Join(dir, loop+".exit")); err == nil {
			runtime.Goexit()
		}
		if _, err := os.Stat(filepath.Join(dir, loop+".hang")); err == nil {
			select {}
		}
	}
}
