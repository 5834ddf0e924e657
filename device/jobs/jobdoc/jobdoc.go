// Package jobdoc parses and validates AWS IoT job documents in the two
// schemas the AWS IoT Device Client understands: the standard job action
// document schema version "1.0" (steps, finalStep, runHandler/runCommand
// actions) and the old schema (a single operation with args). It is pure: it
// reads no files and runs nothing. The engine in device/jobs and the
// `fleet-agent check-job` command use the same parser, so an operator who
// checks a document offline sees exactly what a device will do with it.
//
// Every rejection is an *Error naming the field (as a JSON path such as
// steps[1].action.input.handler) and the problem.
package jobdoc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxDocumentBytes is the largest job document accepted; it is the AWS IoT
// Jobs limit for a job document.
const MaxDocumentBytes = 32 * 1024

// SchemaVersion1 is the only value of "version" the standard schema allows.
const SchemaVersion1 = "1.0"

// DefaultPath is the value of "path" that names the agent's handler
// directory explicitly.
const DefaultPath = "default"

// Schema identifies which job document schema a document used.
type Schema string

// Schemas.
const (
	SchemaStandard Schema = "1.0"
	SchemaOld      Schema = "old"
)

// ActionType is the type of a step.
type ActionType string

// Action types. TypeOperation is not a schema keyword: it marks a step whose
// type (schema 1.0) or operation (old schema) names an operation registered
// with the engine (for example OTA's mender_install).
const (
	TypeRunHandler ActionType = "runHandler"
	TypeRunCommand ActionType = "runCommand"
	TypeOperation  ActionType = "operation"
)

// Action is one step of a job.
type Action struct {
	// Name is the step name (the operation or handler name in the old schema).
	Name string     `json:"name"`
	Type ActionType `json:"type"`
	// RunAsUser is the local user for the step; empty means the agent's user.
	RunAsUser string `json:"runAsUser,omitempty"`
	// IgnoreStepFailure lets the job continue after this step fails.
	IgnoreStepFailure bool `json:"ignoreStepFailure,omitempty"`
	// AllowStdErr is the number of stderr lines tolerated before a step
	// that exited 0 counts as failed; nil means stderr is not counted.
	AllowStdErr *int `json:"allowStdErr,omitempty"`

	// runHandler input.
	Handler string   `json:"handler,omitempty"`
	Args    []string `json:"args,omitempty"`
	// Path is "" or "default" (the handler directory) or an absolute
	// directory that the agent's configuration must allow.
	Path string `json:"path,omitempty"`

	// runCommand input: Command is the raw comma-separated string and
	// Argv the tokens after splitting and unescaping.
	Command string   `json:"command,omitempty"`
	Argv    []string `json:"argv,omitempty"`

	// Operation input: the operation name and its input fields.
	Operation string                     `json:"operation,omitempty"`
	Input     map[string]json.RawMessage `json:"input,omitempty"`
	// Value is Input as the operation parsed and validated it (its own
	// typed value, for example OTA's ota.Document).
	Value any `json:"-"`
}

// Document is a parsed and validated job document.
type Document struct {
	Schema        Schema   `json:"schema"`
	IncludeStdOut bool     `json:"includeStdOut,omitempty"`
	Steps         []Action `json:"steps"`
	FinalStep     *Action  `json:"finalStep,omitempty"`
}

// StepCount is the number of steps including the final step.
func (d *Document) StepCount() int {
	n := len(d.Steps)
	if d.FinalStep != nil {
		n++
	}
	return n
}

// Step returns step i where the final step, if any, is index len(Steps).
func (d *Document) Step(i int) (Action, bool) {
	switch {
	case i >= 0 && i < len(d.Steps):
		return d.Steps[i], true
	case i == len(d.Steps) && d.FinalStep != nil:
		return *d.FinalStep, true
	}
	return Action{}, false
}

// IsFinal reports whether index i is the final step.
func (d *Document) IsFinal(i int) bool { return d.FinalStep != nil && i == len(d.Steps) }

// Error is a rejection of a job document: the field (a JSON path, empty for
// the document as a whole) and the problem.
type Error struct {
	Field   string
	Problem string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return "job document: " + e.Problem
	}
	return "job document: " + e.Field + ": " + e.Problem
}

