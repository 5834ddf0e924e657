package ota

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseDocument(t *testing.T) {
	for _, tc := range []struct {
		name  string
		doc   string
		field string
		msg   string
	}{
		{"valid", `{"operation":"mender_install","url":"https://s3.amazonaws.com/b/a.mender?X-Amz-Signature=x"}`, "", ""},
		{"extra fields ignored", `{"operation":"mender_install","url":"https://h/a.mender","comment":"spring release"}`, "", ""},
		{"missing url", `{"operation":"mender_install"}`, "url", "missing"},
		{"null url", `{"operation":"mender_install","url":null}`, "url", "got null"},
		{"empty url", `{"operation":"mender_install","url":"  "}`, "url", "empty"},
		{"relative url", `{"operation":"mender_install","url":"/tmp/a.mender"}`, "url", `scheme "" is not allowed`},
		{"file url", `{"operation":"mender_install","url":"file:///tmp/a.mender"}`, "url", `scheme "file"`},
		{"flag injection", `{"operation":"mender_install","url":"--data=/tmp"}`, "url", "scheme"},
		{"no host", `{"operation":"mender_install","url":"https:///a.mender"}`, "url", "no host"},
		{"whitespace", `{"operation":"mender_install","url":"https://h/a b.mender"}`, "url", "whitespace"},
		{"placeholder", `{"operation":"mender_install","url":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/b/a.mender}"}`, "url", "placeholder was not substituted"},
		{"missing operation", `{"url":"https://h/a.mender"}`, "operation", "missing"},
		{"other operation", `{"operation":"install-packages","url":"https://h/a.mender"}`, "operation", `"install-packages" is not "mender_install"`},
		{"operation not a string", `{"operation":["mender_install"],"url":"https://h/a.mender"}`, "operation", "got an array"},
		{"not an object", `["mender_install"]`, "", "not a JSON object"},
		{"null", `null`, "", "not a JSON object"},
		{"garbage", `{"operation":`, "", "not a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDocument([]byte(tc.doc))
			if tc.msg == "" {
				require.NoError(t, err)
				assert.True(t, strings.HasPrefix(d.URL, "https://"))
				return
			}
			re, ok := IsReject(err)
			require.True(t, ok, "want a RejectError, got %v", err)
			assert.Equal(t, tc.field, re.Field)
			assert.Contains(t, re.Error(), tc.msg)
		})
	}
}

func TestValidateHTTP(t *testing.T) {
	d := Document{URL: "http://192.168.1.14:8000/a.mender"}
	hosts := []string{"192.168.1.14:8000"}
	require.Error(t, d.Validate(Policy{AllowedHosts: hosts}))
	require.NoError(t, d.Validate(Policy{AllowHTTP: true, AllowedHosts: hosts}))
}

func TestRedactURL(t *testing.T) {
	assert.Equal(t, "https://s3.amazonaws.com/b/a.mender?REDACTED", RedactURL("https://user:pw@s3.amazonaws.com/b/a.mender?X-Amz-Signature=abc#frag"))
	assert.Equal(t, "https://h/a.mender", RedactURL("https://h/a.mender"))
}

// TestExampleDocuments checks the documents shipped in testdata (and shown
// in docs/ota.md) against the parser and the image's host policy, on a
// device and as check-job sees them.
func TestExampleDocuments(t *testing.T) {
	hosts := []string{"iot-fleet-dev-artifacts.s3.amazonaws.com", "s3.amazonaws.com/iot-fleet-dev-artifacts"}
	device, checkJob := Policy{AllowedHosts: hosts}, Policy{AllowedHosts: hosts, Template: true}
	files, err := filepath.Glob("testdata/*.json")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		d, err := ParseDocument(b)
		name := filepath.Base(f)
		switch {
		case strings.Contains(name, "invalid"):
			if err == nil {
				assert.Error(t, d.Validate(device), f)
			}
			var raw Document
			require.NoError(t, json.Unmarshal(b, &raw))
			assert.Error(t, raw.Validate(checkJob), "check-job refuses %s", f)
		case strings.Contains(name, "template") || strings.Contains(name, "sha256"):
			// As uploaded the document still has the placeholder; AWS IoT
			// Jobs substitutes it per execution: a device refuses it,
			// check-job checks the URL inside.
			re, ok := IsReject(err)
			require.True(t, ok, f)
			assert.Contains(t, re.Reason, "placeholder")
			var raw Document
			require.NoError(t, json.Unmarshal(b, &raw))
			assert.NoError(t, raw.Validate(checkJob), f)
		default:
			require.NoError(t, err, f)
			assert.NoError(t, d.Validate(device), f)
		}
	}
}

