// Command vm-demo runs the virtual Raspberry Pi (docs/virtual-pi.md) for
// people: the project's VM image (make vm-image) with the agent injected
// by the project's image step boots under QEMU against the local IoT Core,
// and the same scenarios as make vm-test run — first boot, a job, a power
// cut during an OTA install, the real mender's A/B update and reboot, a
// reboot job, a rollback, certificate rotation, a killed and a hung agent —
// while a timeline with times is printed. It exits 0 only if every
// scenario passed.
//
//	go run ./cmd/vm-demo [--image-dir dist/vm] [--keep] [--until job] [--timeout 90m]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/iot-fleet/iot-fleet/e2e/vm"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vm-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	imageDir := fs.String("image-dir", "", "directory holding base.img and base.json (default dist/vm of the repository)")
	keep := fs.Bool("keep", false, "keep the working directory (disk, console log, timeline, figures)")
	until := fs.String("until", "", "stop after this scenario (each scenario starts from the state the previous ones left; default: run all)")
	timeout := fs.Duration("timeout", 90*time.Minute, "give up after this long")
	hold := fs.Bool("hold", false, "after the scenarios (or a failure), keep the virtual Pi and the local IoT Core running until interrupted (Ctrl-C), to talk to the device through the operator API")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: vm-demo [flags]\n\nScenarios, in order:\n")
		for _, s := range vm.Scenarios() {
			fmt.Fprintf(fs.Output(), "  %s\n", s.Name)
		}
		fmt.Fprintf(fs.Output(), "\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	scenarios, err := selectScenarios(*until)
	if err != nil {
		fmt.Fprintf(stderr, "vm-demo: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	dir, err := os.MkdirTemp("", "vm-demo-*")
	if err != nil {
		fmt.Fprintf(stderr, "vm-demo: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "virtual Raspberry Pi under QEMU (software emulation): %d scenario(s); working directory %s\n\n", len(scenarios), dir)
	e, err := vm.Setup(ctx, vm.Options{ImageDir: *imageDir, Dir: dir, Observer: func(ev vm.Event) { fmt.Fprintln(stdout, vm.Format(ev)) }})
	if err == nil {
		for _, s := range scenarios {
			if err = e.RunScenario(ctx, s); err != nil {
				break
			}
		}
		if *hold {
			fmt.Fprintf(stdout, "\nholding: the virtual Pi (%s) runs; operator API %s (e.g. curl %s/jobs); console %s; Ctrl-C ends\n",
				e.Thing, e.OperatorURL, e.OperatorURL, e.ConsoleLog())
			<-ctx.Done()
		}
		if cerr := e.Close(); cerr != nil && err == nil {
			err = cerr
		}
		b, _ := json.MarshalIndent(e.Figures, "", "  ")
		fmt.Fprintf(stdout, "\nfigures (software emulation):\n%s\n", b)
	}
	if *keep || err != nil {
		fmt.Fprintf(stdout, "\nworking directory (console log, timeline.json, figures.json): %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	if err != nil {
		fmt.Fprintf(stdout, "\nDEMO FAILED: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "\nDEMO PASSED: every scenario above happened\n")
	return 0
}

// selectScenarios returns the scenarios up to and including until (all
// of them when until is empty).
func selectScenarios(until string) ([]vm.Scenario, error) {
	all := vm.Scenarios()
	if until == "" {
		return all, nil
	}
	i := slices.IndexFunc(all, func(s vm.Scenario) bool { return s.Name == until })
	if i < 0 {
		names := make([]string, len(all))
		for j, s := range all {
			names[j] = s.Name
		}
		return nil, fmt.Errorf("--until: unknown scenario %q (scenarios: %s)", until, strings.Join(names, ", "))
	}
	return all[:i+1], nil
}
