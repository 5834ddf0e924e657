package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"sync"
)

// Operation is a job step implemented inside the agent rather than by a
// handler process (OTA's mender_install is one). A job uses it either with
// the old schema, {"operation": NAME, ...fields}, or as the type of a schema
// 1.0 action, {"type": NAME, "input": {...fields}}.
type Operation interface {
	// Parse checks the step's input fields (old schema: every top-level
	// field except "operation" and "includeStdOut") and returns them as
	// the operation's typed value, which Run gets as OperationStep.Value:
	// the document is validated once, when the engine parses it. It must
	// be pure. An error rejects the job (status REJECTED with the error as
	// the reason); return a *jobdoc.Error to name the field.
	Parse(input map[string]json.RawMessage) (any, error)
	// Run executes the step. If the agent restarts while Run is in
	// progress, Run is called again with step.Resumed set and step.State
	// holding the last state saved through step.Progress, so operations
	// must be written to resume (they are never failed with "agent
	// restarted during step"). ctx is canceled when the agent stops or the
	// job is canceled by the service.
	Run(ctx context.Context, step *OperationStep) OperationResult
}

// OperationResult is the outcome of an operation step.
type OperationResult struct {
	OK     bool
	Reason string
	// Details are added to the job's statusDetails (at most 6 keys are
	// kept; values are truncated to 1024 bytes).
	Details map[string]string
}

// OperationStep is what an operation's Run gets.
type OperationStep struct {
	JobID     string
	StepName  string
	StepIndex int // 0-based
	RunAsUser string
	Input     map[string]json.RawMessage
	// Value is what the operation's Parse returned for Input.
	Value any
	// Resumed: the agent restarted while this step was running.
	Resumed bool
	// State is the operation's own state saved with Progress or
	// SaveState (nil on the step's first run).
	State json.RawMessage
	// ServiceDetails are the statusDetails the Jobs service held for the
	// execution when this agent adopted it; set when the job was already
	// IN_PROGRESS and the agent had no local record of it (state lost, for
	// example after an image update replaced the data partition).
	ServiceDetails map[string]string

	progress func(ctx context.Context, details map[string]string, state json.RawMessage) error
	flush    func(ctx context.Context) error
}

// ErrJobEnded is returned by OperationStep methods when the job is no
// longer the engine's current job (canceled by the service, or finished).
var ErrJobEnded = errors.New("job is no longer current")

// Progress saves state durably (before it returns) and queues an
// IN_PROGRESS update carrying details. It does not wait for the Jobs
// service; use Flush for that.
func (s *OperationStep) Progress(ctx context.Context, details map[string]string, state json.RawMessage) error {
	return s.progress(ctx, details, state)
}

// SaveState saves state durably in the job's state file (before it
// returns) without reporting anything: the operation's own state, handed
// back as State when the step resumes after a restart.
func (s *OperationStep) SaveState(ctx context.Context, state json.RawMessage) error {
	if state == nil {
		return errors.New("save operation state: nil state")
	}
	return s.progress(ctx, nil, state)
}

// Flush waits until the Jobs service has accepted every update queued so
// far (for example the "rebooting" progress before the device reboots).
func (s *OperationStep) Flush(ctx context.Context) error { return s.flush(ctx) }

// Registry maps operation names to operations. The agent builds one,
// registers its operations (OTA registers mender_install) and passes it to
// the engine and to CheckJobMain.
type Registry struct {
	mu  sync.RWMutex
	ops map[string]Operation
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{ops: map[string]Operation{}} }

var opNamePattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)

// Register adds op under name. Names are letters, digits, '_', '.', '-',
// starting with a letter; runHandler and runCommand are reserved.
func (r *Registry) Register(name string, op Operation) error {
	if !opNamePattern.MatchString(name) {
		return fmt.Errorf("register operation %q: invalid name", name)
	}
	if name == "runHandler" || name == "runCommand" {
		return fmt.Errorf("register operation %q: reserved action type", name)
	}
	if op == nil {
		return fmt.Errorf("register operation %q: nil operation", name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.ops[name]; dup {
		return fmt.Errorf("register operation %q: already registered", name)
	}
	r.ops[name] = op
	return nil
}

// Lookup returns the operation registered under name.
func (r *Registry) Lookup(name string) (Operation, bool) {
	if r == nil {
		return nil, false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	op, ok := r.ops[name]
	return op, ok
}

// HasOperation implements jobdoc.Operations.
func (r *Registry) HasOperation(name string) bool {
	_, ok := r.Lookup(name)
	return ok
}

// ParseOperation implements jobdoc.Operations.
func (r *Registry) ParseOperation(name string, input map[string]json.RawMessage) (any, error) {
	op, ok := r.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("operation %q is not registered", name)
	}
	return op.Parse(input)
}

// OperationNames lists the registered names, sorted.
func (r *Registry) OperationNames() []string {
	if r == nil {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.ops))
	for n := range r.ops {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
