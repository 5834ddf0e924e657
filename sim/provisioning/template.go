package provisioning

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Template is a parsed fleet provisioning template body.
type Template struct {
	Parameters          map[string]TemplateParameter
	Resources           map[string]TemplateResource
	DeviceConfiguration map[string]any
}

// TemplateParameter is one entry of the template's Parameters.
type TemplateParameter struct {
	Type    string `json:"Type"`
	Default any    `json:"Default,omitempty"`
}

// TemplateResource is one entry of the template's Resources.
type TemplateResource struct {
	Type             string            `json:"Type"`
	Properties       map[string]any    `json:"Properties"`
	OverrideSettings map[string]string `json:"OverrideSettings,omitempty"`
}

// Resource types a template may declare.
const (
	TypeThing       = "AWS::IoT::Thing"
	TypeCertificate = "AWS::IoT::Certificate"
	TypePolicy      = "AWS::IoT::Policy"
)

// ParseTemplate parses and checks a template body: known resource types,
// exactly one thing and one certificate resource.
func ParseTemplate(body string) (*Template, error) {
	var raw struct {
		Parameters          map[string]TemplateParameter `json:"Parameters"`
		Resources           map[string]TemplateResource  `json:"Resources"`
		DeviceConfiguration map[string]any               `json:"DeviceConfiguration"`
	}
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("template body: %w", err)
	}
	counts := map[string]int{}
	for name, r := range raw.Resources {
		switch r.Type {
		case TypeThing, TypeCertificate, TypePolicy:
			counts[r.Type]++
		default:
			return nil, fmt.Errorf("template body: Resources.%s: Type %q not supported", name, r.Type)
		}
	}
	if counts[TypeThing] != 1 || counts[TypeCertificate] != 1 {
		return nil, fmt.Errorf("template body: need exactly one %s and one %s resource", TypeThing, TypeCertificate)
	}
	for name, p := range raw.Parameters {
		switch p.Type {
		case "String", "Number", "List<String>", "CommaDelimitedList":
		default:
			return nil, fmt.Errorf("template body: Parameters.%s: Type %q not supported", name, p.Type)
		}
	}
	return &Template{Parameters: raw.Parameters, Resources: raw.Resources, DeviceConfiguration: raw.DeviceConfiguration}, nil
}

// ResolveParameters merges the device's parameters with the declared
// defaults; every declared parameter must end up with a value.
func (t *Template) ResolveParameters(given map[string]string) (map[string]string, error) {
	out := map[string]string{}
	var missing []string
	for name, p := range t.Parameters {
		if v, ok := given[name]; ok {
			out[name] = v
			continue
		}
		if p.Default != nil {
			out[name] = scalarString(p.Default)
			continue
		}
		missing = append(missing, name)
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("missing template parameters: %s", strings.Join(missing, ", "))
	}
	return out, nil
}

// Eval resolves intrinsic functions (Ref, Fn::Join, Fn::Split,
// Fn::Select) in v against params.
func Eval(v any, params map[string]string) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 1 {
			for k, arg := range x {
				switch k {
				case "Ref":
					name, ok := arg.(string)
					if !ok {
						return nil, fmt.Errorf("Ref: argument must be a string")
					}
					val, ok := params[name]
					if !ok {
						return nil, fmt.Errorf("Ref: unknown parameter %q", name)
					}
					return val, nil
				case "Fn::Join":
					return evalJoin(arg, params)
				case "Fn::Split":
					return evalSplit(arg, params)
				case "Fn::Select":
					return evalSelect(arg, params)
				}
				if strings.HasPrefix(k, "Fn::") {
					return nil, fmt.Errorf("intrinsic function %s not supported", k)
				}
			}
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			r, err := Eval(e, params)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = r
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			r, err := Eval(e, params)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			out[i] = r
		}
		return out, nil
	default:
		return v, nil
	}
}