func FuzzParseDocument(f *testing.F) {
	f.Add([]byte(`{"operation":"mender_install","url":"https://h/a.mender"}`))
	f.Add([]byte(`{"operation":"mender_install"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDocument(b)
		if err != nil {
			re, ok := IsReject(err)
			if !ok || re.Reason == "" {
				t.Fatalf("rejection without a reason: %v", err)
			}
			return
		}
		if d.URL == "" {
			t.Fatal("accepted an empty url")
		}
	})
}

func TestHostPolicy(t *testing.T) {
	p := Policy{AllowedHosts: []string{"fleet-artifacts.s3.eu-west-1.amazonaws.com", "fleet-artifacts.s3.amazonaws.com", "s3.amazonaws.com/fleet-artifacts"}}
	sum := strings.Repeat("0a", 32)
	for _, tc := range []struct {
		name, url, sha string
		msg            string // "" = accepted
	}{
		{"virtual-hosted regional", "https://fleet-artifacts.s3.eu-west-1.amazonaws.com/rpi.mender?X-Amz-Signature=1", "", ""},
		{"virtual-hosted global", "https://fleet-artifacts.s3.amazonaws.com/rpi.mender", "", ""},
		{"path-style in the bucket", "https://s3.amazonaws.com/fleet-artifacts/rpi.mender?X-Amz-Signature=1", "", ""},
		{"upper-case host", "https://FLEET-ARTIFACTS.S3.AMAZONAWS.COM/rpi.mender", "", ""},
		{"with sha256", "https://fleet-artifacts.s3.amazonaws.com/rpi.mender", sum, ""},
		{"upper-case sha256", "https://fleet-artifacts.s3.amazonaws.com/rpi.mender", strings.ToUpper(sum), ""},
		{"suffix attack", "https://fleet-artifacts.s3.amazonaws.com.evil.com/rpi.mender", "", `host "fleet-artifacts.s3.amazonaws.com.evil.com" is not allowed`},
		{"prefix attack", "https://evilfleet-artifacts.s3.amazonaws.com/rpi.mender", "", "is not allowed"},
		{"subdomain of allowed", "https://x.fleet-artifacts.s3.amazonaws.com/rpi.mender", "", "is not allowed"},
		{"userinfo", "https://fleet-artifacts.s3.amazonaws.com@evil.com/rpi.mender", "", "user info"},
		{"userinfo allowed-looking", "https://good@evil/rpi.mender", "", "user info"},
		{"ip literal", "https://52.218.1.1/rpi.mender", "", `host "52.218.1.1" is not allowed`},
		{"ipv6 literal", "https://[::1]/rpi.mender", "", "is not allowed"},
		{"decimal ip", "https://3639018753/rpi.mender", "", "is not allowed"},
		{"port", "https://fleet-artifacts.s3.amazonaws.com:8443/rpi.mender", "", `host "fleet-artifacts.s3.amazonaws.com:8443" is not allowed`},
		{"explicit 443", "https://fleet-artifacts.s3.amazonaws.com:443/rpi.mender", "", "is not allowed"},
		{"trailing dot", "https://fleet-artifacts.s3.amazonaws.com./rpi.mender", "", "ends with a dot"},
		{"idn look-alike", "https://fleet-artifаcts.s3.amazonaws.com/rpi.mender", "", "not ASCII"},
		{"punycode look-alike", "https://xn--fleet-artifcts-7we.s3.amazonaws.com/rpi.mender", "", "is not allowed"},
		{"percent-encoded host", "https://%66leet-artifacts.s3.amazonaws.com/rpi.mender", "", "not a valid URL"},
		{"backslash", `https://evil.com\@fleet-artifacts.s3.amazonaws.com/rpi.mender`, "", ""},
		{"path-style other bucket", "https://s3.amazonaws.com/evil-bucket/rpi.mender", "", `not in the allowed bucket "fleet-artifacts"`},
		{"path-style bucket prefix", "https://s3.amazonaws.com/fleet-artifacts-evil/rpi.mender", "", "not in the allowed bucket"},
		{"path-style dot segments", "https://s3.amazonaws.com/fleet-artifacts/../evil-bucket/rpi.mender", "", "dot segments"},
		{"path-style escaped dots", "https://s3.amazonaws.com/fleet-artifacts/%2e%2e/evil-bucket/rpi.mender", "", "dot segments"},
		{"path-style escaped slash", "https://s3.amazonaws.com/fleet-artifacts%2f..%2fevil/rpi.mender", "", "not in the allowed bucket"},
		{"path-style bucket only", "https://s3.amazonaws.com/fleet-artifacts/", "", "not in the allowed bucket"},
		{"http", "http://fleet-artifacts.s3.amazonaws.com/rpi.mender", "", "https required"},
		{"placeholder on a device", "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/fleet-artifacts/rpi.mender}", "", "placeholder was not substituted"},
		{"sha256 short", "https://fleet-artifacts.s3.amazonaws.com/rpi.mender", "abc", "64 hex digits"},
		{"sha256 not hex", "https://fleet-artifacts.s3.amazonaws.com/rpi.mender", strings.Repeat("zz", 32), "64 hex digits"},
		{"sha256 too long", "https://fleet-artifacts.s3.amazonaws.com/rpi.mender", sum + "0", "64 hex digits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Document{URL: tc.url, SHA256: tc.sha}.Validate(p)
			if tc.name == "backslash" {
				// Go refuses a backslash in the authority as a URL
				// error; either way the URL is rejected.
				require.Error(t, err)
				return
			}
			if tc.msg == "" {
				require.NoError(t, err)
				return
			}
			re, ok := IsReject(err)
			require.True(t, ok, "want a RejectError, got %v", err)
			assert.Contains(t, re.Error(), tc.msg)
		})
	}
}

