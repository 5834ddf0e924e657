package jobdoc

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	seeds := []string{
		`{"version":"1.0","steps":[{"action":{"name":"a","type":"runHandler","input":{"handler":"a.sh","args":["x"],"path":"default"}}}]}`,
		`{"version":"1.0","includeStdOut":true,"steps":[{"action":{"name":"c","type":"runCommand","runAsUser":"root","ignoreStepFailure":"true","input":{"command":"echo,Hello\\, World"}}}],"finalStep":{"action":{"name":"f","type":"runHandler","input":{"handler":"f.sh"}}}}`,
		`{"version":"1.0","steps":[{"action":{"name":"u","type":"mender_install","input":{"url":"https://x"}}}]}`,
		`{"operation":"install-packages.sh","args":["lftp","dos2unix"],"path":"default","allowStdErr":2}`,
		`{"operation":"mender_install","url":"https://x"}`,
		`{"version":"1.0","version":"1.0"}`,
		`{"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":",\\,,"}}}]}`,
		`[]`, `null`, `"x"`, `{`,
		// Duplicate keys at any depth, undecodable numbers, invalid
		// UTF-8, padding beyond the size limit.
		`{"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"true","command":"rm,-rf,/"}}}]}`,
		`{"version":"1.0","_c":[{"k":1,"k":2}],"steps":[]}`,
		`{"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"true"}}}],"x":1e999}`,
		`{"_comment":-1e400,"operation":"a.sh"}`,
		`{"operation":"a.sh","allowStdErr":1e-999}`,
		"{\"operation\":\"a\xff.sh\"}",
		`{"version":"1.0",` + strings.Repeat(" ", MaxDocumentBytes) + `"steps":[]}`,
		`{"version":"1.0","steps":[{"action":{"name":"a","type":"runCommand","input":{"command":"/bin/echo,x"}}}]}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	// The check-job example documents are seeds as well.
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, opts := range []Options{
			{}, {Operations: testOps{}},
			{RunCommand: RunCommandPolicy{Disabled: true}},
			{RunCommand: RunCommandPolicy{AllowedExecutables: []string{"/bin/echo", "true"}}},
		} {
			doc, err := Parse(data, opts)
			if err != nil {
				var de *Error
				if !errors.As(err, &de) {
					t.Fatalf("rejection is not a *jobdoc.Error: %v", err)
				}
				if de.Problem == "" {
					t.Fatalf("rejection without a reason (field %q)", de.Field)
				}
				if doc != nil {
					t.Fatalf("document returned with an error")
				}
				continue
			}
			if doc.StepCount() == 0 {
				t.Fatalf("valid document without steps")
			}
			for i := 0; i < doc.StepCount(); i++ {
				a, _ := doc.Step(i)
				if a.Name == "" {
					t.Fatalf("step %d without a name", i)
				}
				switch a.Type {
				case TypeRunCommand:
					if len(a.Argv) == 0 || a.Argv[0] == "" {
						t.Fatalf("runCommand step %d without a program", i)
					}
					if err := opts.RunCommand.Check(a.Argv[0]); err != nil {
						t.Fatalf("runCommand step %d accepted against the policy: %v", i, err)
					}
				case TypeRunHandler:
					if err := checkHandlerName(a.Handler, "h"); err != nil {
						t.Fatalf("accepted bad handler name %q", a.Handler)
					}
				case TypeOperation:
				default:
					t.Fatalf("step %d has type %q", i, a.Type)
				}
			}
			_ = Explain(doc, "")
		}
	})
}
