package config

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// Setting is one effective setting, by JSON path, with its default.
type Setting struct {
	Field   string
	Value   string
	Default string
}

// Changed lists the settings of c that differ from Default(), in the
// order of the file's fields; values are written as JSON. An empty list
// equals an empty (or absent) list.
func Changed(c Config) []Setting {
	var out []Setting
	changed(reflect.ValueOf(c), reflect.ValueOf(Default()), "", &out)
	return out
}

func changed(v, d reflect.Value, path string, out *[]Setting) {
	t := v.Type()
	if t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(unmarshalerType) {
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			changed(v.Field(i), d.Field(i), join(path, name), out)
		}
		return
	}
	if t.Kind() == reflect.Slice && v.Len() == 0 && d.Len() == 0 {
		return
	}
	if reflect.DeepEqual(v.Interface(), d.Interface()) {
		return
	}
	*out = append(*out, Setting{Field: path, Value: jsonText(v), Default: jsonText(d)})
}

func jsonText(v reflect.Value) string {
	if v.Kind() == reflect.Slice && v.Len() == 0 {
		return "[]"
	}
	b, err := json.Marshal(v.Interface())
	if err != nil {
		return fmt.Sprint(v.Interface())
	}
	return string(b)
}

// WriteErrors writes err one problem a line, each prefixed with name (the
// file): `name: field "mqtt.keepAlive": invalid duration "soon"`.
func WriteErrors(w io.Writer, name string, err error) {
	var errs *Errors
	if !errors.As(err, &errs) {
		fmt.Fprintf(w, "%s: %v\n", name, err)
		return
	}
	for _, fe := range errs.List {
		fmt.Fprintf(w, "%s: %s\n", name, strings.TrimPrefix(fe.Error(), "config: "))
	}
	if errs.Omitted > 0 {
		fmt.Fprintf(w, "%s: and %d more problems not shown (at most %d are listed)\n", name, errs.Omitted, MaxErrors)
	}
}

// CheckMain is `fleet-agent check-config FILE...`: each file is read and
// validated exactly as the agent does at start (LoadValid, without flag
// overrides). A valid file prints "FILE: valid" and the settings that
// differ from the defaults on stdout; an invalid one prints every problem
// with its JSON path on stderr. Exit status: 0 all valid, 1 a file is
// invalid or unreadable, 2 usage.
func CheckMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: fleet-agent check-config FILE...")
		fmt.Fprintln(stderr, "Validates agent configuration files as the agent does at start: prints every problem with its JSON path,")
		fmt.Fprintln(stderr, "or \"FILE: valid\" and the settings that differ from the defaults. Exit 0 valid, 1 invalid, 2 usage.")
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
	code := 0
	for _, name := range fs.Args() {
		cfg, err := LoadValid(name)
		if err != nil {
			code = 1
			n := 1
			var errs *Errors
			if errors.As(err, &errs) {
				n = errs.Len()
			}
			fmt.Fprintf(stderr, "%s: INVALID (%d %s)\n", name, n, plural(n, "problem", "problems"))
			WriteErrors(stderr, name, err)
			continue
		}
		fmt.Fprintf(stdout, "%s: valid\n", name)
		settings := Changed(cfg)
		if len(settings) == 0 {
			fmt.Fprintln(stdout, "  every setting is the default")
			continue
		}
		fmt.Fprintln(stdout, "  settings that differ from the defaults:")
		for _, s := range settings {
			fmt.Fprintf(stdout, "  %s = %s (default %s)\n", s.Field, s.Value, s.Default)
		}
	}
	return code
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