func TestNoAllowedHostsRejectsEverything(t *testing.T) {
	err := Document{URL: "https://fleet-artifacts.s3.amazonaws.com/rpi.mender"}.Validate(Policy{})
	re, ok := IsReject(err)
	require.True(t, ok, "%v", err)
	assert.Contains(t, re.Reason, "allows no artifact host")
	assert.Contains(t, re.Reason, "ota.allowedHosts")
}

func TestPresignPlaceholderInTemplates(t *testing.T) {
	p := Policy{Template: true, AllowedHosts: []string{"s3.amazonaws.com/fleet-artifacts", "s3.eu-west-1.amazonaws.com/fleet-artifacts"}}
	for _, u := range []string{
		"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/fleet-artifacts/rpi.mender}",
		"${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/fleet-artifacts/rpi.mender}",
	} {
		require.NoError(t, Document{URL: u}.Validate(p), u)
	}
	for u, msg := range map[string]string{
		"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/evil-bucket/rpi.mender}":      "not in the allowed bucket",
		"${aws:iot:s3-presigned-url:https://evil.example/rpi.mender}":                      "is not allowed",
		"https://x/${aws:iot:s3-presigned-url:https://s3.amazonaws.com/fleet-artifacts/a}": "malformed",
		"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/fleet-artifacts/a}${x}":       "malformed",
		"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/fleet-artifacts/rpi.mender":   "malformed",
		"${aws:iot:something-else:https://s3.amazonaws.com/fleet-artifacts/rpi.mender}":    "malformed",
	} {
		err := Document{URL: u}.Validate(p)
		require.Error(t, err, u)
		assert.Contains(t, err.Error(), msg, u)
	}
}

func TestValidateAllowedHost(t *testing.T) {
	for _, ok := range []string{
		"fleet-artifacts.s3.eu-west-1.amazonaws.com", "fleet-artifacts.s3.amazonaws.com",
		"s3.amazonaws.com/fleet-artifacts", "s3.eu-west-1.amazonaws.com/fleet-artifacts", "127.0.0.1:8080", "artifacts.example.com",
	} {
		assert.NoError(t, ValidateAllowedHost(ok), ok)
	}
	for bad, msg := range map[string]string{
		"s3.amazonaws.com":            "shared by every S3 bucket",
		"s3.eu-west-1.amazonaws.com":  "shared by every S3 bucket",
		"s3-eu-west-1.amazonaws.com":  "shared by every S3 bucket",
		"*.s3.amazonaws.com":          "not a host name label",
		"Fleet.s3.amazonaws.com":      "lower case",
		"fleet.s3.amazonaws.com.":     "not a host name label",
		"":                            "no host",
		"host:0":                      "port",
		"host:http":                   "port",
		"[::1]:80":                    "label",
		"s3.amazonaws.com/Bad_Bucket": "not an S3 bucket name",
		"https://fleet.example":       "port",
		"fleet-artifаcts.example":     "not a host name label",
	} {
		err := ValidateAllowedHost(bad)
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), msg, bad)
	}
}

func TestSHA256InOldSchema(t *testing.T) {
	d, err := ParseDocument([]byte(`{"operation":"mender_install","url":"https://h/a.mender","sha256":"` + strings.Repeat("AB", 32) + `"}`))
	require.NoError(t, err)
	assert.Equal(t, strings.Repeat("AB", 32), d.SHA256)
	for doc, msg := range map[string]string{
		`{"operation":"mender_install","url":"https://h/a.mender","sha256":""}`:                                "is empty",
		`{"operation":"mender_install","url":"https://h/a.mender","sha256":42}`:                                "got a number",
		`{"operation":"mender_install","url":"https://h/a.mender","sha256":"abc"}`:                             "64 hex digits",
		`{"operation":"mender_install","url":"https://h/a.mender","sha256":["ab"]}`:                            "got an array",
		`{"operation":"mender_install","url":"https://h/a.mender","sha256":"` + strings.Repeat("a", 65) + `"}`: "64 hex digits",
	} {
		_, err := ParseDocument([]byte(doc))
		re, ok := IsReject(err)
		require.True(t, ok, "%s: %v", doc, err)
		assert.Equal(t, "sha256", re.Field, doc)
		assert.Contains(t, re.Reason, msg, doc)
	}
}

// A wildcard is not a host: no entry allows every host.
func TestNoWildcardHost(t *testing.T) {
	err := Document{URL: "https://evil.example/a.mender"}.Validate(Policy{AllowedHosts: []string{"*"}})
	require.Error(t, err)
	assert.Error(t, ValidateAllowedHost("*"))
}
