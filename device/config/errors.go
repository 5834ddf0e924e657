package config

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxErrors bounds the problems kept for one file, so a huge bad file
// cannot flood the terminal or the journal; the rest are only counted.
const MaxErrors = 50

// FieldError is one problem with one field, named by its JSON path
// ("mqtt.keepAlive", "ota.healthChecks[0].timeout"; "" for the file as a
// whole).
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return "config: " + e.Problem
	}
	return fmt.Sprintf("config: field %q: %s", e.Field, e.Problem)
}

// Errors is every problem found in a configuration: decoding problems in
// file order, then validation problems section by section. Parse,
// Validate and LoadValid return it; errors.As(err, &*FieldError) finds the
// first problem, errors.As(err, &*Errors) all of them.
type Errors struct {
	// List holds at most MaxErrors problems.
	List []*FieldError
	// Omitted counts the problems beyond MaxErrors.
	Omitted int
}

func (e *Errors) Error() string {
	if len(e.List) == 1 && e.Omitted == 0 {
		return e.List[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "config: %d problems: ", e.Len())
	for i, fe := range e.List {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(strings.TrimPrefix(fe.Error(), "config: "))
	}
	if e.Omitted > 0 {
		fmt.Fprintf(&b, "; and %d more", e.Omitted)
	}
	return b.String()
}

// Unwrap returns the problems kept, so errors.As finds a *FieldError.
func (e *Errors) Unwrap() []error {
	errs := make([]error, len(e.List))
	for i, fe := range e.List {
		errs[i] = fe
	}
	return errs
}

// Len is the number of problems found, kept or omitted.
func (e *Errors) Len() int { return len(e.List) + e.Omitted }

// Add records a problem with field.
func (e *Errors) Add(field, format string, args ...any) {
	if len(e.List) >= MaxErrors {
		e.Omitted++
		return
	}
	e.List = append(e.List, &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
}

// Has reports whether a problem with field was recorded.
func (e *Errors) Has(field string) bool {
	for _, fe := range e.List {
		if fe.Field == field {
			return true
		}
	}
	return false
}

// Err is e as an error, or nil when no problem was found.
func (e *Errors) Err() error {
	if e.Len() == 0 {
		return nil
	}
	return e
}

// join names a field of the object at path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// index names element i of the list at path.
func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }
