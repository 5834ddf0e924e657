package lambdamain

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEnv(t *testing.T) {
	env := map[string]string{"A": "1", "C": "3"}
	get := func(k string) string { return env[k] }
	vals, err := Env(get, []string{"A"}, []string{"C", "D"})
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"A": "1", "C": "3", "D": ""}, vals)

	_, err = Env(get, []string{"A", "B", "E"}, nil)
	require.EqualError(t, err, "missing environment variable(s): B, E")
}

func TestReportInitError(t *testing.T) {
	var got map[string]any
	var header string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/2018-06-01/runtime/init/error" {
			http.NotFound(w, r)
			return
		}
		header = r.Header.Get("Lambda-Runtime-Function-Error-Type")
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &got)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	api := strings.TrimPrefix(srv.URL, "http://")
	require.NoError(t, ReportInitError(context.Background(), api, errors.New("missing environment variable(s): X")))
	assert.Equal(t, "missing environment variable(s): X", got["errorMessage"])
	assert.Equal(t, "Runtime.InitError", header)

	require.NoError(t, ReportInitError(context.Background(), "", errors.New("x")), "no runtime API: nothing to do")
	require.Error(t, ReportInitError(context.Background(), api+"/nope", errors.New("x")))
}
