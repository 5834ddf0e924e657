// Package iotpolicy evaluates AWS IoT policy documents the way AWS IoT Core
// authorizes MQTT operations: iot:Connect on client/<clientId>,
// iot:Publish and iot:Receive on topic/<topic>, iot:Subscribe on
// topicfilter/<filter>. Statements are matched with IAM semantics (an
// explicit Deny wins over any Allow; no matching Allow is an implicit
// deny), resources and actions use the IAM wildcards `*` and `?` (MQTT's
// `+` and `#` are plain characters), and the IoT policy variables
// ${iot:ClientId}, ${iot:Connection.Thing.ThingName},
// ${iot:Connection.Thing.IsAttached} and
// ${iot:Connection.Thing.Attributes[name]} are substituted per connection.
// The Connection.Thing variables only resolve when the MQTT client id is
// the name of a thing attached to the connecting certificate; a resource
// whose variable does not resolve matches nothing.
package iotpolicy

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/iot-fleet/iot-fleet/internal/policy"
)

// IoT policy actions for MQTT.
const (
	ActionConnect   = "iot:Connect"
	ActionPublish   = "iot:Publish"
	ActionSubscribe = "iot:Subscribe"
	ActionReceive   = "iot:Receive"
)

// Decision is the outcome of an evaluation.
type Decision int

const (
	// ImplicitDeny: no statement allowed the request.
	ImplicitDeny Decision = iota
	// Allowed: an Allow statement matched and no Deny did.
	Allowed
	// ExplicitDeny: a Deny statement matched.
	ExplicitDeny
)

func (d Decision) String() string {
	switch d {
	case Allowed:
		return "allow"
	case ExplicitDeny:
		return "explicit-deny"
	}
	return "implicit-deny"
}

// Context is what policy variables and condition keys resolve from.
type Context struct {
	// ClientID is the MQTT client id of the connection.
	ClientID string
	// ThingName is the name of the thing the connection is, or "" when
	// the client id is not the name of a thing attached to the
	// connection's certificate.
	ThingName string
	// ThingAttributes are the attributes of that thing.
	ThingAttributes map[string]string
}

// Policy is a compiled policy document.
type Policy struct {
	Name       string
	Document   policy.Document
	statements []statement
}

type statement struct {
	sid        string
	deny       bool
	actions    []pattern
	resources  []pattern
	conditions []condition
}

type condition struct {
	op    string
	key   string
	value pattern
}

// Compile validates doc and prepares it for evaluation. Errors name the
// statement and field at fault.
func Compile(name string, doc policy.Document) (*Policy, error) {
	if doc.Version != "" && doc.Version != "2012-10-17" && doc.Version != "2008-10-17" {
		return nil, fmt.Errorf("policy %s: Version %q not supported", name, doc.Version)
	}
	if len(doc.Statement) == 0 {
		return nil, fmt.Errorf("policy %s: no Statement", name)
	}
	p := &Policy{Name: name, Document: doc}
	for i, st := range doc.Statement {
		where := fmt.Sprintf("policy %s: Statement[%d]", name, i)
		if st.Sid != "" {
			where += " (" + st.Sid + ")"
		}
		var cs statement
		cs.sid = st.Sid
		switch st.Effect {
		case "Allow":
		case "Deny":
			cs.deny = true
		default:
			return nil, fmt.Errorf("%s: Effect %q, want Allow or Deny", where, st.Effect)
		}
		if len(st.Action) == 0 {
			return nil, fmt.Errorf("%s: no Action", where)
		}
		for _, a := range st.Action {
			if a != "*" && !strings.HasPrefix(strings.ToLower(a), "iot:") {
				return nil, fmt.Errorf("%s: Action %q is not an iot: action", where, a)
			}
			pt, err := parsePattern(strings.ToLower(a), false)
			if err != nil {
				return nil, fmt.Errorf("%s: Action %q: %w", where, a, err)
			}
			cs.actions = append(cs.actions, pt)
		}
		if len(st.Resource) == 0 {
			return nil, fmt.Errorf("%s: no Resource", where)
		}
		for _, r := range st.Resource {
			pt, err := parsePattern(r, true)
			if err != nil {
				return nil, fmt.Errorf("%s: Resource %q: %w", where, r, err)
			}
			cs.resources = append(cs.resources, pt)
		}
		for op, kv := range st.Condition {
			switch op {
			case "Bool", "StringEquals", "StringNotEquals", "StringLike", "StringNotLike":
			default:
				return nil, fmt.Errorf("%s: Condition operator %q not supported", where, op)
			}
			for k, v := range kv {
				if _, ok := knownConditionKey(k); !ok {
					return nil, fmt.Errorf("%s: Condition key %q not supported", where, k)
				}
				if op == "Bool" && v != "true" && v != "false" {
					return nil, fmt.Errorf("%s: Bool condition %s value %q, want true or false", where, k, v)
				}
				pt, err := parsePattern(v, true)
				if err != nil {
					return nil, fmt.Errorf("%s: Condition %s %s: %w", where, op, k, err)
				}
				cs.conditions = append(cs.conditions, condition{op: op, key: k, value: pt})
			}
		}
		p.statements = append(p.statements, cs)
	}
	return p, nil
}

