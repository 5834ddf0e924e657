package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/mqtttopic"
)

// Message is one message a client published, as the rules engine sees it.
type Message struct {
	Topic string
	// ClientID is the publishing connection's client id (clientid()).
	ClientID string
	// Principal is the id of the certificate the publishing connection
	// authenticated with (principal()).
	Principal string
	Payload   []byte
	// Received is when the broker accepted the message (timestamp()).
	Received time.Time
}

// Statement is a parsed topic rule statement: the subset of the AWS IoT
// SQL (version 2016-03-23) a simulator needs, namely
//
//	SELECT item [, item ...] FROM 'topic/filter'
//
// where an item is *, a payload field (a.b.c) or one of the functions
// topic(), topic(n), clientid(), principal() and timestamp(), each with an
// optional "AS alias". A WHERE clause or any other function is refused
// with an error naming it, so a statement the simulator cannot evaluate
// faithfully is never evaluated approximately.
type Statement struct {
	Filter string
	items  []item
}

type itemKind int

const (
	itemAll itemKind = iota + 1
	itemField
	itemTopic
	itemClientID
	itemPrincipal
	itemTimestamp
)

type item struct {
	kind  itemKind
	path  []string // itemField
	level int      // itemTopic: 1-based level, 0 for the whole topic
	alias string
}

// Parse parses a rule statement.
func Parse(sql string) (*Statement, error) {
	s := strings.TrimSpace(sql)
	if !hasPrefixFold(s, "SELECT ") {
		return nil, fmt.Errorf("rule sql: must start with SELECT: %q", sql)
	}
	s = s[len("SELECT "):]
	from := indexFold(s, " FROM ")
	if from < 0 {
		return nil, fmt.Errorf("rule sql: no FROM clause: %q", sql)
	}
	selectList, rest := s[:from], strings.TrimSpace(s[from+len(" FROM "):])
	if len(rest) < 2 || rest[0] != '\'' {
		return nil, fmt.Errorf("rule sql: FROM needs a quoted topic filter, got %q", rest)
	}
	end := strings.IndexByte(rest[1:], '\'')
	if end < 0 {
		return nil, fmt.Errorf("rule sql: unterminated topic filter in %q", rest)
	}
	filter := rest[1 : 1+end]
	if tail := strings.TrimSpace(rest[2+end:]); tail != "" {
		return nil, fmt.Errorf("rule sql: %q after the topic filter is not supported by the simulator", tail)
	}
	if err := mqtttopic.ValidateFilter(filter); err != nil {
		return nil, fmt.Errorf("rule sql: FROM: %w", err)
	}
	st := &Statement{Filter: filter}
	for i, raw := range strings.Split(selectList, ",") {
		it, err := parseItem(strings.TrimSpace(raw))
		if err != nil {
			return nil, fmt.Errorf("rule sql: select item %d: %w", i+1, err)
		}
		st.items = append(st.items, it)
	}
	return st, nil
}

func parseItem(s string) (item, error) {
	if s == "" {
		return item{}, errors.New("empty")
	}
	expr, alias := s, ""
	if i := indexFold(s, " AS "); i >= 0 {
		expr, alias = strings.TrimSpace(s[:i]), strings.TrimSpace(s[i+len(" AS "):])
		if !isIdent(alias) {
			return item{}, fmt.Errorf("alias %q is not an identifier", alias)
		}
	}
	if expr == "*" {
		if alias != "" {
			return item{}, errors.New("* cannot have an alias")
		}
		return item{kind: itemAll}, nil
	}
	if open := strings.IndexByte(expr, '('); open >= 0 {
		if !strings.HasSuffix(expr, ")") {
			return item{}, fmt.Errorf("malformed function call %q", expr)
		}
		name, arg := strings.ToLower(strings.TrimSpace(expr[:open])), strings.TrimSpace(expr[open+1:len(expr)-1])
		it := item{alias: alias}
		switch name {
		case "topic":
			it.kind = itemTopic
			if arg != "" {
				n, err := strconv.Atoi(arg)
				if err != nil || n < 1 {
					return item{}, fmt.Errorf("topic(%s): want a level number from 1", arg)
				}
				it.level = n
			}
		case "clientid":
			it.kind = itemClientID
		case "principal":
			it.kind = itemPrincipal
		case "timestamp":
			it.kind = itemTimestamp
		default:
			return item{}, fmt.Errorf("function %s() is not supported by the simulator", name)
		}
		if it.kind != itemTopic && arg != "" {
			return item{}, fmt.Errorf("%s() takes no argument", name)
		}
		if it.alias == "" {
			it.alias = name
		}
		return it, nil
	}
	path := strings.Split(expr, ".")
	for _, p := range path {
		if !isIdent(p) {
			return item{}, fmt.Errorf("%q is not a payload field", expr)
		}
	}
	if alias == "" {
		alias = path[len(path)-1]
	}
	return item{kind: itemField, path: path, alias: alias}, nil
}

// Matches reports whether topic matches the statement's FROM filter.
func (st *Statement) Matches(topic string) bool { return mqtttopic.Match(st.Filter, topic) }

// Project evaluates the SELECT list over msg and returns the JSON object
// the rule's action receives. As in AWS IoT, an undefined value (a field
// the payload lacks, a topic level past the end, any payload field of a
// payload that is not a JSON object) leaves its key out.
func (st *Statement) Project(msg Message) ([]byte, error) {
	var payload map[string]any
	if err := json.Unmarshal(msg.Payload, &payload); err != nil {
		payload = nil
	}
	levels := strings.Split(msg.Topic, "/")
	out := map[string]any{}
	for _, it := range st.items {
		switch it.kind {
		case itemAll:
			for k, v := range payload {
				out[k] = v
			}
		case itemField:
			if v, ok := lookup(payload, it.path); ok {
				out[it.alias] = v
			}
		case itemTopic:
			switch {
			case it.level == 0:
				out[it.alias] = msg.Topic
			case it.level <= len(levels):
				out[it.alias] = levels[it.level-1]
			}
		case itemClientID:
			out[it.alias] = msg.ClientID
		case itemPrincipal:
			out[it.alias] = msg.Principal
		case itemTimestamp:
			out[it.alias] = msg.Received.UnixMilli()
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("rule projection: %w", err)
	}
	return b, nil
}

func lookup(m map[string]any, path []string) (any, bool) {
	var cur any = m
	for _, p := range path {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// indexFold is strings.Index ignoring ASCII case.
func indexFold(s, sub string) int {
	return strings.Index(strings.ToUpper(s), strings.ToUpper(sub))
}
