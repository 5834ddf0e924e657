// Package jobsop plugs the OTA updater into the jobs engine as the
// mender_install operation:
//
//	reg := jobs.NewRegistry()
//	if err := reg.Register(ota.Operation, jobsop.New(updater)); err != nil { ... }
//	engine, err := jobs.New(jobs.Config{..., Operations: reg})
//
// Old-schema documents {"operation": "mender_install", "url": "...",
// "sha256": "..."} and schema 1.0 steps {"type": "mender_install",
// "input": {"url": "...", "sha256": "..."}} both reach it. Validate checks
// them against the device's ota.Policy (allowed hosts), so a document with
// an artifact on another host is REJECTED before it runs, and
// `fleet-agent check-job` shows the same verdict.
package jobsop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/iot-fleet/iot-fleet/device/jobs"
	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
	"github.com/iot-fleet/iot-fleet/device/ota"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Step is what the operation needs from a running engine step
// (*jobs.OperationStep implements it).
type Step interface {
	Progress(ctx context.Context, details map[string]string, state json.RawMessage) error
	SaveState(ctx context.Context, state json.RawMessage) error
	Flush(ctx context.Context) error
}

// Updater is the part of *ota.Updater the operation uses.
type Updater interface {
	Run(ctx context.Context, job ota.Job, s ota.Session) error
	Flavor() ota.Flavor
}

// Op is the mender_install operation.
type Op struct {
	u      Updater
	policy ota.Policy
}

var _ jobs.Operation = (*Op)(nil)

// New returns the operation for u. policy must be the updater's
// (u.Policy()) so that documents it would refuse are rejected up front;
// with u == nil (check-job) it is the policy to check documents against
// (Template set accepts the unsubstituted presigned-URL placeholder).
func New(u *ota.Updater, policy ota.Policy) *Op {
	o := &Op{policy: policy}
	if u != nil {
		o.u = u
	}
	return o
}

// Parse checks the step input: url (required) and sha256 (optional),
// nothing else; the url must satisfy the device's policy. The result, an
// ota.Document, is what Run gets (the document is validated once).
func (o *Op) Parse(input map[string]json.RawMessage) (any, error) {
	return o.document(input)
}

