package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// decodeFile decodes data (one JSON object) over cfg and records every
// problem in errs: a syntax error or trailing data (alone: nothing else
// can be trusted then), and otherwise each type error, unknown key,
// case-mismatched key, repeated key and bad duration with its JSON path.
// A field with a problem keeps its default.
func decodeFile(data []byte, cfg *Config, errs *Errors) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			return fmt.Errorf("config: invalid JSON at line %d: %v", line, err)
		}
		if errors.Is(err, io.EOF) {
			return errors.New("config: the file is empty (it must hold one JSON object)")
		}
		return fmt.Errorf("config: invalid JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("config: trailing data after the JSON object")
	}
	decodeValue(raw, reflect.ValueOf(cfg).Elem(), "", errs)
	return nil
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// decodeValue decodes raw (valid JSON) into v, a settable value whose
// JSON path is path. Objects and lists are walked so that each problem is
// named by its own path; other values are decoded by encoding/json, with
// its rules (null leaves the value as it is, except for a duration).
func decodeValue(raw json.RawMessage, v reflect.Value, path string, errs *Errors) {
	kind := jsonKind(raw)
	t := v.Type()
	switch {
	case reflect.PointerTo(t).Implements(unmarshalerType):
		if err := v.Addr().Interface().(json.Unmarshaler).UnmarshalJSON(raw); err != nil {
			errs.Add(path, "%v", err)
		}
	case t.Kind() == reflect.Struct && kind == "null", t.Kind() == reflect.Slice && kind == "null":
		if t.Kind() == reflect.Slice {
			v.SetZero()
		}
	case t.Kind() == reflect.Struct:
		if kind != "object" {
			errs.Add(path, "must be an object, not a JSON %s", kind)
			return
		}
		decodeObject(raw, v, path, errs)
	case t.Kind() == reflect.Slice:
		if kind != "array" {
			errs.Add(path, "must be a list, not a JSON %s", kind)
			return
		}
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			errs.Add(path, "%v", err)
			return
		}
		s := reflect.MakeSlice(t, len(items), len(items))
		for i, item := range items {
			decodeValue(item, s.Index(i), index(path, i), errs)
		}
		v.Set(s)
	default:
		n := reflect.New(t)
		n.Elem().Set(v)
		if err := json.Unmarshal(raw, n.Interface()); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				errs.Add(path, "must be a %s, not a JSON %s", jsonType(t.Kind()), te.Value)
			} else {
				errs.Add(path, "%v", err)
			}
			return
		}
		v.Set(n.Elem())
	}
}

// decodeObject decodes the JSON object raw into the struct v key by key,
// in file order. It rejects what encoding/json accepts silently but a
// reader of the file would misread: a key given twice in one object (the
// last one wins, so "enabled": false above "enabled": true does nothing)
// and a key that names a field only when case is ignored ("Enabled").
func decodeObject(raw json.RawMessage, v reflect.Value, path string, errs *Errors) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // '{'
		errs.Add(path, "%v", err)
		return
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			errs.Add(path, "%v", err)
			return
		}
		key, _ := tok.(string)
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			errs.Add(path, "%v", err)
			return
		}
		field := join(path, key)
		if seen[key] {
			errs.Add(field, "appears more than once in the same object (only the last one would count)")
			continue
		}
		seen[key] = true
		i, name, ok := fieldByTag(v.Type(), key)
		switch {
		case !ok:
			errs.Add(field, "unknown field%s", suggest(v.Type(), key))
		case name != key:
			errs.Add(field, "unknown field (keys are case-sensitive: did you mean %q?)", name)
		default:
			decodeValue(value, v.Field(i), field, errs)
		}
	}
}

// fieldByTag finds the field of t whose JSON name is key, ignoring case;
// name is that field's exact JSON name.
func fieldByTag(t reflect.Type, key string) (i int, name string, ok bool) {
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" && strings.EqualFold(name, key) {
			return i, name, true
		}
	}
	return 0, "", false
}

// suggest names the field of t that key is one typo away from, if any.
func suggest(t reflect.Type, key string) string {
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" && oneEditApart(strings.ToLower(name), strings.ToLower(key)) {
			return fmt.Sprintf(" (did you mean %q?)", name)
		}
	}
	return ""
}

// oneEditApart reports whether a and b differ by one inserted, deleted,
// replaced or two swapped adjacent bytes.
func oneEditApart(a, b string) bool {
	if len(a) < len(b) {
		a, b = b, a
	}
	if len(a)-len(b) > 1 || a == b {
		return false
	}
	i := 0
	for i < len(b) && a[i] == b[i] {
		i++
	}
	if len(a) != len(b) {
		return a[i+1:] == b[i:]
	}
	if a[i+1:] == b[i+1:] {
		return true
	}
	return i+1 < len(a) && a[i] == b[i+1] && a[i+1] == b[i] && a[i+2:] == b[i+2:]
}

// jsonKind names the kind of the JSON value raw (valid JSON).
func jsonKind(raw json.RawMessage) string {
	b := bytes.TrimLeft(raw, " \t\r\n")
	if len(b) == 0 {
		return "value"
	}
	switch b[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// jsonType names the JSON type a Go kind is written as.
func jsonType(k reflect.Kind) string {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice, reflect.Array:
		return "list"
	case reflect.Struct, reflect.Map:
		return "object"
	}
	return k.String()
}