// Reason is the rejection as a short sentence for statusDetails.
func (e *Error) Reason() string {
	if e.Field == "" {
		return e.Problem
	}
	return e.Field + ": " + e.Problem
}

func fieldErr(field, format string, args ...any) *Error {
	return &Error{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// Operations is the set of operations registered with the engine (OTA's
// mender_install and the like). A nil Operations knows none.
type Operations interface {
	// HasOperation reports whether name is a registered operation.
	HasOperation(name string) bool
	// ParseOperation checks the input fields of a step running
	// operation name and returns them as the operation's own typed value
	// (Action.Value): a document is validated once, when it is parsed.
	// The error's text becomes the rejection's problem.
	ParseOperation(name string, input map[string]json.RawMessage) (any, error)
}

// Options configure Parse.
type Options struct {
	// Operations resolves operation names. Optional.
	Operations Operations
	// RunCommand is the device's rule for runCommand steps; a step it
	// refuses makes the document invalid, so the job is rejected before
	// any step runs. The zero value allows every runCommand step.
	RunCommand RunCommandPolicy
}

// Parse parses and validates a job document. A non-nil error is always an
// *Error with a non-empty Problem.
func Parse(data []byte, opts Options) (*Document, error) {
	doc, perr := parse(data, opts)
	if perr != nil {
		return nil, perr
	}
	return doc, nil
}

func parse(data []byte, opts Options) (*Document, *Error) {
	if len(data) > MaxDocumentBytes {
		return nil, fieldErr("", "document is %d bytes, larger than the %d-byte limit of AWS IoT Jobs", len(data), MaxDocumentBytes)
	}
	if err := checkJSON(data); err != nil {
		return nil, err
	}
	top, err := object(data, "")
	if err != nil {
		return nil, err
	}
	if _, ok := top["version"]; ok {
		return parseStandard(top, opts)
	}
	if _, ok := top["operation"]; ok {
		return parseOld(top, opts)
	}
	return nil, fieldErr("", `neither "version" (schema 1.0) nor "operation" (old schema) is present`)
}

// checkJSON verifies data is exactly one JSON value, in UTF-8, that no
// object has a key twice, and that every number can be decoded. These are
// the ways a document's text and the values a decoder produces can
// disagree: encoding/json silently keeps the last of two equal keys and
// replaces invalid UTF-8, so a reviewer and the device could read different
// documents, and a number beyond the float64 range (1e999) makes decoding
// fail. Each is a rejection naming the field.
func checkJSON(data []byte) *Error {
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		msg := "invalid JSON"
		if err != nil {
			msg = "invalid JSON: " + err.Error()
		}
		return fieldErr("", "%s", msg)
	}
	if !utf8.Valid(data) {
		off := 0
		for off < len(data) {
			r, size := utf8.DecodeRune(data[off:])
			if r == utf8.RuneError && size <= 1 {
				break
			}
			off += size
		}
		return fieldErr("", "invalid UTF-8 at byte %d (JSON text must be UTF-8)", off)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var path []string
	if err := walkStrict(dec, &path); err != nil {
		return err
	}
	return nil
}

// fieldPath renders a path stack ("steps", "[0]", "action") as a field.
func fieldPath(path []string) string {
	var b strings.Builder
	for _, p := range path {
		if b.Len() > 0 && !strings.HasPrefix(p, "[") {
			b.WriteByte('.')
		}
		b.WriteString(p)
	}
	return b.String()
}

// walkStrict walks one JSON value, rejecting duplicate keys and numbers
// that do not fit a float64; path is a stack of segments that is only
// rendered for an error (deep documents stay linear).
func walkStrict(dec *json.Decoder, path *[]string) *Error {
	tok, err := dec.Token()
	if err != nil {
		return fieldErr(fieldPath(*path), "invalid JSON: %v", err)
	}
	if n, ok := tok.(json.Number); ok {
		if _, err := strconv.ParseFloat(string(n), 64); err != nil {
			return fieldErr(fieldPath(*path), "the number %s cannot be decoded: it is outside the range of a 64-bit floating-point number", abbreviate(string(n)))
		}
		return nil
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch delim {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return fieldErr(fieldPath(*path), "invalid JSON: %v", err)
			}
			key, _ := kt.(string)
			*path = append(*path, key)
			if seen[key] {
				return fieldErr(fieldPath(*path), "duplicate key %q: the field appears more than once in the same object (JSON decoders disagree on which one counts)", key)
			}
			seen[key] = true
			if err := walkStrict(dec, path); err != nil {
				return err
			}
			*path = (*path)[:len(*path)-1]
		}
	case '[':
		for i := 0; dec.More(); i++ {
			*path = append(*path, "["+strconv.Itoa(i)+"]")
			if err := walkStrict(dec, path); err != nil {
				return err
			}
			*path = (*path)[:len(*path)-1]
		}
	}
	if _, err := dec.Token(); err != nil && !errors.Is(err, io.EOF) {
		return fieldErr(fieldPath(*path), "invalid JSON: %v", err)
	}
	return nil
}

// abbreviate shortens a long number for an error message.
func abbreviate(s string) string {
	const max = 40
	if len(s) <= max {
		return s
	}
	return s[:max/2] + "…" + s[len(s)-max/2:] + " (" + strconv.Itoa(len(s)) + " characters)"
}

func joinField(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// jsonKind names the JSON type of raw for error messages.
func jsonKind(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

func object(raw json.RawMessage, field string) (map[string]json.RawMessage, *Error) {
	var m map[string]json.RawMessage
	if jsonKind(raw) != "an object" || json.Unmarshal(raw, &m) != nil {
		if field == "" {
			return nil, fieldErr("", "must be a JSON object, got %s", jsonKind(raw))
		}
		return nil, fieldErr(field, "must be an object, got %s", jsonKind(raw))
	}
	return m, nil
}

func str(raw json.RawMessage, field string) (string, *Error) {
	var s string
	if jsonKind(raw) != "a string" || json.Unmarshal(raw, &s) != nil {
		return "", fieldErr(field, "must be a string, got %s", jsonKind(raw))
	}
	if strings.ContainsRune(s, 0) {
		return "", fieldErr(field, "must not contain a NUL character")
	}
	return s, nil
}

func strList(raw json.RawMessage, field string) ([]string, *Error) {
	var items []json.RawMessage
	if jsonKind(raw) != "an array" || json.Unmarshal(raw, &items) != nil {
		return nil, fieldErr(field, "must be an array of strings, got %s", jsonKind(raw))
	}
	out := make([]string, 0, len(items))
	for i, it := range items {
		s, err := str(it, fmt.Sprintf("%s[%d]", field, i))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// boolish accepts a JSON boolean or the strings "true"/"false" (the Device
// Client documents includeStdOut as a boolean but reads it as a string).
func boolish(raw json.RawMessage, field string) (bool, *Error) {
	switch jsonKind(raw) {
	case "a boolean":
		var b bool
		_ = json.Unmarshal(raw, &b)
		return b, nil
	case "a string":
		s, _ := str(raw, field)
		switch s {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return false, fieldErr(field, `must be true or false, got the string %q`, s)
	}
	return false, fieldErr(field, "must be a boolean, got %s", jsonKind(raw))
}

// stringBool accepts only the strings "true" and "false" (ignoreStepFailure).
func stringBool(raw json.RawMessage, field string) (bool, *Error) {
	if jsonKind(raw) == "a boolean" {
		return false, fieldErr(field, `must be the string "true" or "false", got a boolean (the schema passes it as a string)`)
	}
	s, err := str(raw, field)
	if err != nil {
		return false, fieldErr(field, `must be the string "true" or "false", got %s`, jsonKind(raw))
	}
	switch s {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fieldErr(field, `must be the string "true" or "false", got %q`, s)
}

func nonNegInt(raw json.RawMessage, field string) (int, *Error) {
	if jsonKind(raw) != "a number" {
		return 0, fieldErr(field, "must be a non-negative integer, got %s", jsonKind(raw))
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil || f != math.Trunc(f) || f < 0 || f > 1e6 {
		return 0, fieldErr(field, "must be a non-negative integer no larger than 1000000, got %s", bytes.TrimSpace(raw))
	}
	return int(f), nil
}

// isComment reports whether key is a comment field ("_comment" in the AWS
// samples): keys starting with an underscore are ignored everywhere.
func isComment(key string) bool { return strings.HasPrefix(key, "_") }

// unknownFields rejects keys of m not in allowed (comment keys aside), in
// sorted order so the message is stable.
func unknownFields(m map[string]json.RawMessage, parent string, allowed []string, hint func(key string) string) *Error {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if isComment(k) {
			continue
		}
		known := false
		for _, a := range allowed {
			if k == a {
				known = true
				break
			}
		}
		if !known {
			msg := "unknown field"
			if hint != nil {
				if h := hint(k); h != "" {
					msg += " (" + h + ")"
				}
			}
			return fieldErr(joinField(parent, k), "%s", msg)
		}
	}
	return nil
}

func parseStandard(top map[string]json.RawMessage, opts Options) (*Document, *Error) {
	err := unknownFields(top, "", []string{"version", "includeStdOut", "steps", "finalStep"}, func(k string) string {
		switch k {
		case "operation", "args", "path", "allowStdErr":
			return "an old-schema field; documents with \"version\" use steps"
		case "conditions":
			return "conditions are not supported by this agent, which would not evaluate them"
		}
		return ""
	})
	if err != nil {
		return nil, err
	}
	version, err := str(top["version"], "version")
	if err != nil {
		return nil, err
	}
	if version != SchemaVersion1 {
		return nil, fieldErr("version", "unsupported schema version %q (only %q is supported)", version, SchemaVersion1)
	}
	doc := &Document{Schema: SchemaStandard}
	if raw, ok := top["includeStdOut"]; ok {
		if doc.IncludeStdOut, err = boolish(raw, "includeStdOut"); err != nil {
			return nil, err
		}
	}
	rawSteps, ok := top["steps"]
	if !ok {
		return nil, fieldErr("steps", "required field is missing")
	}
	var items []json.RawMessage
	if jsonKind(rawSteps) != "an array" || json.Unmarshal(rawSteps, &items) != nil {
		return nil, fieldErr("steps", "must be an array of steps, got %s", jsonKind(rawSteps))
	}
	if len(items) == 0 {
		return nil, fieldErr("steps", "must contain at least one step")
	}
	for i, it := range items {
		a, err := parseStepWrapper(it, fmt.Sprintf("steps[%d]", i), opts)
		if err != nil {
			return nil, err
		}
		doc.Steps = append(doc.Steps, a)
	}
	if raw, ok := top["finalStep"]; ok {
		a, err := parseStepWrapper(raw, "finalStep", opts)
		if err != nil {
			return nil, err
		}
		doc.FinalStep = &a
	}
	return doc, nil
}

func parseStepWrapper(raw json.RawMessage, field string, opts Options) (Action, *Error) {
	m, err := object(raw, field)
	if err != nil {
		return Action{}, err
	}
	if err := unknownFields(m, field, []string{"action"}, nil); err != nil {
		return Action{}, err
	}
	rawAction, ok := m["action"]
	if !ok {
		return Action{}, fieldErr(joinField(field, "action"), "required field is missing")
	}
	return parseAction(rawAction, joinField(field, "action"), opts)
}

func parseAction(raw json.RawMessage, field string, opts Options) (Action, *Error) {
	m, err := object(raw, field)
	if err != nil {
		return Action{}, err
	}
	if err := unknownFields(m, field, []string{"name", "type", "runAsUser", "ignoreStepFailure", "allowStdErr", "input"}, nil); err != nil {
		return Action{}, err
	}
	var a Action
	rawName, ok := m["name"]
	if !ok {
		return a, fieldErr(joinField(field, "name"), "required field is missing")
	}
	if a.Name, err = str(rawName, joinField(field, "name")); err != nil {
		return a, err
	}
	if strings.TrimSpace(a.Name) == "" {
		return a, fieldErr(joinField(field, "name"), "must not be empty")
	}
	rawType, ok := m["type"]
	if !ok {
		return a, fieldErr(joinField(field, "type"), "required field is missing")
	}
	typ, err := str(rawType, joinField(field, "type"))
	if err != nil {
		return a, err
	}
	if raw, ok := m["runAsUser"]; ok {
		if a.RunAsUser, err = str(raw, joinField(field, "runAsUser")); err != nil {
			return a, err
		}
		if err := checkUser(a.RunAsUser, joinField(field, "runAsUser")); err != nil {
			return a, err
		}
	}
	if raw, ok := m["ignoreStepFailure"]; ok {
		if a.IgnoreStepFailure, err = stringBool(raw, joinField(field, "ignoreStepFailure")); err != nil {
			return a, err
		}
	}
	if raw, ok := m["allowStdErr"]; ok {
		n, err := nonNegInt(raw, joinField(field, "allowStdErr"))
		if err != nil {
			return a, err
		}
		a.AllowStdErr = &n
	}
	rawInput, ok := m["input"]
	if !ok {
		return a, fieldErr(joinField(field, "input"), "required field is missing")
	}
	inField := joinField(field, "input")
	input, err := object(rawInput, inField)
	if err != nil {
		return a, err
	}
	switch {
	case typ == string(TypeRunHandler):
		a.Type = TypeRunHandler
		if err := unknownFields(input, inField, []string{"handler", "args", "path"}, func(k string) string {
			if k == "command" {
				return "command belongs to runCommand steps"
			}
			return ""
		}); err != nil {
			return a, err
		}
		rawHandler, ok := input["handler"]
		if !ok {
			return a, fieldErr(joinField(inField, "handler"), "required field is missing")
		}
		if a.Handler, err = str(rawHandler, joinField(inField, "handler")); err != nil {
			return a, err
		}
		if err := checkHandlerName(a.Handler, joinField(inField, "handler")); err != nil {
			return a, err
		}
		if raw, ok := input["args"]; ok {
			if a.Args, err = strList(raw, joinField(inField, "args")); err != nil {
				return a, err
			}
		}
		if raw, ok := input["path"]; ok {
			if a.Path, err = str(raw, joinField(inField, "path")); err != nil {
				return a, err
			}
			if err := checkPath(a.Path, joinField(inField, "path")); err != nil {
				return a, err
			}
		}
	case typ == string(TypeRunCommand):
		a.Type = TypeRunCommand
		if opts.RunCommand.Disabled {
			return a, fieldErr(joinField(field, "type"), "%s", opts.RunCommand.Check(""))
		}
		if err := unknownFields(input, inField, []string{"command"}, func(k string) string {
			switch k {
			case "handler", "args", "path":
				return k + " belongs to runHandler steps"
			}
			return ""
		}); err != nil {
			return a, err
		}
		rawCmd, ok := input["command"]
		if !ok {
			return a, fieldErr(joinField(inField, "command"), "required field is missing")
		}
		if a.Command, err = str(rawCmd, joinField(inField, "command")); err != nil {
			return a, err
		}
		argv, perr := SplitCommand(a.Command)
		if perr != nil {
			return a, fieldErr(joinField(inField, "command"), "%s", perr.Error())
		}
		if perr := opts.RunCommand.Check(argv[0]); perr != nil {
			return a, fieldErr(joinField(inField, "command"), "%s", perr.Error())
		}
		a.Argv = argv
	case opts.Operations != nil && opts.Operations.HasOperation(typ):
		a.Type = TypeOperation
		a.Operation = typ
		a.Input = input
		v, verr := opts.Operations.ParseOperation(typ, input)
		if verr != nil {
			return a, opErr(inField, typ, verr)
		}
		a.Value = v
	default:
		return a, fieldErr(joinField(field, "type"), "unsupported action type %q (want %q or %q%s)", typ, TypeRunHandler, TypeRunCommand, registeredHint(opts))
	}
	return a, nil
}

func registeredHint(opts Options) string {
	if lister, ok := opts.Operations.(interface{ OperationNames() []string }); ok {
		names := lister.OperationNames()
		if len(names) > 0 {
			return " or a registered operation: " + strings.Join(names, ", ")
		}
	}
	return ""
}

// opErr turns an operation's validation error into an *Error under field.
func opErr(field, op string, err error) *Error {
	var de *Error
	if errors.As(err, &de) {
		f := field
		if de.Field != "" {
			f = joinField(field, de.Field)
		}
		if de.Problem == "" {
			return fieldErr(f, "invalid input for operation %s", op)
		}
		return &Error{Field: f, Problem: de.Problem}
	}
	msg := strings.TrimSpace(err.Error())
	if msg == "" {
		msg = "invalid input"
	}
	return fieldErr(field, "operation %s: %s", op, msg)
}

func parseOld(top map[string]json.RawMessage, opts Options) (*Document, *Error) {
	opName, err := str(top["operation"], "operation")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(opName) == "" {
		return nil, fieldErr("operation", "must not be empty")
	}
	doc := &Document{Schema: SchemaOld}
	if raw, ok := top["includeStdOut"]; ok {
		if doc.IncludeStdOut, err = boolish(raw, "includeStdOut"); err != nil {
			return nil, err
		}
	}
	if opts.Operations != nil && opts.Operations.HasOperation(opName) {
		input := make(map[string]json.RawMessage, len(top))
		for k, v := range top {
			if k == "operation" || k == "includeStdOut" || isComment(k) {
				continue
			}
			input[k] = v
		}
		v, verr := opts.Operations.ParseOperation(opName, input)
		if verr != nil {
			return nil, opErr("", opName, verr)
		}
		doc.Steps = []Action{{Name: opName, Type: TypeOperation, Operation: opName, Input: input, Value: v}}
		return doc, nil
	}
	if err := unknownFields(top, "", []string{"operation", "args", "path", "allowStdErr", "includeStdOut"}, func(k string) string {
		switch k {
		case "steps", "finalStep":
			return `schema 1.0 field; add "version": "1.0"`
		}
		return fmt.Sprintf("operation %q is not a registered operation, so the document is an old-schema handler job", opName)
	}); err != nil {
		return nil, err
	}
	a := Action{Name: opName, Type: TypeRunHandler, Handler: opName}
	if err := checkHandlerName(opName, "operation"); err != nil {
		return nil, err
	}
	if raw, ok := top["args"]; ok {
		if a.Args, err = strList(raw, "args"); err != nil {
			return nil, err
		}
	}
	if raw, ok := top["path"]; ok {
		if a.Path, err = str(raw, "path"); err != nil {
			return nil, err
		}
		if err := checkPath(a.Path, "path"); err != nil {
			return nil, err
		}
	}
	// The old schema documents a default of 0: any stderr line fails the job.
	n := 0
	if raw, ok := top["allowStdErr"]; ok {
		if n, err = nonNegInt(raw, "allowStdErr"); err != nil {
			return nil, err
		}
	}
	a.AllowStdErr = &n
	doc.Steps = []Action{a}
	return doc, nil
}

// checkHandlerName refuses names that could leave the handler directory.
func checkHandlerName(name, field string) *Error {
	switch {
	case name == "":
		return fieldErr(field, "handler name must not be empty")
	case strings.ContainsAny(name, `/\`):
		return fieldErr(field, "handler name %q contains a path separator; handlers are looked up by name in the handler directory (use path for another allowed directory)", name)
	case strings.Contains(name, ".."):
		return fieldErr(field, "handler name %q contains \"..\"", name)
	case name == ".":
		return fieldErr(field, "handler name %q is not a file name", name)
	case strings.HasPrefix(name, "-"):
		return fieldErr(field, "handler name %q must not start with \"-\"", name)
	case strings.ContainsFunc(name, isControl):
		return fieldErr(field, "handler name %q contains a control character", name)
	}
	return nil
}

// checkPath accepts "default" or an absolute, clean directory path.
func checkPath(p, field string) *Error {
	if p == DefaultPath || p == "" {
		return nil
	}
	if !strings.HasPrefix(p, "/") {
		return fieldErr(field, "must be %q or an absolute directory path, got %q", DefaultPath, p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return fieldErr(field, "must not contain \"..\", got %q", p)
		}
	}
	if strings.ContainsFunc(p, isControl) {
		return fieldErr(field, "contains a control character")
	}
	return nil
}

var userPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$`)

// checkUser accepts POSIX-style user names (and "" for "the agent's user").
// A name starting with "-" would be read as an option by sudo.
func checkUser(u, field string) *Error {
	if u == "" {
		return nil
	}
	if !userPattern.MatchString(u) {
		return fieldErr(field, "%q is not a valid user name (letters, digits, '_', '.', '-', at most 32 characters, not starting with '-' or '.')", u)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
