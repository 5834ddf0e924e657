package ota

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"
)

// Operation is the old-schema job document operation this package runs.
const Operation = "mender_install"

// presignPlaceholder starts the AWS IoT Jobs placeholder that the service
// replaces with a presigned S3 URL when the job has a presign role.
const presignPlaceholder = "${aws:iot:s3-presigned-url:"

// Document is a validated mender_install job document.
type Document struct {
	// URL of the mender artifact (usually an S3 presigned URL that AWS IoT
	// Jobs substituted for the ${aws:iot:s3-presigned-url:...} placeholder).
	URL string `json:"url"`
}

// RejectError says a job cannot be run as sent: the job execution must be
// set to REJECTED with Reason (never left QUEUED). Field names the document
// field at fault.
type RejectError struct {
	Field  string
	Reason string
}

func (e *RejectError) Error() string {
	if e.Field == "" {
		return "job document rejected: " + e.Reason
	}
	return fmt.Sprintf("job document rejected: field %q: %s", e.Field, e.Reason)
}

// IsReject reports whether err (or an error it wraps) is a *RejectError and
// returns it.
func IsReject(err error) (*RejectError, bool) {
	var re *RejectError
	if errors.As(err, &re) {
		return re, true
	}
	return nil, false
}

// ParseDocument parses and validates an old-schema job document
// `{"operation": "mender_install", "url": "https://..."}`. Every failure is
// a *RejectError naming the field.
func ParseDocument(raw []byte) (Document, error) {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return Document{}, &RejectError{Reason: "job document is not a JSON object: " + err.Error()}
	}
	if m == nil {
		return Document{}, &RejectError{Reason: "job document is not a JSON object"}
	}
	return DocumentFromMap(m)
}

// DocumentFromMap validates a decoded job document (the jobDocument object
// of a job execution).
func DocumentFromMap(m map[string]any) (Document, error) {
	op, ok := m["operation"]
	if !ok {
		return Document{}, &RejectError{Field: "operation", Reason: "missing (want \"" + Operation + "\")"}
	}
	opStr, ok := op.(string)
	if !ok {
		return Document{}, &RejectError{Field: "operation", Reason: fmt.Sprintf("must be a string, got %s", jsonKind(op))}
	}
	if opStr != Operation {
		return Document{}, &RejectError{Field: "operation", Reason: fmt.Sprintf("%q is not %q", opStr, Operation)}
	}
	u, ok := m["url"]
	if !ok {
		return Document{}, &RejectError{Field: "url", Reason: "missing: the job document must carry the artifact URL"}
	}
	uStr, ok := u.(string)
	if !ok {
		return Document{}, &RejectError{Field: "url", Reason: fmt.Sprintf("must be a string, got %s", jsonKind(u))}
	}
	d := Document{URL: uStr}
	if err := d.Validate(true); err != nil {
		return Document{}, err
	}
	return d, nil
}

// Validate checks the artifact URL: absolute https (http only when
// allowHTTP), with a host, no whitespace or control characters, and no
// unsubstituted presigned-URL placeholder.
func (d Document) Validate(allowHTTP bool) error {
	s := d.URL
	if strings.TrimSpace(s) == "" {
		return &RejectError{Field: "url", Reason: "empty"}
	}
	if strings.Contains(s, presignPlaceholder) {
		return &RejectError{Field: "url", Reason: "the ${aws:iot:s3-presigned-url:...} placeholder was not substituted: create the job with --presigned-url-config (roleArn, expiresInSec)"}
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return &RejectError{Field: "url", Reason: "contains whitespace or control characters"}
		}
	}
	pu, err := url.Parse(s)
	if err != nil {
		return &RejectError{Field: "url", Reason: "not a valid URL: " + redactURLError(err)}
	}
	switch pu.Scheme {
	case "https":
	case "http":
		if !allowHTTP {
			return &RejectError{Field: "url", Reason: "scheme http is not allowed (https required)"}
		}
	default:
		return &RejectError{Field: "url", Reason: fmt.Sprintf("scheme %q is not allowed (https required)", pu.Scheme)}
	}
	if pu.Host == "" {
		return &RejectError{Field: "url", Reason: "no host"}
	}
	return nil
}

// redactURLError keeps a url.Error's operation and cause but not the URL
// itself (a presigned URL is a bearer credential until it expires).
func redactURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + ": " + ue.Err.Error()
	}
	return err.Error()
}

// RedactURL returns s with the query string and user info of u removed, for
// logs: a presigned URL's query is its signature.
func RedactURL(u string) string {
	pu, err := url.Parse(u)
	if err != nil {
		return "<invalid url>"
	}
	pu.User = nil
	if pu.RawQuery != "" {
		pu.RawQuery = "REDACTED"
	}
	pu.Fragment = ""
	return pu.String()
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	case string:
		return "a string"
	default:
		return fmt.Sprintf("%T", v)
	}
}
