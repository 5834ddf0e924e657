package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// StateFileName is the engine's state file inside the state directory.
const StateFileName = "jobs-state.json"

const stateFormat = 1

// Phases of the current job.
const (
	// persistedRunning: steps are being executed (Step, StepStarted say where).
	persistedRunning = "running"
	// persistedFinishing: the terminal status is decided and persisted; it is
	// sent (and resent) until the service accepts it or reports the
	// execution terminal.
	persistedFinishing = "finishing"
)

// Request kinds.
const (
	kindStartNext = "start-next"
	kindUpdate    = "update"
	kindDescribe  = "describe"
	// kindDescribeNext describes $next without its document, after a
	// start-next response that could not be decoded at all: it names the
	// execution that start-next put IN_PROGRESS so it can be rejected.
	kindDescribeNext = "describe-next"
)

// persistedState is the whole state file. It is written atomically before
// every transition takes effect (before a step starts, before a request is
// published, after a step's result is known and before anything else
// happens).
type persistedState struct {
	Format int `json:"format"`
	// TokenSeq numbers client tokens; persisted so that tokens are never
	// reused across restarts.
	TokenSeq int64     `json:"tokenSeq"`
	Job      *jobState `json:"job,omitempty"`
	// InFlight is the one request awaiting its response.
	InFlight *request `json:"inFlight,omitempty"`
	// LastOperations keeps, for each operation, the state it last saved
	// and its job, after the job ends too: `fleet-agent status` and the
	// device shadow show the last OTA update from it.
	LastOperations map[string]OperationRecord `json:"lastOperations,omitempty"`
}

// OperationRecord is an operation's last saved state and the job it
// belongs to.
type OperationRecord struct {
	JobID string          `json:"jobId"`
	State json.RawMessage `json:"state"`
}

type jobState struct {
	JobID           string          `json:"jobId"`
	ExecutionNumber int64           `json:"executionNumber,omitempty"`
	Document        json.RawMessage `json:"document"`
	// Version is the execution's versionNumber as last confirmed by the
	// service; updates carry it as expectedVersion.
	Version int64  `json:"version"`
	Phase   string `json:"phase"`
	// Step is the index of the current step (len(steps) is the final
	// step); StepStarted is set, and persisted, before the step starts.
	Step        int  `json:"step"`
	StepStarted bool `json:"stepStarted,omitempty"`
	// StepBootID is the kernel boot id when the current step started
	// (persisted with StepStarted): a different boot id at start-up means
	// the device rebooted during the step.
	StepBootID      string   `json:"stepBootId,omitempty"`
	IgnoredFailures []string `json:"ignoredFailures,omitempty"`
	// Status and Details are what the service should hold; ChangeSeq
	// counts their changes (and heartbeats), ConfirmedSeq is the last
	// ChangeSeq the service accepted.
	Status       protocol.JobStatus `json:"status"`
	Details      map[string]string  `json:"details,omitempty"`
	ChangeSeq    int64              `json:"changeSeq"`
	ConfirmedSeq int64              `json:"confirmedSeq"`
	// Pending are the updates not yet accepted by the service, oldest
	// first. Step results are never merged away; "running" reports and
	// heartbeats are replaced by the next change while still unsent.
	Pending []pendingUpdate `json:"pending,omitempty"`
	// OpState is an operation step's own saved state.
	OpState json.RawMessage `json:"opState,omitempty"`
	// ServiceDetails: statusDetails found on the service when the job was
	// adopted without local state.
	ServiceDetails map[string]string `json:"serviceDetails,omitempty"`
}

type pendingUpdate struct {
	Seq      int64              `json:"seq"`
	Status   protocol.JobStatus `json:"status"`
	Details  map[string]string  `json:"details,omitempty"`
	Coalesce bool               `json:"coalesce,omitempty"`
}

// request is a published request awaiting its response; it is resent
// verbatim (same client token) until answered.
type request struct {
	Kind    string          `json:"kind"`
	Token   string          `json:"token"`
	JobID   string          `json:"jobId,omitempty"`
	Topic   string          `json:"topic"`
	Payload json.RawMessage `json:"payload"`
	// Update requests: the ChangeSeq, status and details they carry.
	Seq     int64              `json:"seq,omitempty"`
	Status  protocol.JobStatus `json:"status,omitempty"`
	Details map[string]string  `json:"details,omitempty"`
}

func statePath(dir string) string { return filepath.Join(dir, StateFileName) }

func loadState(dir string) (*persistedState, error) {
	data, err := os.ReadFile(statePath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return &persistedState{Format: stateFormat}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read jobs state: %w", err)
	}
	var st persistedState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("jobs state %s is corrupt: %w", statePath(dir), err)
	}
	if st.Format != stateFormat {
		return nil, fmt.Errorf("jobs state %s: unsupported format %d", statePath(dir), st.Format)
	}
	return &st, nil
}

func saveState(dir string, st *persistedState) error {
	// No HTML escaping: the job document keeps its size ("<" would become
	// the six bytes "\u003c"), so it parses the same after a restart.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(st); err != nil {
		return fmt.Errorf("encode jobs state: %w", err)
	}
	if err := atomicfile.WriteFile(statePath(dir), buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("save jobs state: %w", err)
	}
	return nil
}
