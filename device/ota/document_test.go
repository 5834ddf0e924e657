package ota

import (
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
// in docs/ota.md) against the parser.
func TestExampleDocuments(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		_, err = ParseDocument(b)
		if strings.Contains(filepath.Base(f), "invalid") {
			assert.Error(t, err, f)
		} else if strings.Contains(filepath.Base(f), "template") {
			// The template as uploaded still has the placeholder; AWS IoT
			// Jobs substitutes it per execution.
			re, ok := IsReject(err)
			require.True(t, ok, f)
			assert.Contains(t, re.Reason, "placeholder")
		} else {
			assert.NoError(t, err, f)
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
