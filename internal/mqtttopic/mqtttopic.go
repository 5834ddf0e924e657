// Package mqtttopic matches and validates MQTT topic filters, for the
// device (its subscriptions) and the local IoT Core (routes, fault rules,
// rules, watches) alike.
package mqtttopic

import (
	"fmt"
	"strings"
)

// Match reports whether topic matches the MQTT topic filter (with the "+"
// and "#" wildcards). As the MQTT specification requires [MQTT-4.7.2-1], a
// wildcard in the first level does not match topics starting with "$".
// A malformed filter ("#" not last) matches nothing.
func Match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fl := strings.Split(filter, "/")
	tl := strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return i == len(fl)-1
		}
		if i >= len(tl) {
			return false
		}
		if f != "+" && f != tl[i] {
			return false
		}
	}
	return len(fl) == len(tl)
}

// ValidateFilter checks an MQTT topic filter: not empty, "#" only as the
// whole last level, "+" only as a whole level.
func ValidateFilter(f string) error {
	if f == "" {
		return fmt.Errorf("empty topic filter")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("filter %q: # must be a whole last level", f)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("filter %q: + must be a whole level", f)
		}
	}
	return nil
}
