// Package lambdatest runs a packaged Lambda bootstrap as a real process
// against a small in-test implementation of the Lambda Runtime API
// (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html).
package lambdatest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// FunctionARN is the ARN the Runtime API reports for every invocation.
const FunctionARN = "arn:aws:lambda:us-east-1:123456789012:function:test"

// BuildBootstrap compiles the main package pkg (relative to the repository
// root, e.g. "./lambdas/cmd/preprovision") the way the stack packages it
// (GOOS=linux, CGO_ENABLED=0, -trimpath, -tags lambda.norpc), for the
// host's architecture so the test can run it, and returns its path.
func BuildBootstrap(t testing.TB, pkg string) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("a linux bootstrap cannot run on %s", runtime.GOOS)
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), "bootstrap")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-tags", "lambda.norpc", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+runtime.GOARCH, "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// ErrorPayload is what a runtime posts to /error and /init/error.
type ErrorPayload struct {
	ErrorMessage string   `json:"errorMessage"`
	ErrorType    string   `json:"errorType"`
	StackTrace   []string `json:"stackTrace,omitempty"`
}

// Outcome is the answer to one invocation: Response, or Error.
type Outcome struct {
	RequestID string
	Response  []byte
	Error     *ErrorPayload
}

type invocation struct {
	id      string
	payload []byte
	done    chan Outcome
}

// RuntimeAPI is a Lambda Runtime API server on 127.0.0.1.
type RuntimeAPI struct {
	// Addr is host:port, the value of AWS_LAMBDA_RUNTIME_API.
	Addr string

	queue     chan *invocation
	closed    chan struct{}
	initError chan ErrorPayload

	mu      sync.Mutex
	pending map[string]*invocation
	nextID  int
}

// StartRuntimeAPI starts a Runtime API server; it stops when the test ends.
func StartRuntimeAPI(t testing.TB) *RuntimeAPI {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("runtime API: %v", err)
	}
	r := &RuntimeAPI{
		Addr:      l.Addr().String(),
		queue:     make(chan *invocation),
		closed:    make(chan struct{}),
		initError: make(chan ErrorPayload, 1),
		pending:   map[string]*invocation{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /2018-06-01/runtime/invocation/next", r.next)
	mux.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/response", r.response)
	mux.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/error", r.invocationError)
	mux.HandleFunc("POST /2018-06-01/runtime/init/error", r.initErr)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() {
		close(r.closed)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return r
}

func (r *RuntimeAPI) next(w http.ResponseWriter, req *http.Request) {
	var inv *invocation
	select {
	case inv = <-r.queue:
	case <-req.Context().Done():
		return
	case <-r.closed:
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	deadline := time.Now().Add(30 * time.Second).UnixMilli()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Lambda-Runtime-Aws-Request-Id", inv.id)
	w.Header().Set("Lambda-Runtime-Deadline-Ms", strconv.FormatInt(deadline, 10))
	w.Header().Set("Lambda-Runtime-Invoked-Function-Arn", FunctionARN)
	w.Header().Set("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000;Sampled=0")
	_, _ = w.Write(inv.payload)
}

func (r *RuntimeAPI) take(id string) *invocation {
	r.mu.Lock()
	defer r.mu.Unlock()
	inv := r.pending[id]
	delete(r.pending, id)
	return inv
}

func (r *RuntimeAPI) response(w http.ResponseWriter, req *http.Request) {
	inv := r.take(req.PathValue("id"))
	if inv == nil {
		http.Error(w, "unknown request id", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	inv.done <- Outcome{RequestID: inv.id, Response: body}
	w.WriteHeader(http.StatusAccepted)
}

func (r *RuntimeAPI) invocationError(w http.ResponseWriter, req *http.Request) {
	inv := r.take(req.PathValue("id"))
	if inv == nil {
		http.Error(w, "unknown request id", http.StatusBadRequest)
		return
	}
	var p ErrorPayload
	if err := json.NewDecoder(req.Body).Decode(&p); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	inv.done <- Outcome{RequestID: inv.id, Error: &p}
	w.WriteHeader(http.StatusAccepted)
}

func (r *RuntimeAPI) initErr(w http.ResponseWriter, req *http.Request) {
	var p ErrorPayload
	if err := json.NewDecoder(req.Body).Decode(&p); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	select {
	case r.initError <- p:
	default:
	}
	w.WriteHeader(http.StatusAccepted)
}

// Invoke hands event (marshalled to JSON) to the runtime's next
// /invocation/next call and waits for its answer.
func (r *RuntimeAPI) Invoke(ctx context.Context, event any) (Outcome, error) {
	payload, err := json.Marshal(event)
	if err != nil {
		return Outcome{}, err
	}
	r.mu.Lock()
	r.nextID++
	inv := &invocation{id: fmt.Sprintf("req-%04d", r.nextID), payload: payload, done: make(chan Outcome, 1)}
	r.pending[inv.id] = inv
	r.mu.Unlock()
	select {
	case r.queue <- inv:
	case <-ctx.Done():
		r.take(inv.id)
		return Outcome{}, fmt.Errorf("invoke: runtime never asked for the next invocation: %w", ctx.Err())
	}
	select {
	case out := <-inv.done:
		return out, nil
	case <-ctx.Done():
		return Outcome{}, fmt.Errorf("invoke %s: no answer: %w", inv.id, ctx.Err())
	}
}

// InitError returns the payload the runtime posted to /init/error.
func (r *RuntimeAPI) InitError(ctx context.Context) (ErrorPayload, error) {
	select {
	case p := <-r.initError:
		return p, nil
	case <-ctx.Done():
		return ErrorPayload{}, fmt.Errorf("no init error reported: %w", ctx.Err())
	}
}

// Process is a running bootstrap.
type Process struct {
	cmd    *exec.Cmd
	out    *testenv.LogBuffer
	exited chan struct{}
	err    error
}

// Output returns what the process wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// Wait waits for the process to exit and returns its exit error.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.exited:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("bootstrap still running: %w", ctx.Err())
	}
}

// Start runs bin with only the environment env (plus
// AWS_LAMBDA_RUNTIME_API pointing at api, and what Lambda sets for a
// provided runtime). The process is killed when the test ends.
func Start(t testing.TB, bin string, api *RuntimeAPI, env map[string]string) *Process {
	t.Helper()
	dir := t.TempDir()
	vars := map[string]string{
		"AWS_LAMBDA_RUNTIME_API":          api.Addr,
		"AWS_LAMBDA_FUNCTION_NAME":        "test",
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
		"AWS_LAMBDA_FUNCTION_VERSION":     "$LATEST",
		"LAMBDA_TASK_ROOT":                filepath.Dir(bin),
		"HOME":                            dir,
		// Keep the host's AWS configuration out of the process.
		"AWS_CONFIG_FILE":             filepath.Join(dir, "aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "aws-credentials"),
		"AWS_EC2_METADATA_DISABLED":   "true",
	}
	for k, v := range env {
		vars[k] = v
	}
	cmd := exec.Command(bin)
	cmd.Dir = filepath.Dir(bin)
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &Process{cmd: cmd, out: &testenv.LogBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("bootstrap output:\n%s", p.Output())
		}
	})
	return p
}
