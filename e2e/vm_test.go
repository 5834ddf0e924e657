package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/iot-fleet/iot-fleet/e2e/harness"
	"github.com/iot-fleet/iot-fleet/e2e/vm"
)

// TestVirtualPi runs the virtual Raspberry Pi scenarios (e2e/vm,
// docs/virtual-pi.md): the project's VM image, with the agent injected by
// the project's own image step, boots under QEMU (software emulation)
// against the local IoT Core and goes through first boot, jobs, a power
// cut during an OTA install, the real mender's A/B update, a reboot job,
// a rollback, certificate rotation, a killed agent and the systemd
// watchdog. It takes a quarter of an hour and needs the image (make
// vm-image), so it runs only with IOT_FLEET_VM=1 (make vm-test). The
// scenarios share one machine: the first failure ends the run.
func TestVirtualPi(t *testing.T) {
	if os.Getenv("IOT_FLEET_VM") != "1" {
		t.Skip("the virtual Raspberry Pi runs with IOT_FLEET_VM=1 (make vm-test)")
	}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	imageDir := os.Getenv("VM_IMAGE_DIR")
	if imageDir == "" {
		imageDir = filepath.Join(root, "dist", "vm")
	}
	if why := vm.Missing(imageDir); why != "" {
		t.Fatal(why)
	}
	dir := os.Getenv("VM_TEST_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Minute)
	defer cancel()
	e, err := vm.Setup(ctx, vm.Options{ImageDir: imageDir, Dir: dir, Observer: func(ev vm.Event) { t.Log(vm.Format(ev)) }})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		b, _ := json.MarshalIndent(e.Figures, "", "  ")
		t.Logf("figures (software emulation, %s):\n%s", dir, b)
		if t.Failed() {
			t.Logf("console (last lines; whole log in %s):\n%s", e.ConsoleLog(), e.VM.Console.Tail(80))
		}
	}()
	for _, s := range vm.Scenarios() {
		if !t.Run(s.Name, func(t *testing.T) {
			if err := e.RunScenario(ctx, s); err != nil {
				t.Fatal(err)
			}
		}) {
			break
		}
	}
}
