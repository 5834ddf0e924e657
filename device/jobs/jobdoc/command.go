package jobdoc

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// SplitCommand splits a runCommand command string into argv the way the
// AWS IoT Device Client does: tokens are separated by commas, and `\,` stands
// for a literal comma inside a token (any other backslash is kept as is).
// Empty tokens between separators are kept as empty arguments. The first
// token is the program: it must not be empty, contain white space, or start
// with "-".
func SplitCommand(command string) ([]string, error) {
	if command == "" {
		return nil, errors.New("must not be empty")
	}
	var argv []string
	var cur strings.Builder
	for i := 0; i < len(command); i++ {
		c := command[i]
		switch {
		case c == '\\' && i+1 < len(command) && command[i+1] == ',':
			cur.WriteByte(',')
			i++
		case c == ',':
			argv = append(argv, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	argv = append(argv, cur.String())
	first := argv[0]
	switch {
	case first == "":
		return nil, errors.New("the first token (the program) is empty")
	case strings.ContainsFunc(first, unicode.IsSpace):
		return nil, fmt.Errorf("the first token %q (the program) contains white space; separate arguments with commas", first)
	case strings.HasPrefix(first, "-"):
		return nil, fmt.Errorf("the first token %q (the program) must not start with \"-\"", first)
	}
	for i, tok := range argv {
		if strings.ContainsFunc(tok, isControlExceptSpace) {
			return nil, fmt.Errorf("token %d contains a control character", i+1)
		}
	}
	return argv, nil
}

// isControlExceptSpace is a control character other than tab and newline,
// which may legitimately appear inside an argument.
func isControlExceptSpace(r rune) bool {
	return (r < 0x20 && r != '\t' && r != '\n') || r == 0x7f
}