func evalJoin(arg any, params map[string]string) (any, error) {
	a, ok := arg.([]any)
	if !ok || len(a) != 2 {
		return nil, fmt.Errorf("Fn::Join: want [delimiter, [values...]]")
	}
	delim, ok := a[0].(string)
	if !ok {
		return nil, fmt.Errorf("Fn::Join: delimiter must be a string")
	}
	listV, err := Eval(a[1], params)
	if err != nil {
		return nil, fmt.Errorf("Fn::Join: %w", err)
	}
	list, ok := listV.([]any)
	if !ok {
		return nil, fmt.Errorf("Fn::Join: second argument must be a list")
	}
	parts := make([]string, len(list))
	for i, e := range list {
		s, ok := scalar(e)
		if !ok {
			return nil, fmt.Errorf("Fn::Join: element %d is not a string", i)
		}
		parts[i] = s
	}
	return strings.Join(parts, delim), nil
}

func evalSplit(arg any, params map[string]string) (any, error) {
	a, ok := arg.([]any)
	if !ok || len(a) != 2 {
		return nil, fmt.Errorf("Fn::Split: want [delimiter, string]")
	}
	delim, ok := a[0].(string)
	if !ok || delim == "" {
		return nil, fmt.Errorf("Fn::Split: delimiter must be a non-empty string")
	}
	sv, err := Eval(a[1], params)
	if err != nil {
		return nil, fmt.Errorf("Fn::Split: %w", err)
	}
	s, ok := scalar(sv)
	if !ok {
		return nil, fmt.Errorf("Fn::Split: second argument must be a string")
	}
	var out []any
	for _, p := range strings.Split(s, delim) {
		out = append(out, p)
	}
	return out, nil
}

func evalSelect(arg any, params map[string]string) (any, error) {
	a, ok := arg.([]any)
	if !ok || len(a) != 2 {
		return nil, fmt.Errorf("Fn::Select: want [index, list]")
	}
	is, ok := scalar(a[0])
	if !ok {
		return nil, fmt.Errorf("Fn::Select: index must be a number")
	}
	idx, err := strconv.Atoi(is)
	if err != nil {
		return nil, fmt.Errorf("Fn::Select: index %q: %w", is, err)
	}
	lv, err := Eval(a[1], params)
	if err != nil {
		return nil, fmt.Errorf("Fn::Select: %w", err)
	}
	list, ok := lv.([]any)
	if !ok {
		return nil, fmt.Errorf("Fn::Select: second argument must be a list")
	}
	if idx < 0 || idx >= len(list) {
		return nil, fmt.Errorf("Fn::Select: index %d out of range (%d elements)", idx, len(list))
	}
	return list[idx], nil
}

func scalar(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	}
	return "", false
}

func scalarString(v any) string {
	if s, ok := scalar(v); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// evalString evaluates v and requires a string result.
func evalString(v any, params map[string]string, field string) (string, error) {
	r, err := Eval(v, params)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	s, ok := scalar(r)
	if !ok {
		return "", fmt.Errorf("%s: must evaluate to a string", field)
	}
	return s, nil
}

// evalStringMap evaluates v and requires a map of strings.
func evalStringMap(v any, params map[string]string, field string) (map[string]string, error) {
	if v == nil {
		return nil, nil
	}
	r, err := Eval(v, params)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	m, ok := r.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: must be an object", field)
	}
	out := make(map[string]string, len(m))
	for k, e := range m {
		s, ok := scalar(e)
		if !ok {
			return nil, fmt.Errorf("%s.%s: must evaluate to a string", field, k)
		}
		out[k] = s
	}
	return out, nil
}

// evalStringList evaluates v and requires a list of strings.
func evalStringList(v any, params map[string]string, field string) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	r, err := Eval(v, params)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	l, ok := r.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: must be a list", field)
	}
	out := make([]string, len(l))
	for i, e := range l {
		s, ok := scalar(e)
		if !ok {
			return nil, fmt.Errorf("%s[%d]: must evaluate to a string", field, i)
		}
		out[i] = s
	}
	return out, nil
}
