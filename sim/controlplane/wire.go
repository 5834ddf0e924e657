package controlplane

import (
	"encoding/json"
	"reflect"
	"time"
	"unicode"
	"unicode/utf8"
)

var timeType = reflect.TypeFor[time.Time]()

// wire converts an aws-sdk-go-v2 iot output or types value into the value
// AWS IoT's REST-JSON protocol sends: member names in lowerCamelCase (the
// SDK's Go names with the first letter lowered), timestamps in epoch
// seconds, nil members omitted (nil lists sent empty), and the SDK's ResultMetadata left out.
func wire(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return wire(v.Elem())
	case reflect.Struct:
		if v.Type() == timeType {
			t := v.Interface().(time.Time)
			return json.Number(formatEpoch(t))
		}
		out := map[string]any{}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() || f.Name == "ResultMetadata" {
				continue
			}
			fv := v.Field(i)
			if fv.Kind() == reflect.Slice && fv.IsNil() {
				out[lowerFirst(f.Name)] = []any{} // an empty list, as AWS sends it
				continue
			}
			if (fv.Kind() == reflect.Pointer || fv.Kind() == reflect.Map || fv.Kind() == reflect.Interface) && fv.IsNil() {
				continue
			}
			if fv.Kind() == reflect.String && fv.Len() == 0 {
				continue // unset enum
			}
			out[lowerFirst(f.Name)] = wire(fv)
		}
		return out
	case reflect.Slice:
		out := make([]any, v.Len())
		for i := range v.Len() {
			out[i] = wire(v.Index(i))
		}
		return out
	case reflect.Map:
		out := make(map[string]any, v.Len())
		iter := v.MapRange()
		for iter.Next() {
			out[iter.Key().String()] = wire(iter.Value())
		}
		return out
	case reflect.String:
		return v.String()
	}
	return v.Interface()
}

// formatEpoch formats t as epoch seconds with millisecond precision.
func formatEpoch(t time.Time) string {
	ms := t.UnixMilli()
	b, _ := json.Marshal(float64(ms) / 1000)
	return string(b)
}

func lowerFirst(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToLower(r)) + s[n:]
}
