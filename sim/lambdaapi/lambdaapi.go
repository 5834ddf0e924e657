// Package lambdaapi serves AWS Lambda's Invoke over its wire protocol
// (POST /2015-03-31/functions/{FunctionName}/invocations), dispatching to
// in-process functions: the local stack's real Lambda handlers, so that
// the aws-sdk-go-v2 lambda client and `aws lambda invoke` work against the
// local IoT Core as against a deployed stack. Requests may be
// SigV4-signed with any credentials (accepted, not checked). Asynchronous
// invocations (InvocationType Event) run in the background and are retried
// twice on a function error, as Lambda does; Close ends them.
package lambdaapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
)

// Function is one Lambda function: it takes the invocation's payload (a
// JSON document) and returns the response payload, or an error that Invoke
// reports as the function's error.
type Function func(ctx context.Context, payload []byte) ([]byte, error)

// MaxPayloadBytes is Lambda's synchronous payload limit (6 MB).
const MaxPayloadBytes = 6 * 1024 * 1024

// PathPrefix is the path prefix of Lambda's API.
const PathPrefix = "/2015-03-31/"

// Options configure a Handler.
type Options struct {
	// Functions by name.
	Functions map[string]Function
	// ARNPrefix prefixes a function's name to form its ARN, e.g.
	// arn:aws:lambda:local-1:000000000000:function:
	ARNPrefix string
	// Timeout bounds one invocation (Lambda's function timeout); default
	// 15 minutes, Lambda's largest.
	Timeout time.Duration
	// RetryDelay is how long an asynchronous invocation (InvocationType
	// Event) that failed waits before its first retry; the second retry
	// waits twice as long. Default 1 minute, as Lambda: a function error
	// is retried twice, 1 minute then 2 minutes later.
	RetryDelay time.Duration
	Logger     *slog.Logger
}

// AsyncAttempts is how many times an asynchronous invocation runs at most:
// once and, on a function error, two retries, as Lambda does.
const AsyncAttempts = 3

// Handler serves Invoke. Close it to end the asynchronous invocations.
type Handler struct {
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	async  sync.WaitGroup
}

// New returns a Handler.
func New(opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 15 * time.Minute
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Handler{opts: opts, log: opts.Logger.With("component", "lambda"), mux: http.NewServeMux(), ctx: ctx, cancel: cancel}
	h.mux.HandleFunc("POST /2015-03-31/functions/{name}/invocations", h.invoke)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, http.StatusNotFound, "UnknownOperationException",
			fmt.Sprintf("the local Lambda endpoint serves Invoke only, not %s %s", r.Method, r.URL.Path))
	})
	return h
}

// Close ends the asynchronous invocations: their context is canceled,
// retries not yet run are dropped (and logged), and Close returns when
// every one has returned. Asynchronous invocations after Close are
// refused.
func (h *Handler) Close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.cancel()
	h.async.Wait()
}

// startAsync runs fn in the background as Lambda runs an Event
// invocation; it reports false once the handler is closed.
func (h *Handler) startAsync(name string, fn Function, payload []byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.async.Add(1)
	go func() {
		defer h.async.Done()
		h.runAsync(name, fn, payload)
	}()
	return true
}

// runAsync runs an asynchronous invocation and, on a function error,
// retries it twice: RetryDelay, then twice RetryDelay later.
func (h *Handler) runAsync(name string, fn Function, payload []byte) {
	delay := h.opts.RetryDelay
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(h.ctx, h.opts.Timeout)
		_, err := fn(ctx, payload)
		cancel()
		if err == nil {
			h.log.Info("asynchronous invocation done", "function", name, "attempt", attempt)
			return
		}
		if attempt == AsyncAttempts {
			h.log.Error("asynchronous invocation failed, event discarded", "function", name, "attempts", attempt, "error", err)
			return
		}
		h.log.Warn("asynchronous invocation failed, will retry", "function", name, "attempt", attempt, "retryIn", delay, "error", err)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-h.ctx.Done():
			t.Stop()
			h.log.Warn("asynchronous invocation not retried: the Lambda endpoint is closing", "function", name, "attempts", attempt, "error", err)
			return
		}
		delay *= 2
	}
}

// Owns reports whether r is a Lambda API request.
func Owns(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, PathPrefix) }

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Names lists the functions served.
func (h *Handler) Names() []string { return slices.Sorted(maps.Keys(h.opts.Functions)) }

