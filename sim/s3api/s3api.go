// Package s3api is the local IoT Core's small S3: a few buckets held in
// memory, served path-style (PUT, GET and HEAD /BUCKET/KEY, S3's XML
// errors) so the real aws-sdk-go-v2 s3 client (UsePathStyle) and the AWS
// CLI upload and download against the local endpoint, plus time-limited
// presigned GET URLs for the Jobs presignedUrlConfig placeholders.
//
// Handler is the operator's S3 on the local AWS endpoint: requests may be
// SigV4-signed with any credentials (accepted, not checked), as everything
// on that loopback endpoint. PresignedHandler is what devices reach: it
// serves nothing but GETs of URLs this store presigned that have not
// expired (the method is part of the signature), so a device only fetches
// what a job gave it, and reaches no other API.
package s3api

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxObjectBytes bounds an object (a mender artifact of a small image).
const MaxObjectBytes = 1 << 30

// Errors of the store.
var (
	ErrNoSuchBucket = errors.New("no such bucket")
	ErrNoSuchKey    = errors.New("no such key")
	ErrInvalidURL   = errors.New("not an S3 URL")
)

// Object is a stored object.
type Object struct {
	Data         []byte
	ContentType  string
	Metadata     map[string]string
	ETag         string
	LastModified time.Time
}

// PutHook runs after an object is stored in its bucket (e.g. the S3
// notification that invokes the allowlist sync). Its error is logged; the
// object stays stored, as in S3.
type PutHook func(ctx context.Context, bucket, key string, obj Object) error

// Options configure a Store.
type Options struct {
	// Buckets are the bucket names served.
	Buckets []string
	// BaseURL returns the endpoint URL presigned URLs point at (e.g.
	// http://127.0.0.1:PORT).
	BaseURL func() string
	Now     func() time.Time
	Logger  *slog.Logger
}

// Store holds the buckets.
type Store struct {
	opts  Options
	log   *slog.Logger
	key   []byte // signs presigned URLs
	mu    sync.Mutex
	data  map[string]map[string]Object
	hooks map[string]PutHook
}

// New returns a Store serving opts.Buckets.
func New(opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BaseURL == nil {
		return nil, errors.New("s3api: BaseURL is required")
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("s3api: signing key: %w", err)
	}
	s := &Store{opts: opts, log: opts.Logger.With("component", "s3"), key: key, data: map[string]map[string]Object{}, hooks: map[string]PutHook{}}
	for _, b := range opts.Buckets {
		s.data[b] = map[string]Object{}
	}
	return s, nil
}

// OnPut sets the hook of bucket.
func (s *Store) OnPut(bucket string, h PutHook) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks[bucket] = h
}

// Buckets lists the bucket names served.
func (s *Store) Buckets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.data))
}

// Put stores a copy of data as an object and runs the bucket's hook.
func (s *Store) Put(ctx context.Context, bucket, key string, data []byte, contentType string, metadata map[string]string) (Object, error) {
	return s.put(ctx, bucket, key, bytes.Clone(data), contentType, metadata)
}

// PutQuiet stores a copy of data as an object without running the
// bucket's hook: for a caller that notifies itself and wants the result
// (the local stack's allowlist deploy).
func (s *Store) PutQuiet(bucket, key string, data []byte, contentType string, metadata map[string]string) (Object, error) {
	return s.store(bucket, key, bytes.Clone(data), contentType, metadata)
}

// put stores data (owned by the store from now on) and runs the hook.
func (s *Store) put(ctx context.Context, bucket, key string, data []byte, contentType string, metadata map[string]string) (Object, error) {
	obj, err := s.store(bucket, key, data, contentType, metadata)
	if err != nil {
		return obj, err
	}
	s.mu.Lock()
	hook := s.hooks[bucket]
	s.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, bucket, key, obj); err != nil {
			s.log.Error("object notification failed", "bucket", bucket, "key", key, "error", err)
		}
	}
	return obj, nil
}

