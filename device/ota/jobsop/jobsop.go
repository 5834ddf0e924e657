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
	Flush(ctx context.Context) error
}

// Updater is the part of *ota.Updater the operation uses.
type Updater interface {
	Run(ctx context.Context, job ota.Job, r ota.Reporter) error
	JobState(jobID string) (*ota.State, error)
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

// Validate checks the step input: url (required) and sha256 (optional),
// nothing else; the url must satisfy the device's policy.
func (o *Op) Validate(input map[string]json.RawMessage) error {
	_, err := o.document(input)
	return err
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

// Run runs (or resumes) the update.
func (o *Op) Run(ctx context.Context, step *jobs.OperationStep) jobs.OperationResult {
	return o.run(ctx, step.JobID, step.Input, step.ServiceDetails, step)
}

func (o *Op) run(ctx context.Context, jobID string, input map[string]json.RawMessage, serviceDetails map[string]string, step Step) jobs.OperationResult {
	d, err := o.document(input)
	if err != nil {
		return jobs.OperationResult{Reason: err.Error()}
	}
	doc := map[string]any{"operation": ota.Operation, "url": d.URL}
	if d.SHA256 != "" {
		doc["sha256"] = d.SHA256
	}
	job := ota.Job{ID: jobID, Document: doc, StatusDetails: serviceDetails}
	rep := &reporter{step: step}
	for {
		err := o.u.Run(ctx, job, rep)
		switch {
		case err == nil:
			return o.result(jobID, rep)
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
			return jobs.OperationResult{Reason: err.Error(), Details: o.details(jobID)}
		}
	}
}

// result turns the terminal status into the step result: from this run's
// report, or from the persisted state when the status had been reported
// before a restart.
func (o *Op) result(jobID string, rep *reporter) jobs.OperationResult {
	status, details := rep.status, rep.details
	if status == "" {
		st, err := o.u.JobState(jobID)
		if err != nil || st == nil {
			return jobs.OperationResult{Reason: fmt.Sprintf("OTA state of job %s is missing after the update finished: %v", jobID, err)}
		}
		status, details = st.Status, st.Details(o.u.Flavor())
	}
	res := jobs.OperationResult{OK: status == protocol.JobSucceeded, Reason: details[ota.DetailReason], Details: details}
	if res.OK && res.Reason == "" {
		res.Reason = "update installed, verified and committed"
	}
	return res
}

func (o *Op) details(jobID string) map[string]string {
	st, err := o.u.JobState(jobID)
	if err != nil || st == nil {
		return nil
	}
	return st.Details(o.u.Flavor())
}

// reporter maps the updater's reports onto the engine step: IN_PROGRESS
// goes out as step progress (durable in the engine's state and outbox),
// and "rebooting" additionally waits until the Jobs service accepted it.
// Terminal statuses become the step result, which the engine reports.
type reporter struct {
	step    Step
	status  protocol.JobStatus
	details map[string]string
}

func (r *reporter) Report(ctx context.Context, status protocol.JobStatus, details map[string]string) error {
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
