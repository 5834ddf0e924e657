package jobs

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
)

// CheckJobMain implements `fleet-agent check-job [--handler-dir DIR] FILE...`:
// each file is parsed with the engine's parser (and the operations in ops,
// which may be nil). For a valid document it prints the plan of the steps
// to stdout; for an invalid one it prints the file, the field and the
// problem to stderr. It returns 0 when every document is valid, 1 when at
// least one is invalid or unreadable, and 2 for a usage error.
func CheckJobMain(args []string, stdout, stderr io.Writer, ops *Registry) int {
	fs := flag.NewFlagSet("check-job", flag.ContinueOnError)
	fs.SetOutput(stderr)
	handlerDir := fs.String("handler-dir", "", "handler directory to show in the plan")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: fleet-agent check-job [--handler-dir DIR] FILE...")
		fmt.Fprintln(stderr, "Validates AWS IoT job documents offline and prints the plan of their steps.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	status := 0
	for i, name := range fs.Args() {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		data, err := os.ReadFile(name)
		if err != nil {
			fmt.Fprintf(stderr, "%s: cannot read: %v\n", name, err)
			status = 1
			continue
		}
		doc, err := jobdoc.Parse(data, jobdoc.Options{Operations: ops})
		if err != nil {
			var de *jobdoc.Error
			if errors.As(err, &de) {
				field := de.Field
				if field == "" {
					field = "(document)"
				}
				fmt.Fprintf(stderr, "%s: INVALID: field %s: %s\n", name, field, de.Problem)
			} else {
				fmt.Fprintf(stderr, "%s: INVALID: %v\n", name, err)
			}
			status = 1
			continue
		}
		fmt.Fprintf(stdout, "%s: valid\n%s", name, jobdoc.Explain(doc, *handlerDir))
	}
	return status
}