func (s *Store) store(bucket, key string, data []byte, contentType string, metadata map[string]string) (Object, error) {
	if key == "" {
		return Object{}, fmt.Errorf("put s3://%s/: empty key", bucket)
	}
	sum := md5.Sum(data)
	obj := Object{Data: data, ContentType: contentType, Metadata: maps.Clone(metadata),
		ETag: `"` + hex.EncodeToString(sum[:]) + `"`, LastModified: s.opts.Now().UTC().Truncate(time.Second)}
	s.mu.Lock()
	objs, ok := s.data[bucket]
	if !ok {
		s.mu.Unlock()
		return Object{}, fmt.Errorf("put s3://%s/%s: %w", bucket, key, ErrNoSuchBucket)
	}
	objs[key] = obj
	s.mu.Unlock()
	s.log.Info("object stored", "bucket", bucket, "key", key, "bytes", len(data))
	return obj, nil
}

// Get returns an object.
func (s *Store) Get(bucket, key string) (Object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	objs, ok := s.data[bucket]
	if !ok {
		return Object{}, fmt.Errorf("s3://%s/%s: %w", bucket, key, ErrNoSuchBucket)
	}
	obj, ok := objs[key]
	if !ok {
		return Object{}, fmt.Errorf("s3://%s/%s: %w", bucket, key, ErrNoSuchKey)
	}
	return obj, nil
}

// ParseURL returns the bucket and key of an S3 object URL as AWS IoT Jobs
// accepts them (documentSource, presigned-URL placeholders): path-style
// https://s3[.REGION].amazonaws.com/BUCKET/KEY, virtual-hosted
// https://BUCKET.s3[.REGION].amazonaws.com/KEY, or s3://BUCKET/KEY.
func ParseURL(raw string) (bucket, key string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("%w: %q: %v", ErrInvalidURL, raw, err)
	}
	path := strings.TrimPrefix(u.Path, "/")
	host := strings.ToLower(u.Hostname())
	switch {
	case u.Scheme == "s3":
		bucket, key = u.Host, path
	case u.Scheme == "https" && isS3Host(host):
		bucket, key, _ = strings.Cut(path, "/")
	case u.Scheme == "https" && (strings.Contains(host, ".s3.") || strings.Contains(host, ".s3-")):
		b, rest, _ := strings.Cut(host, ".s3")
		if !isS3Host("s3" + rest) {
			return "", "", fmt.Errorf("%w: %q (want https://s3.REGION.amazonaws.com/BUCKET/KEY)", ErrInvalidURL, raw)
		}
		bucket, key = b, path
	default:
		return "", "", fmt.Errorf("%w: %q (want https://s3.REGION.amazonaws.com/BUCKET/KEY)", ErrInvalidURL, raw)
	}
	if bucket == "" || key == "" {
		return "", "", fmt.Errorf("%w: %q names no bucket and key", ErrInvalidURL, raw)
	}
	return bucket, key, nil
}

func isS3Host(h string) bool {
	if h == "s3.amazonaws.com" {
		return true
	}
	rest, ok := strings.CutPrefix(h, "s3.")
	if !ok {
		rest, ok = strings.CutPrefix(h, "s3-")
	}
	return ok && strings.HasSuffix(rest, ".amazonaws.com") && !strings.Contains(strings.TrimSuffix(rest, ".amazonaws.com"), ".")
}

// ReadURL returns the object an S3 URL names (ParseURL).
func (s *Store) ReadURL(_ context.Context, raw string) ([]byte, error) {
	bucket, key, err := ParseURL(raw)
	if err != nil {
		return nil, err
	}
	obj, err := s.Get(bucket, key)
	if err != nil {
		return nil, err
	}
	return obj.Data, nil
}