func (o *Op) document(input map[string]json.RawMessage) (ota.Document, error) {
	var unknown []string
	for k := range input {
		if k != "url" && k != "sha256" {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return ota.Document{}, &jobdoc.Error{Field: unknown[0], Problem: "unknown field (" + ota.Operation + " takes url and sha256)"}
	}
	raw, ok := input["url"]
	if !ok {
		return ota.Document{}, &jobdoc.Error{Field: "url", Problem: "required field is missing (the artifact URL, usually ${aws:iot:s3-presigned-url:...})"}
	}
	var d ota.Document
	if err := json.Unmarshal(raw, &d.URL); err != nil {
		return ota.Document{}, &jobdoc.Error{Field: "url", Problem: "must be a string"}
	}
	if raw, ok := input["sha256"]; ok {
		if err := json.Unmarshal(raw, &d.SHA256); err != nil {
			return ota.Document{}, &jobdoc.Error{Field: "sha256", Problem: "must be a string of 64 hex digits"}
		}
		if d.SHA256 == "" {
			return ota.Document{}, &jobdoc.Error{Field: "sha256", Problem: "is empty (omit it, or give the artifact's SHA-256 as 64 hex digits)"}
		}
	}
	if err := d.Validate(o.policy); err != nil {
		if re, ok := ota.IsReject(err); ok {
			return ota.Document{}, &jobdoc.Error{Field: re.Field, Problem: re.Reason}
		}
		return ota.Document{}, &jobdoc.Error{Field: "url", Problem: err.Error()}
	}
	return d, nil
}

// LastState is the OTA state of the last mender_install job, current or
// finished, as the jobs engine keeps it in its state directory jobsDir
// (nil if there was none). `fleet-agent status` shows it.
func LastState(jobsDir string) (*ota.State, error) {
	rec, found, err := jobs.ReadLastOperation(jobsDir, ota.Operation)
	if err != nil || !found {
		return nil, err
	}
	return ota.DecodeState(rec.State)
}

// Run runs (or resumes) the update.
func (o *Op) Run(ctx context.Context, step *jobs.OperationStep) jobs.OperationResult {
	doc, ok := step.Value.(ota.Document)
	if !ok {
		return jobs.OperationResult{Reason: fmt.Sprintf("internal error: %s step input was not parsed (got %T)", ota.Operation, step.Value)}
	}
	return o.run(ctx, ota.Job{ID: step.JobID, Document: doc, StatusDetails: step.ServiceDetails}, step.State, step)
}

// run drives the updater for job; saved is the OTA state the engine kept
// for the step (nil on its first run).
func (o *Op) run(ctx context.Context, job ota.Job, saved json.RawMessage, step Step) jobs.OperationResult {
	s := &session{step: step, state: saved}
	for {
		err := o.u.Run(ctx, job, s)
		switch {
		case err == nil:
			return o.result(job.ID, s)
		case errors.Is(err, ota.ErrRebootPending) && ctx.Err() == nil:
			// The reboot did not stop the agent within the updater's
			// RebootWait: ask again (bounded by MaxReboots, after which
			// the updater rolls back and fails the job).
			continue
		case ctx.Err() != nil:
			// The agent is stopping (often: the reboot). The engine
			// discards this result and runs the step again on restart.
			return jobs.OperationResult{Reason: "interrupted: " + ctx.Err().Error()}
		default:
			return jobs.OperationResult{Reason: err.Error(), Details: o.details(s)}
		}
	}
}

// result turns the terminal status into the step result: from this run's
// report, or from the saved state when the status had been reported
// before a restart.
func (o *Op) result(jobID string, s *session) jobs.OperationResult {
	status, details := s.status, s.details
	if status == "" {
		st, err := ota.DecodeState(s.state)
		if err != nil {
			return jobs.OperationResult{Reason: fmt.Sprintf("OTA state of job %s is unusable after the update finished: %v", jobID, err)}
		}
		status, details = st.Status, st.Details(o.u.Flavor())
	}
	res := jobs.OperationResult{OK: status == protocol.JobSucceeded, Reason: details[ota.DetailReason], Details: details}
	if res.OK && res.Reason == "" {
		res.Reason = "update installed, verified and committed"
	}
	return res
}

func (o *Op) details(s *session) map[string]string {
	st, err := ota.DecodeState(s.state)
	if err != nil {
		return nil
	}
	return st.Details(o.u.Flavor())
}

// session is the updater's ota.Session on the engine step. The OTA state
// is the step's own state in the engine's state file (SaveState). Reports:
// IN_PROGRESS goes out as step progress (durable in the engine's state),
// and "rebooting" additionally waits until the Jobs service accepted it;
// terminal statuses become the step result, which the engine reports.
type session struct {
	step    Step
	state   json.RawMessage
	status  protocol.JobStatus
	details map[string]string
}

func (r *session) SavedState() json.RawMessage { return r.state }

func (r *session) SaveState(ctx context.Context, state json.RawMessage) error {
	if err := r.step.SaveState(ctx, state); err != nil {
		return fmt.Errorf("save job step state: %w", err)
	}
	r.state = append(json.RawMessage(nil), state...)
	return nil
}

func (r *session) Report(ctx context.Context, status protocol.JobStatus, details map[string]string) error {
	if status.Terminal() {
		r.status, r.details = status, details
		return nil
	}
	if err := r.step.Progress(ctx, details, nil); err != nil {
		return fmt.Errorf("job progress: %w", err)
	}
	if strings.EqualFold(details[ota.DetailStep], string(ota.StepRebooting)) {
		if err := r.step.Flush(ctx); err != nil {
			return fmt.Errorf("confirm rebooting status: %w", err)
		}
	}
	return nil
}
