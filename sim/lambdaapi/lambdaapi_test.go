package lambdaapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFunctionName(t *testing.T) {
	for in, want := range map[string][2]string{
		"iot-fleet-local-ssmtoggle":                                                   {"iot-fleet-local-ssmtoggle", ""},
		"iot-fleet-local-ssmtoggle:$LATEST":                                           {"iot-fleet-local-ssmtoggle", "$LATEST"},
		"arn:aws:lambda:local-1:000000000000:function:iot-fleet-local-ssmtoggle":      {"iot-fleet-local-ssmtoggle", ""},
		"arn:aws:lambda:local-1:000000000000:function:iot-fleet-local-ssmtoggle:prod": {"iot-fleet-local-ssmtoggle", "prod"},
		"000000000000:function:iot-fleet-local-certscan":                              {"iot-fleet-local-certscan", ""},
	} {
		name, q := functionName(in)
		assert.Equal(t, want, [2]string{name, q}, in)
	}
}

type event struct {
	Serial string `json:"serial"`
}

func TestInvoke(t *testing.T) {
	var async atomic.Int32
	h := New(Options{Functions: map[string]Function{
		"echo": JSON(func(_ context.Context, ev event) (map[string]string, error) {
			if ev.Serial == "" {
				return nil, errors.New("serial is required")
			}
			return map[string]string{"serial": ev.Serial}, nil
		}),
		"count": func(context.Context, []byte) ([]byte, error) { async.Add(1); return nil, nil },
	}, ARNPrefix: "arn:aws:lambda:local-1:000000000000:function:"})
	invoke := func(name, body string, header map[string]string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/2015-03-31/functions/"+name+"/invocations", strings.NewReader(body))
		for k, v := range header {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	w := invoke("echo", `{"serial":"1"}`, nil)
	assert.Equal(t, http.StatusOK, w.Code)
	assert.JSONEq(t, `{"serial":"1"}`, w.Body.String())
	assert.Empty(t, w.Header().Get("X-Amz-Function-Error"))

	w = invoke("echo", `{}`, nil)
	assert.Equal(t, http.StatusOK, w.Code, "a function error is a successful invocation")
	assert.Equal(t, "Unhandled", w.Header().Get("X-Amz-Function-Error"))
	assert.JSONEq(t, `{"errorMessage":"serial is required","errorType":"errorString"}`, w.Body.String())

	w = invoke("count", `{}`, map[string]string{"X-Amz-Invocation-Type": "Event"})
	assert.Equal(t, http.StatusAccepted, w.Code)
	require.Eventually(t, func() bool { return async.Load() == 1 }, 5*time.Second, time.Millisecond)

	w = invoke("nope", `{}`, nil)
	assert.Equal(t, http.StatusNotFound, w.Code)
	assert.Equal(t, "ResourceNotFoundException", w.Header().Get("X-Amzn-ErrorType"))
	assert.Contains(t, w.Body.String(), "arn:aws:lambda:local-1:000000000000:function:nope")
	assert.Contains(t, w.Body.String(), "count, echo")

	w = invoke("echo", strings.Repeat("x", MaxPayloadBytes+1), nil)
	assert.Equal(t, http.StatusRequestEntityTooLarge, w.Code)
	w = invoke("echo", `{"serial":`, nil)
	assert.Equal(t, "InvalidRequestContentException", w.Header().Get("X-Amzn-ErrorType"))
	w = invoke("echo", `{}`, map[string]string{"X-Amz-Invocation-Type": "Later"})
	assert.Equal(t, "InvalidParameterValueException", w.Header().Get("X-Amzn-ErrorType"))
	assert.Equal(t, fmt.Sprint(http.StatusBadRequest), fmt.Sprint(w.Code))
}