// functionName resolves a FunctionName (name, ARN or partial ARN, with an
// optional qualifier) to a function name.
func functionName(v string) (name, qualifier string) {
	parts := strings.Split(v, ":")
	switch {
	case len(parts) >= 7 && parts[0] == "arn": // arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
		name = parts[6]
		if len(parts) > 7 {
			qualifier = parts[7]
		}
	case len(parts) >= 3 && parts[1] == "function": // ACCOUNT:function:NAME[:QUALIFIER]
		name = parts[2]
		if len(parts) > 3 {
			qualifier = parts[3]
		}
	case len(parts) == 2: // NAME:QUALIFIER
		name, qualifier = parts[0], parts[1]
	default:
		name = v
	}
	return name, qualifier
}

func (h *Handler) invoke(w http.ResponseWriter, r *http.Request) {
	name, qualifier := functionName(r.PathValue("name"))
	if q := r.URL.Query().Get("Qualifier"); q != "" {
		qualifier = q
	}
	fn, ok := h.opts.Functions[name]
	if !ok {
		h.fail(w, http.StatusNotFound, "ResourceNotFoundException",
			fmt.Sprintf("Function not found: %s%s (the local stack serves %s)", h.opts.ARNPrefix, name, strings.Join(h.Names(), ", ")))
		return
	}
	if qualifier != "" && qualifier != "$LATEST" {
		h.fail(w, http.StatusNotFound, "ResourceNotFoundException",
			fmt.Sprintf("Function not found: %s%s:%s (the local stack has $LATEST only)", h.opts.ARNPrefix, name, qualifier))
		return
	}
	payload, err := io.ReadAll(io.LimitReader(r.Body, MaxPayloadBytes+1))
	if err != nil {
		h.fail(w, http.StatusBadRequest, "InvalidRequestContentException", "read request body: "+err.Error())
		return
	}
	if len(payload) > MaxPayloadBytes {
		h.fail(w, http.StatusRequestEntityTooLarge, "RequestTooLargeException",
			fmt.Sprintf("Request must be smaller than %d bytes for the InvokeFunction operation", MaxPayloadBytes))
		return
	}
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	if !json.Valid(payload) {
		h.fail(w, http.StatusBadRequest, "InvalidRequestContentException", "Could not parse request body into json: the payload is not valid JSON")
		return
	}
	switch t := r.Header.Get("X-Amz-Invocation-Type"); t {
	case "", "RequestResponse":
	case "DryRun":
		w.WriteHeader(http.StatusNoContent)
		return
	case "Event":
		if !h.startAsync(name, fn, payload) {
			h.fail(w, http.StatusServiceUnavailable, "ServiceException", "the local Lambda endpoint is closed")
			return
		}
		w.WriteHeader(http.StatusAccepted)
		return
	default:
		h.fail(w, http.StatusBadRequest, "InvalidParameterValueException", fmt.Sprintf("X-Amz-Invocation-Type %q must be RequestResponse, Event or DryRun", t))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.Timeout)
	defer cancel()
	start := time.Now()
	out, err := fn(ctx, payload)
	w.Header().Set("X-Amz-Executed-Version", "$LATEST")
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		// As Lambda: the invocation succeeded, the function failed.
		h.log.Info("function error", "function", name, "error", err, "duration", time.Since(start))
		body, _ := json.Marshal(map[string]string{"errorMessage": err.Error(), "errorType": errorType(err)})
		w.Header().Set("X-Amz-Function-Error", "Unhandled")
		_, _ = w.Write(body)
		return
	}
	h.log.Info("function invoked", "function", name, "duration", time.Since(start))
	_, _ = w.Write(out)
}

// errorType names an error's type as the Go Lambda runtime does.
func errorType(err error) string {
	t := reflect.TypeOf(err)
	if t.Kind() == reflect.Pointer {
		return t.Elem().Name()
	}
	return t.Name()
}

// fail answers in Lambda's REST-JSON error shape.
func (h *Handler) fail(w http.ResponseWriter, status int, code, msg string) {
	h.log.Info("lambda call failed", "code", code, "message", msg)
	b, _ := json.Marshal(map[string]string{"Type": "User", "message": msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// JSON adapts a typed handler (the signature lambda.Start accepts:
// func(context.Context, In) (Out, error)) to a Function: the payload is
// decoded into In as the Lambda Go runtime decodes it and the result
// encoded as JSON.
func JSON[In, Out any](handle func(context.Context, In) (Out, error)) Function {
	return func(ctx context.Context, payload []byte) ([]byte, error) {
		var in In
		if err := json.Unmarshal(payload, &in); err != nil {
			return nil, fmt.Errorf("decode event: %w", err)
		}
		out, err := handle(ctx, in)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(out)
		if err != nil {
			return nil, fmt.Errorf("encode response: %w", err)
		}
		return b, nil
	}
}
