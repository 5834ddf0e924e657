package provision

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// ReadSerial returns the device serial: override if set, else the first of
// files that holds one. A file is either the device-tree serial-number (the
// serial alone, NUL-terminated) or /proc/cpuinfo (a "Serial : ..." line).
// The serial must match pattern.
func ReadSerial(override string, files []string, pattern string) (string, error) {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return "", fmt.Errorf("serial pattern %q: %w", pattern, err)
	}
	check := func(serial, source string) (string, error) {
		if !re.MatchString(serial) {
			return "", fmt.Errorf("serial %q from %s does not match %s", serial, source, pattern)
		}
		return serial, nil
	}
	if override != "" {
		return check(override, "config")
	}
	var problems []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		serial := serialFrom(data)
		if serial == "" {
			problems = append(problems, f+": no serial")
			continue
		}
		return check(serial, f)
	}
	if len(problems) == 0 {
		return "", errors.New("read serial: no serial source configured")
	}
	return "", fmt.Errorf("read serial: %s", strings.Join(problems, "; "))
}

func serialFrom(data []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(key) == "Serial" {
			return strings.TrimSpace(val)
		}
	}
	if bytes.Contains(data, []byte(":")) { // cpuinfo without a Serial line
		return ""
	}
	return strings.TrimSpace(strings.TrimRight(string(data), "\x00\n\r\t "))
}