// Evaluate decides whether the policies allow action on resource (a full
// ARN) for the connection described by ctx.
func Evaluate(policies []*Policy, action, resource string, ctx Context) Decision {
	allowed := false
	action = strings.ToLower(action)
	for _, p := range policies {
		if p == nil {
			continue
		}
		for i := range p.statements {
			st := &p.statements[i]
			if !st.matches(action, resource, ctx) {
				continue
			}
			if st.deny {
				return ExplicitDeny
			}
			allowed = true
		}
	}
	if allowed {
		return Allowed
	}
	return ImplicitDeny
}

func (st *statement) matches(action, resource string, ctx Context) bool {
	ok := false
	for _, a := range st.actions {
		if a.match(action, ctx) {
			ok = true
			break
		}
	}
	if !ok {
		return false
	}
	ok = false
	for _, r := range st.resources {
		if r.match(resource, ctx) {
			ok = true
			break
		}
	}
	if !ok {
		return false
	}
	for _, c := range st.conditions {
		if !c.holds(ctx) {
			return false
		}
	}
	return true
}

func (c condition) holds(ctx Context) bool {
	val, present := conditionValue(c.key, ctx)
	want, resolved := c.value.literal(ctx)
	switch c.op {
	case "Bool", "StringEquals":
		return present && resolved && val == want
	case "StringNotEquals":
		return !present || (resolved && val != want)
	case "StringLike":
		return present && c.value.match(val, ctx)
	case "StringNotLike":
		return !present || !c.value.match(val, ctx)
	}
	return false
}

func knownConditionKey(k string) (string, bool) {
	switch k {
	case "iot:ClientId", "iot:Connection.Thing.ThingName", "iot:Connection.Thing.IsAttached":
		return k, true
	}
	if name, ok := attributeName(k); ok {
		return name, true
	}
	return "", false
}

func conditionValue(k string, ctx Context) (string, bool) {
	return variableValue(k, ctx)
}

// variableValue resolves a variable name (without ${}); ok=false when it
// does not resolve for this connection.
func variableValue(name string, ctx Context) (string, bool) {
	switch name {
	case "iot:ClientId":
		return ctx.ClientID, ctx.ClientID != ""
	case "iot:Connection.Thing.ThingName":
		return ctx.ThingName, ctx.ThingName != ""
	case "iot:Connection.Thing.IsAttached":
		if ctx.ThingName != "" {
			return "true", true
		}
		return "false", true
	}
	if attr, ok := attributeName(name); ok {
		if ctx.ThingName == "" {
			return "", false
		}
		v, ok := ctx.ThingAttributes[attr]
		return v, ok
	}
	return "", false
}

func attributeName(v string) (string, bool) {
	const prefix = "iot:Connection.Thing.Attributes["
	if strings.HasPrefix(v, prefix) && strings.HasSuffix(v, "]") && len(v) > len(prefix)+1 {
		return v[len(prefix) : len(v)-1], true
	}
	return "", false
}

