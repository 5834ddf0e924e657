package s3api

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseURL(t *testing.T) {
	for raw, want := range map[string][2]string{
		"https://s3.amazonaws.com/b/k/x.mender":                        {"b", "k/x.mender"},
		"https://s3.eu-west-1.amazonaws.com/b/k":                       {"b", "k"},
		"https://b.s3.amazonaws.com/k/x":                               {"b", "k/x"},
		"https://b.s3.eu-west-1.amazonaws.com/k":                       {"b", "k"},
		"https://s3-eu-west-1.amazonaws.com/b/k":                       {"b", "k"},
		"s3://b/k":                                                     {"b", "k"},
		"https://iot-fleet-local-artifacts.s3.local-1.amazonaws.com/a": {"iot-fleet-local-artifacts", "a"},
	} {
		b, k, err := ParseURL(raw)
		require.NoError(t, err, raw)
		assert.Equal(t, want, [2]string{b, k}, raw)
	}
	for _, raw := range []string{"", "http://s3.amazonaws.com/b/k", "https://example.com/b/k", "https://s3.amazonaws.com/b", "https://s3.amazonaws.com/", "https://evil.com/s3.amazonaws.com/b/k", "https://b.s3.evil.com/k"} {
		_, _, err := ParseURL(raw)
		assert.ErrorIs(t, err, ErrInvalidURL, raw)
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestPresignedURLsExpire(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 5, 18, 0, 0, 0, time.UTC)}
	srv := httptest.NewUnstartedServer(nil)
	base := "http://" + srv.Listener.Addr().String()
	s, err := New(Options{Buckets: []string{"art"}, BaseURL: func() string { return base }, Now: clk.now})
	require.NoError(t, err)
	srv.Config.Handler = s.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	_, err = s.Put(context.Background(), "art", "dir/a b.mender", []byte("payload"), "", nil)
	require.NoError(t, err)

	u, err := s.Presign("https://s3.amazonaws.com/art/dir/a b.mender", 60*time.Second)
	require.NoError(t, err)
	get := func(u string) (int, string) {
		resp, err := http.Get(u)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get(u)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "payload", body)
	// A resumed download asks for the rest.
	req, err := http.NewRequest(http.MethodGet, u, nil)
	require.NoError(t, err)
	req.Header.Set("Range", "bytes=3-")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	rest, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.Equal(t, "load", string(rest))
	clk.add(61 * time.Second)
	code, body = get(u)
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, body, "<Code>AccessDenied</Code>")
	assert.Contains(t, body, "expired")

	// Another key with the same signature is refused.
	u2, err := s.Presign("https://s3.amazonaws.com/art/dir/a b.mender", time.Hour)
	require.NoError(t, err)
	code, _ = get(strings.Replace(u2, "a%20b.mender", "other", 1))
	assert.Equal(t, http.StatusForbidden, code)
	// A missing object behind a valid URL: 404 NoSuchKey.
	u3, err := s.Presign("s3://art/missing", time.Hour)
	require.NoError(t, err)
	code, body = get(u3)
	assert.Equal(t, http.StatusNotFound, code)
	assert.Contains(t, body, "NoSuchKey")

	_, err = s.Presign("https://s3.amazonaws.com/other/a", time.Hour)
	assert.ErrorIs(t, err, ErrNoSuchBucket)
	assert.Contains(t, err.Error(), "art", "names the buckets served")
}

func TestPutHookAndChunkedUploads(t *testing.T) {
	s, err := New(Options{Buckets: []string{"cfg"}, BaseURL: func() string { return "http://x" }})
	require.NoError(t, err)
	var got []string
	s.OnPut("cfg", func(_ context.Context, bucket, key string, obj Object) error {
		got = append(got, bucket+"/"+key+"="+string(obj.Data)+" "+obj.Metadata["confirm"])
		return nil
	})
	req := httptest.NewRequest(http.MethodPut, "/cfg/allowlist.txt", strings.NewReader("5\r\nhello\r\n0\r\nx-amz-checksum-crc32:abc=\r\n\r\n"))
	req.Header.Set("Content-Encoding", "aws-chunked")
	req.Header.Set("X-Amz-Meta-Confirm", "yes")
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, req)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Equal(t, []string{"cfg/allowlist.txt=hello yes"}, got)

	req = httptest.NewRequest(http.MethodHead, "/cfg/none", nil)
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AK/20261205/local-1/s3/aws4_request, SignedHeaders=host, Signature=x")
	w = httptest.NewRecorder()
	s.Handler().ServeHTTP(w, req)
	assert.Equal(t, http.StatusNotFound, w.Code)
	assert.Empty(t, w.Body.String(), "HEAD answers have no body")
}

// The artifacts endpoint (PresignedHandler) is what devices reach: it
// serves presigned GETs and nothing else. A SigV4 marker in the query or
// an Authorization header does not stand in for the signature, HEAD of a
// presigned GET URL is refused as S3 refuses it (the method is signed),
// and no object can be written.
func TestPresignedHandlerServesOnlyPresignedGets(t *testing.T) {
	s, err := New(Options{Buckets: []string{"art", "config"}, BaseURL: func() string { return "http://artifacts" }})
	require.NoError(t, err)
	srv := httptest.NewServer(s.PresignedHandler())
	t.Cleanup(srv.Close)
	_, err = s.Put(context.Background(), "config", "allowlist.txt", []byte("secret list"), "", nil)
	require.NoError(t, err)
	_, err = s.Put(context.Background(), "art", "v2.mender", []byte("artifact"), "", nil)
	require.NoError(t, err)
	do := func(method, path string, hdr map[string]string) (int, string) {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader("overwritten"))
		require.NoError(t, err)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for name, c := range map[string]struct {
		method, path string
		hdr          map[string]string
	}{
		"credential marker":  {http.MethodGet, "/config/allowlist.txt?X-Amz-Credential=x", nil},
		"authorization":      {http.MethodGet, "/config/allowlist.txt", map[string]string{"Authorization": "AWS4-HMAC-SHA256 Credential=x"}},
		"unsigned put":       {http.MethodPut, "/config/allowlist.txt", nil},
		"signed put":         {http.MethodPut, "/config/allowlist.txt", map[string]string{"Authorization": "AWS4-HMAC-SHA256 Credential=x"}},
		"plain get":          {http.MethodGet, "/art/v2.mender", nil},
		"control-plane path": {http.MethodGet, "/things", nil},
	} {
		code, body := do(c.method, c.path, c.hdr)
		assert.Equal(t, http.StatusForbidden, code, "%s: %s", name, body)
		assert.NotContains(t, body, "secret list", name)
	}
	obj, err := s.Get("config", "allowlist.txt")
	require.NoError(t, err)
	assert.Equal(t, "secret list", string(obj.Data), "nothing was written")

	u, err := s.Presign("s3://art/v2.mender", time.Hour)
	require.NoError(t, err)
	path := strings.TrimPrefix(u, "http://artifacts")
	code, body := do(http.MethodGet, path, nil)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "artifact", body)
	code, _ = do(http.MethodHead, path, nil)
	assert.Equal(t, http.StatusForbidden, code, "a presigned GET URL is for GET")
}
