// Package required checks that a handler's required configuration fields
// are set, with one error naming every field that is not.
package required

import (
	"errors"
	"strings"
)

// Check is one required field and whether it is set.
type Check struct {
	name string
	set  bool
}

// Field is the check of the field called name; set says whether it is set
// (a non-nil client, a non-empty string).
func Field(name string, set bool) Check { return Check{name: name, set: set} }

// Fields returns nil when every field is set, otherwise the error
// "<prefix> A, B" naming the unset fields in the order given.
func Fields(prefix string, checks ...Check) error {
	var missing []string
	for _, c := range checks {
		if !c.set {
			missing = append(missing, c.name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return errors.New(prefix + " " + strings.Join(missing, ", "))
}