// pattern is a string with IAM wildcards and policy variables.
type pattern []token

type tokenKind int

const (
	tokLiteral tokenKind = iota
	tokStar
	tokQuestion
	tokVar
)

type token struct {
	kind tokenKind
	text string // literal text or variable name
}

func parsePattern(s string, allowVars bool) (pattern, error) {
	var p pattern
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			p = append(p, token{kind: tokLiteral, text: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '*':
			flush()
			p = append(p, token{kind: tokStar})
		case s[i] == '?':
			flush()
			p = append(p, token{kind: tokQuestion})
		case s[i] == '$' && i+1 < len(s) && s[i+1] == '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return nil, fmt.Errorf("unterminated policy variable at offset %d", i)
			}
			name := s[i+2 : i+end]
			i += end
			switch name {
			case "*", "?", "$": // IAM escapes for literal special characters
				lit.WriteString(name)
				continue
			}
			if !allowVars {
				return nil, fmt.Errorf("policy variable ${%s} not allowed here", name)
			}
			if _, ok := knownConditionKey(name); !ok {
				return nil, fmt.Errorf("policy variable ${%s} not supported", name)
			}
			flush()
			p = append(p, token{kind: tokVar, text: name})
		default:
			lit.WriteByte(s[i])
		}
	}
	flush()
	return p, nil
}

// resolve substitutes variables; ok=false if one does not resolve.
func (p pattern) resolve(ctx Context) (pattern, bool) {
	hasVar := false
	for _, t := range p {
		if t.kind == tokVar {
			hasVar = true
			break
		}
	}
	if !hasVar {
		return p, true
	}
	out := make(pattern, 0, len(p))
	for _, t := range p {
		if t.kind != tokVar {
			out = append(out, t)
			continue
		}
		v, ok := variableValue(t.text, ctx)
		if !ok {
			return nil, false
		}
		out = append(out, token{kind: tokLiteral, text: v})
	}
	return out, true
}

// literal returns the pattern as a plain string when it has no wildcards.
func (p pattern) literal(ctx Context) (string, bool) {
	r, ok := p.resolve(ctx)
	if !ok {
		return "", false
	}
	var b strings.Builder
	for _, t := range r {
		switch t.kind {
		case tokLiteral:
			b.WriteString(t.text)
		case tokStar:
			b.WriteByte('*')
		case tokQuestion:
			b.WriteByte('?')
		}
	}
	return b.String(), true
}

func (p pattern) match(s string, ctx Context) bool {
	r, ok := p.resolve(ctx)
	if !ok {
		return false
	}
	return globMatch(r, s)
}

// globMatch matches s against tokens (literal, * and ?), iteratively with
// backtracking to the last star.
func globMatch(p pattern, s string) bool {
	// Expand literals into a rune-free byte program for simplicity.
	type op struct {
		kind tokenKind
		b    byte
	}
	var prog []op
	for _, t := range p {
		switch t.kind {
		case tokLiteral:
			for i := 0; i < len(t.text); i++ {
				prog = append(prog, op{kind: tokLiteral, b: t.text[i]})
			}
		default:
			prog = append(prog, op{kind: t.kind})
		}
	}
	pi, si := 0, 0
	starP, starS := -1, 0
	for si < len(s) {
		if pi < len(prog) {
			o := prog[pi]
			switch {
			case o.kind == tokStar:
				starP, starS = pi, si
				pi++
				continue
			case o.kind == tokQuestion:
				// ? matches one character (a whole UTF-8 sequence).
				_, size := utf8.DecodeRuneInString(s[si:])
				pi++
				si += size
				continue
			case o.kind == tokLiteral && o.b == s[si]:
				pi++
				si++
				continue
			}
		}
		if starP >= 0 {
			pi = starP + 1
			starS++
			si = starS
			continue
		}
		return false
	}
	for pi < len(prog) && prog[pi].kind == tokStar {
		pi++
	}
	return pi == len(prog)
}
