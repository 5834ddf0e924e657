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

	"github.com/aws/aws-sdk-go-v2/aws"
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

func TestSerialPattern(t *testing.T) {
	re, err := SerialPattern(map[string]string{})
	require.NoError(t, err)
	assert.True(t, re.MatchString("0123456789abcdef"), "the default pattern")
	assert.False(t, re.MatchString("0123456789ABCDEF"))

	re, err = SerialPattern(map[string]string{SerialPatternEnv: "^[A-Z]{3}$"})
	require.NoError(t, err)
	assert.True(t, re.MatchString("ABC"))

	_, err = SerialPattern(map[string]string{SerialPatternEnv: "([a-z"})
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "SERIAL_PATTERN: "), err.Error())
}

func TestIoTDataClient(t *testing.T) {
	cfg := aws.Config{Region: "eu-central-1"}
	assert.Equal(t, "https://abc-ats.iot.eu-central-1.amazonaws.com",
		aws.ToString(IoTDataClient(cfg, "abc-ats.iot.eu-central-1.amazonaws.com").Options().BaseEndpoint))
	assert.Equal(t, "http://127.0.0.1:9", aws.ToString(IoTDataClient(cfg, "http://127.0.0.1:9").Options().BaseEndpoint))
	assert.Nil(t, IoTDataClient(cfg, "").Options().BaseEndpoint, "no endpoint: the SDK's regional one")
}
