package jobdoc

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Explain returns a human-readable plan of what the agent will do with doc,
// one block per step. handlerDir is shown for handlers that run from the
// handler directory ("" shows "<handler-dir>").
func Explain(doc *Document, handlerDir string) string {
	return ExplainWith(doc, ExplainOptions{HandlerDir: handlerDir})
}

// ExplainOptions configure ExplainWith.
type ExplainOptions struct {
	// HandlerDir is shown for handlers that run from the handler
	// directory ("" shows "<handler-dir>").
	HandlerDir string
	// Resolve, if set, says where a runHandler step's program is found
	// and by which rule (handler directory, allowed path, PATH), or why
	// it is not; it is printed under the step.
	Resolve func(Action) (Resolved, error)
}

// Resolved is where a runHandler step's program was found (Path) and by
// which rule.
type Resolved struct {
	Rule string
	Path string
	// Note is shown after the path (e.g. whose PATH was searched).
	Note string
}

// ExplainWith is Explain with options.
func ExplainWith(doc *Document, opts ExplainOptions) string {
	handlerDir := opts.HandlerDir
	if handlerDir == "" {
		handlerDir = "<handler-dir>"
	}
	var b strings.Builder
	schema := "schema 1.0 (standard job document)"
	if doc.Schema == SchemaOld {
		schema = "old schema (single operation)"
	}
	fmt.Fprintf(&b, "%s: %d step(s)", schema, len(doc.Steps))
	if doc.FinalStep != nil {
		b.WriteString(" and a final step")
	}
	b.WriteString("\n")
	if doc.IncludeStdOut {
		b.WriteString("statusDetails: last 1024 characters of stderr and stdout of each step\n")
	} else {
		b.WriteString("statusDetails: last 1024 characters of stderr of each step (includeStdOut is off)\n")
	}
	for i, a := range doc.Steps {
		fmt.Fprintf(&b, "step %d/%d %s\n", i+1, len(doc.Steps), strconv.Quote(a.Name))
		explainAction(&b, a, handlerDir, opts.Resolve)
		if a.IgnoreStepFailure {
			b.WriteString("    on failure: ignored (ignoreStepFailure \"true\"); the job continues\n")
		} else {
			b.WriteString("    on failure: the job FAILS; later steps and the final step do not run\n")
		}
	}
	if doc.FinalStep != nil {
		a := *doc.FinalStep
		fmt.Fprintf(&b, "final step %s (runs only if every step succeeded; ignored failures count as success)\n", strconv.Quote(a.Name))
		explainAction(&b, a, handlerDir, opts.Resolve)
		if a.IgnoreStepFailure {
			b.WriteString("    on failure: ignored (ignoreStepFailure \"true\"); the job SUCCEEDS\n")
		} else {
			b.WriteString("    on failure: the job FAILS\n")
		}
	}
	b.WriteString("result: SUCCEEDED when every step succeeds or its failure is ignored, else FAILED with the reason\n")
	return b.String()
}

func explainAction(b *strings.Builder, a Action, handlerDir string, resolve func(Action) (Resolved, error)) {
	user := "the agent's user"
	if a.RunAsUser != "" {
		user = "user " + strconv.Quote(a.RunAsUser)
	}
	switch a.Type {
	case TypeRunHandler:
		dir := handlerDir + " (the handler directory)"
		switch {
		case a.Path == "":
			dir += " if it is there, else the executable " + strconv.Quote(a.Handler) + " from the agent's PATH (" + ConfigPathExecutables + ", subject to the runCommand rule)"
		case a.Path != DefaultPath:
			dir = a.Path + " (must be an allowed handler path in the agent's configuration)"
		}
		fmt.Fprintf(b, "    runHandler %s from %s\n", strconv.Quote(a.Handler), dir)
		program := strings.TrimSuffix(dirOnly(a, handlerDir), "/") + "/" + a.Handler
		fromPATH := false
		if resolve != nil {
			res, err := resolve(a)
			if err != nil {
				fmt.Fprintf(b, "    NOT RESOLVED here: %v\n", err)
			} else {
				fmt.Fprintf(b, "    resolved by rule: %s -> %s%s\n", res.Rule, res.Path, res.Note)
				program, fromPATH = res.Path, res.Rule == RulePATH
			}
		}
		argv := append([]string{strconv.Quote(a.RunAsUser)}, quoteAll(a.Args)...)
		fmt.Fprintf(b, "    runs as the agent's user: %s %s   (first argument: runAsUser)\n", program, strings.Join(argv, " "))
		if !fromPATH {
			b.WriteString("    requires: directory and handler mode 0700, owned by the agent's user, handler a regular file\n")
		}
	case TypeRunCommand:
		prefix := ""
		if a.RunAsUser != "" {
			prefix = "sudo -n -u " + a.RunAsUser + " -- "
			user += " (through sudo unless it is the agent's user; refused if sudo or the user is missing)"
		}
		fmt.Fprintf(b, "    runCommand as %s, no shell: %s%s\n", user, prefix, strings.Join(quoteAll(a.Argv), " "))
	case TypeOperation:
		keys := make([]string, 0, len(a.Input))
		for k := range a.Input {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(b, "    operation %s (built into the agent), input fields: %s\n", strconv.Quote(a.Operation), strings.Join(keys, ", "))
	}
	if a.AllowStdErr != nil {
		fmt.Fprintf(b, "    stderr: fails the step if it writes more than %d line(s) to stderr, even with exit status 0\n", *a.AllowStdErr)
	}
}

// RulePATH is the Resolved.Rule of a handler run from the agent's PATH.
const RulePATH = "PATH"

func dirOnly(a Action, handlerDir string) string {
	if a.Path != "" && a.Path != DefaultPath {
		return a.Path
	}
	return handlerDir
}

func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, s := range args {
		if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
			return r <= ' ' || r == '"' || r == '\'' || r == '\\' || r == 0x7f || r > 0x7e
		}) {
			out[i] = s
		} else {
			out[i] = strconv.Quote(s)
		}
	}
	return out
}