// Presign returns a URL on this store's endpoint that GETs the object an
// S3 URL names for expires. The bucket must be served; the object need not
// exist yet (as with S3, fetching a missing one is a 404).
func (s *Store) Presign(raw string, expires time.Duration) (string, error) {
	bucket, key, err := ParseURL(raw)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	_, ok := s.data[bucket]
	s.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("%s: bucket %s is not served by the local IoT Core (buckets: %s): %w", raw, bucket, strings.Join(s.Buckets(), ", "), ErrNoSuchBucket)
	}
	date := s.opts.Now().UTC().Format(amzDate)
	secs := strconv.FormatInt(int64(expires/time.Second), 10)
	q := url.Values{"X-Amz-Date": {date}, "X-Amz-Expires": {secs}, "X-Amz-Signature": {s.sign(bucket, key, date, secs)}}
	return strings.TrimSuffix(s.opts.BaseURL(), "/") + "/" + bucket + "/" + escapeKey(key) + "?" + q.Encode(), nil
}

const amzDate = "20060102T150405Z"

// sign is the signature of a presigned GET (independent of the host the
// URL is reached by, so forwarded ports work too).
func (s *Store) sign(bucket, key, date, expires string) string {
	m := hmac.New(sha256.New, s.key)
	fmt.Fprintf(m, "GET\n%s\n%s\n%s\n%s", bucket, key, date, expires)
	return hex.EncodeToString(m.Sum(nil))
}

// checkPresigned reports why a presigned GET is refused ("" if valid).
func (s *Store) checkPresigned(q url.Values, bucket, key string) string {
	date, secs, sig := q.Get("X-Amz-Date"), q.Get("X-Amz-Expires"), q.Get("X-Amz-Signature")
	want := s.sign(bucket, key, date, secs)
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return "The request signature does not match a URL the local IoT Core presigned."
	}
	t, err := time.Parse(amzDate, date)
	n, err2 := strconv.ParseInt(secs, 10, 64)
	if err != nil || err2 != nil {
		return "X-Amz-Date or X-Amz-Expires is malformed."
	}
	if s.opts.Now().After(t.Add(time.Duration(n) * time.Second)) {
		return "Request has expired"
	}
	return ""
}

func escapeKey(key string) string {
	parts := strings.Split(key, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// Handler serves the store path-style.
func (s *Store) Handler() http.Handler { return http.HandlerFunc(s.serve) }

// Owns reports whether path names a bucket of the store (/BUCKET or
// /BUCKET/KEY).
func (s *Store) Owns(path string) bool {
	bucket, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.data[bucket]
	return ok
}

type s3Error struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	Resource  string   `xml:"Resource,omitempty"`
	RequestID string   `xml:"RequestId"`
}

func (s *Store) fail(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	s.log.Info("s3 request failed", "method", r.Method, "path", r.URL.Path, "code", code, "message", msg)
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return // HEAD answers carry no body
	}
	b, _ := xml.Marshal(s3Error{Code: code, Message: msg, Resource: r.URL.Path, RequestID: "local"})
	_, _ = w.Write(append([]byte(xml.Header), b...))
}

func signed(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") || r.URL.Query().Has("X-Amz-Credential")
}

