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

func invokeEvent(t *testing.T, h *Handler, name string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/2015-03-31/functions/"+name+"/invocations", strings.NewReader(`{}`))
	r.Header.Set("X-Amz-Invocation-Type", "Event")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// An asynchronous invocation whose function fails is retried twice, as
// Lambda does, and not more; one that succeeds on a retry stops there.
func TestAsyncInvokeRetriesTwice(t *testing.T) {
	var failing, flaky, flakyDone atomic.Int32
	h := New(Options{RetryDelay: time.Millisecond, Functions: map[string]Function{
		"failing": func(context.Context, []byte) ([]byte, error) {
			failing.Add(1)
			return nil, errors.New("always fails")
		},
		"flaky": func(context.Context, []byte) ([]byte, error) {
			if flaky.Add(1) < 2 {
				return nil, errors.New("fails once")
			}
			flakyDone.Add(1)
			return []byte(`{}`), nil
		},
	}})
	assert.Equal(t, http.StatusAccepted, invokeEvent(t, h, "failing").Code)
	assert.Equal(t, http.StatusAccepted, invokeEvent(t, h, "flaky").Code)
	require.Eventually(t, func() bool { return failing.Load() == AsyncAttempts && flakyDone.Load() == 1 },
		10*time.Second, time.Millisecond, "failing ran %d times, flaky %d", failing.Load(), flaky.Load())
	// Close waits for the invocations: nothing runs after it.
	h.Close()
	assert.Equal(t, int32(AsyncAttempts), failing.Load(), "1 attempt + 2 retries")
	assert.Equal(t, int32(2), flaky.Load(), "no retry after a success")
}

// Close cancels a running asynchronous invocation's context and returns
// only once it has returned; a retry still waiting is dropped; later
// asynchronous invocations are refused.
func TestCloseEndsAsyncInvocations(t *testing.T) {
	started := make(chan struct{})
	var returned, retried atomic.Bool
	var calls atomic.Int32
	h := New(Options{RetryDelay: time.Hour, Functions: map[string]Function{
		"blocks": func(ctx context.Context, _ []byte) ([]byte, error) {
			close(started)
			<-ctx.Done()
			returned.Store(true)
			return nil, ctx.Err()
		},
		"retries": func(context.Context, []byte) ([]byte, error) {
			if calls.Add(1) > 1 {
				retried.Store(true)
			}
			return nil, errors.New("fails")
		},
	}})
	assert.Equal(t, http.StatusAccepted, invokeEvent(t, h, "blocks").Code)
	assert.Equal(t, http.StatusAccepted, invokeEvent(t, h, "retries").Code)
	<-started
	require.Eventually(t, func() bool { return calls.Load() == 1 }, 10*time.Second, time.Millisecond)
	h.Close()
	assert.True(t, returned.Load(), "Close returned before the invocation did")
	assert.False(t, retried.Load(), "a retry ran after Close")
	w := invokeEvent(t, h, "retries")
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Equal(t, "ServiceException", w.Header().Get("X-Amzn-ErrorType"))
	assert.Equal(t, int32(1), calls.Load())
}
