package ota

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"unicode"
)

// Operation is the old-schema job document operation this package runs.
const Operation = "mender_install"

// presignPlaceholder starts the AWS IoT Jobs placeholder that the service
// replaces with a presigned S3 URL when the job has a presign role
// (presignPlaceholderV2 is the same with AWS's v2 signer).
const (
	presignPlaceholder   = "${aws:iot:s3-presigned-url:"
	presignPlaceholderV2 = "${aws:iot:s3-presigned-url-v2:"
)

// Document is a validated mender_install job document.
type Document struct {
	// URL of the mender artifact (usually an S3 presigned URL that AWS IoT
	// Jobs substituted for the ${aws:iot:s3-presigned-url:...} placeholder).
	URL string `json:"url"`
	// SHA256 is the optional SHA-256 of the artifact file (64 lower-case
	// hex digits). When set, the agent downloads the artifact, checks it
	// and hands mender the checked local file.
	SHA256 string `json:"sha256,omitempty"`
}

// Policy is what a document's URL must satisfy on this device.
type Policy struct {
	// AllowHTTP accepts http:// URLs (local demos and tests only).
	AllowHTTP bool
	// AllowedHosts are the hosts an artifact may come from (ota.allowedHosts):
	// "host" or "host:port" matches the URL's host exactly (case
	// insensitive); "host/bucket" (path-style S3) also requires the path
	// to start with /bucket/. Empty rejects every URL.
	AllowedHosts []string
	// Template accepts an unsubstituted ${aws:iot:s3-presigned-url:URL}
	// placeholder and checks the URL inside it (fleet-agent check-job
	// checks the document an operator is about to send). On a device the
	// placeholder is always an error: AWS IoT Jobs substitutes it.
	Template bool

	// anyHost skips the host check (DocumentFromMap checks only the
	// document's form; Validate with the device's policy follows).
	anyHost bool
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

// ParseDocument parses and checks the form of an old-schema job document
// `{"operation": "mender_install", "url": "https://...", "sha256": "..."}`.
// Every failure is a *RejectError naming the field. The URL's host is
// checked by Validate against the device's Policy.
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

// DocumentFromMap checks the form of a decoded job document (the
// jobDocument object of a job execution): operation, url (an https URL,
// or http, which Validate refuses unless the policy allows it) and the
// optional sha256.
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
	if h, ok := m["sha256"]; ok {
		hs, ok := h.(string)
		if !ok {
			return Document{}, &RejectError{Field: "sha256", Reason: fmt.Sprintf("must be a string of 64 hex digits, got %s", jsonKind(h))}
		}
		if hs == "" {
			return Document{}, &RejectError{Field: "sha256", Reason: "is empty (omit it, or give the artifact's SHA-256 as 64 hex digits)"}
		}
		d.SHA256 = hs
	}
	if err := d.Validate(Policy{AllowHTTP: true, anyHost: true}); err != nil {
		return Document{}, err
	}
	return d, nil
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidSHA256 checks the sha256 field's value: exactly 64 hex digits
// (upper-case digits are accepted and mean the same).
func ValidSHA256(s string) error {
	if !sha256RE.MatchString(strings.ToLower(s)) {
		return &RejectError{Field: "sha256", Reason: fmt.Sprintf("must be the artifact's SHA-256 as 64 hex digits, got %d characters %q", len(s), truncate(s, 80))}
	}
	return nil
}

// Validate checks the document against the device's policy: sha256 (if
// present) is 64 hex digits; the URL is absolute https (http only with
// AllowHTTP), has no whitespace, control characters, user info or percent
// escapes in its host, and its host is one of AllowedHosts; an
// unsubstituted presigned-URL placeholder is refused (unless Template).
func (d Document) Validate(p Policy) error {
	if d.SHA256 != "" {
		if err := ValidSHA256(d.SHA256); err != nil {
			return err
		}
	}
	s := d.URL
	if strings.TrimSpace(s) == "" {
		return &RejectError{Field: "url", Reason: "empty"}
	}
	if inner, ok := placeholderURL(s); ok {
		if !p.Template {
			return &RejectError{Field: "url", Reason: "the ${aws:iot:s3-presigned-url:...} placeholder was not substituted: create the job with --presigned-url-config (roleArn, expiresInSec)"}
		}
		// AWS IoT Jobs signs the URL inside the placeholder: that URL's
		// host is the one the device will see.
		s = inner
	} else if strings.Contains(s, "${aws:iot:") {
		return &RejectError{Field: "url", Reason: "malformed ${aws:iot:...} placeholder: want the whole url to be ${aws:iot:s3-presigned-url:https://HOST/KEY}"}
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
		if !p.AllowHTTP {
			return &RejectError{Field: "url", Reason: "scheme http is not allowed (https required)"}
		}
	default:
		return &RejectError{Field: "url", Reason: fmt.Sprintf("scheme %q is not allowed (https required)", pu.Scheme)}
	}
	if pu.Opaque != "" {
		return &RejectError{Field: "url", Reason: "not a hierarchical URL (want scheme://host/path)"}
	}
	if pu.User != nil {
		return &RejectError{Field: "url", Reason: "must not carry user info (user@ before the host): the host is what follows the @"}
	}
	if pu.Host == "" {
		return &RejectError{Field: "url", Reason: "no host"}
	}
	if p.anyHost {
		return nil
	}
	return checkHost(s, pu, p.AllowedHosts)
}

// placeholderURL returns the URL inside a whole-value presigned-URL
// placeholder.
func placeholderURL(s string) (string, bool) {
	for _, prefix := range []string{presignPlaceholder, presignPlaceholderV2} {
		if inner, ok := strings.CutPrefix(s, prefix); ok {
			if inner, ok := strings.CutSuffix(inner, "}"); ok && !strings.ContainsAny(inner, "{}$") {
				return inner, true
			}
		}
	}
	return "", false
}

// checkHost matches the URL's authority against the allowed hosts.
func checkHost(raw string, pu *url.URL, allowed []string) error {
	host := pu.Host // host[:port] as written, percent escapes decoded
	// The authority as sent on the wire must be plain: no escapes, no
	// non-ASCII (IDN must not be told apart from its look-alike here).
	for _, r := range host {
		if r > unicode.MaxASCII {
			return &RejectError{Field: "url", Reason: fmt.Sprintf("host %q is not ASCII (internationalized host names are not accepted; the artifacts bucket host is ASCII)", host)}
		}
	}
	if strings.ContainsAny(rawAuthority(raw), "%\\") {
		return &RejectError{Field: "url", Reason: "percent escapes or backslashes in the host are not accepted"}
	}
	lh := strings.ToLower(host)
	if strings.HasSuffix(pu.Hostname(), ".") {
		return &RejectError{Field: "url", Reason: fmt.Sprintf("host %q ends with a dot", host)}
	}
	for _, a := range allowed {
		ah, bucket, pathStyle := strings.Cut(strings.ToLower(a), "/")
		if ah != lh {
			continue
		}
		if !pathStyle {
			return nil
		}
		if err := checkBucketPath(pu, bucket); err != nil {
			return err
		}
		return nil
	}
	if len(allowed) == 0 {
		return &RejectError{Field: "url", Reason: fmt.Sprintf("host %q is not allowed: this device allows no artifact host (set ota.allowedHosts to the artifacts bucket host)", host)}
	}
	return &RejectError{Field: "url", Reason: fmt.Sprintf("host %q is not allowed (ota.allowedHosts: %s)", host, strings.Join(allowed, ", "))}
}

// rawAuthority returns the authority of raw as written: what follows
// "scheme://" up to the first "/", "?" or "#".
func rawAuthority(raw string) string {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return ""
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// checkBucketPath requires a path-style S3 URL's path to be in bucket:
// /bucket/key, without dot segments that a server could resolve to
// another bucket.
func checkBucketPath(pu *url.URL, bucket string) error {
	rest, ok := strings.CutPrefix(pu.EscapedPath(), "/"+bucket+"/")
	if !ok || rest == "" {
		return &RejectError{Field: "url", Reason: fmt.Sprintf("path %q is not in the allowed bucket %q of host %q", pu.EscapedPath(), bucket, pu.Host)}
	}
	for _, seg := range strings.Split(pu.Path, "/") {
		if seg == "." || seg == ".." {
			return &RejectError{Field: "url", Reason: "dot segments (. or ..) in the path are not accepted"}
		}
	}
	if strings.Contains(strings.ToLower(rest), "%2e") || strings.Contains(strings.ToLower(rest), "%2f") {
		return &RejectError{Field: "url", Reason: "escaped dots or slashes in the path are not accepted"}
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

var (
	reHostLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	reBucket    = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	// reSharedS3 matches S3 endpoints shared by every bucket (path-style
	// hosts): allowing one without a bucket would allow any bucket.
	reSharedS3 = regexp.MustCompile(`^s3([.-][a-z0-9-]+)*\.amazonaws\.com(\.cn)?$`)
)

// ValidateAllowedHost checks one ota.allowedHosts entry: a lower-case
// ASCII host name or IPv4 address, an optional :port, and for the
// path-style S3 endpoints (s3.amazonaws.com, s3.REGION.amazonaws.com) a
// required /bucket.
func ValidateAllowedHost(entry string) error {
	hostPort, bucket, pathStyle := strings.Cut(entry, "/")
	host, port := hostPort, ""
	if i := strings.LastIndexByte(hostPort, ':'); i >= 0 {
		host, port = hostPort[:i], hostPort[i+1:]
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return fmt.Errorf("%q: port %q is not a number from 1 to 65535", entry, port)
		}
	}
	if host == "" {
		return fmt.Errorf("%q: no host", entry)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Is4() {
			return fmt.Errorf("%q: only IPv4 addresses are accepted as hosts", entry)
		}
	} else {
		if host != strings.ToLower(host) {
			return fmt.Errorf("%q: write the host in lower case", entry)
		}
		for _, l := range strings.Split(host, ".") {
			if !reHostLabel.MatchString(l) {
				return fmt.Errorf("%q: %q is not a host name label (letters, digits and '-'; no wildcards, no trailing dot, ASCII only)", entry, l)
			}
		}
	}
	if pathStyle {
		if !reBucket.MatchString(bucket) {
			return fmt.Errorf("%q: %q after the host is not an S3 bucket name", entry, bucket)
		}
	} else if reSharedS3.MatchString(host) {
		return fmt.Errorf("%q is shared by every S3 bucket: name the bucket (%s/BUCKET) or use the bucket's own host (BUCKET.%s)", entry, host, host)
	}
	return nil
}