func (s *Store) serve(w http.ResponseWriter, r *http.Request) {
	bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	s.mu.Lock()
	_, ok := s.data[bucket]
	s.mu.Unlock()
	if !ok {
		s.fail(w, r, http.StatusNotFound, "NoSuchBucket", fmt.Sprintf("The specified bucket does not exist (the local IoT Core serves %s)", strings.Join(s.Buckets(), ", ")))
		return
	}
	if key == "" {
		s.fail(w, r, http.StatusNotImplemented, "NotImplemented", fmt.Sprintf("the local S3 serves PutObject, GetObject and HeadObject only (%s %s)", r.Method, r.URL.Path))
		return
	}
	switch r.Method {
	case http.MethodPut:
		if r.Header.Get("X-Amz-Copy-Source") != "" {
			s.fail(w, r, http.StatusNotImplemented, "NotImplemented", "CopyObject is not served by the local S3")
			return
		}
		if r.ContentLength > MaxObjectBytes {
			s.fail(w, r, http.StatusBadRequest, "EntityTooLarge", fmt.Sprintf("objects are at most %d bytes here", MaxObjectBytes))
			return
		}
		data, err := io.ReadAll(io.LimitReader(r.Body, MaxObjectBytes+1))
		if err != nil {
			s.fail(w, r, http.StatusBadRequest, "IncompleteBody", err.Error())
			return
		}
		if len(data) > MaxObjectBytes {
			s.fail(w, r, http.StatusBadRequest, "EntityTooLarge", fmt.Sprintf("objects are at most %d bytes here", MaxObjectBytes))
			return
		}
		data, err = decodeAWSChunked(r, data)
		if err != nil {
			s.fail(w, r, http.StatusBadRequest, "InvalidRequest", err.Error())
			return
		}
		meta := map[string]string{}
		for name, v := range r.Header {
			if m, ok := strings.CutPrefix(strings.ToLower(name), "x-amz-meta-"); ok && len(v) > 0 {
				meta[m] = v[0]
			}
		}
		obj, err := s.put(r.Context(), bucket, key, data, r.Header.Get("Content-Type"), meta)
		if err != nil {
			s.fail(w, r, http.StatusInternalServerError, "InternalError", err.Error())
			return
		}
		w.Header().Set("ETag", obj.ETag)
		w.WriteHeader(http.StatusOK)
	case http.MethodGet, http.MethodHead:
		if !signed(r) {
			if why := s.checkPresigned(r.URL.Query(), bucket, key); why != "" {
				s.fail(w, r, http.StatusForbidden, "AccessDenied", why)
				return
			}
		}
		s.serveObject(w, r, bucket, key)
	default:
		s.fail(w, r, http.StatusMethodNotAllowed, "MethodNotAllowed", fmt.Sprintf("%s is not served by the local S3", r.Method))
	}
}

// PresignedHandler serves only GETs of URLs Presign issued, unexpired: the
// artifact downloads of devices (see the package comment).
func (s *Store) PresignedHandler() http.Handler { return http.HandlerFunc(s.servePresigned) }

func (s *Store) servePresigned(w http.ResponseWriter, r *http.Request) {
	bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if r.Method != http.MethodGet {
		s.fail(w, r, http.StatusForbidden, "SignatureDoesNotMatch", fmt.Sprintf("a presigned URL of the local IoT Core is for GET, not %s", r.Method))
		return
	}
	if why := s.checkPresigned(r.URL.Query(), bucket, key); why != "" {
		s.fail(w, r, http.StatusForbidden, "AccessDenied", why)
		return
	}
	s.serveObject(w, r, bucket, key)
}

// serveObject answers a GET or HEAD of an object.
func (s *Store) serveObject(w http.ResponseWriter, r *http.Request, bucket, key string) {
	obj, err := s.Get(bucket, key)
	if err != nil {
		s.fail(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	h := w.Header()
	h.Set("ETag", obj.ETag)
	ct := obj.ContentType
	if ct == "" {
		ct = "binary/octet-stream"
	}
	h.Set("Content-Type", ct)
	for k, v := range obj.Metadata {
		h.Set("X-Amz-Meta-"+k, v)
	}
	// Range requests (a download that resumes), conditional GETs and
	// HEAD, as S3 answers them.
	http.ServeContent(w, r, key, obj.LastModified, bytes.NewReader(obj.Data))
}

// decodeAWSChunked undoes the aws-chunked content encoding the SDKs use
// for streaming uploads with trailing checksums.
func decodeAWSChunked(r *http.Request, data []byte) ([]byte, error) {
	if !strings.Contains(r.Header.Get("Content-Encoding"), "aws-chunked") && !strings.HasPrefix(r.Header.Get("X-Amz-Content-Sha256"), "STREAMING-") {
		return data, nil
	}
	var out []byte
	rest := data
	for {
		line, after, ok := bytes.Cut(rest, []byte("\r\n"))
		if !ok {
			return nil, errors.New("aws-chunked body: missing chunk header")
		}
		sizeHex, _, _ := bytes.Cut(line, []byte(";"))
		n, err := strconv.ParseInt(string(bytes.TrimSpace(sizeHex)), 16, 64)
		if err != nil || n < 0 || n > int64(len(after)) {
			return nil, fmt.Errorf("aws-chunked body: bad chunk size %q", sizeHex)
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, after[:n]...)
		rest = bytes.TrimPrefix(after[n:], []byte("\r\n"))
	}
}
