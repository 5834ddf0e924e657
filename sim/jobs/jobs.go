// Package jobs implements the AWS IoT Jobs service of the simulated IoT
// Core: the device side MQTT API (notify, notify-next, get, start-next,
// <jobId>/get, <jobId>/update with optimistic versions, step and
// in-progress timeouts) and an operator side (create a job for things
// and thing groups, snapshot or continuous, cancel, list and wait for
// executions).
package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/observers"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// Limits enforced as AWS IoT Jobs does.
const (
	MaxDocumentBytes      = 32 * 1024
	MaxStepTimeoutMinutes = 10080
	maxDetailsKeyLen      = 128
)

var (
	jobIDRE      = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)
	detailsKeyRE = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)
)

// ErrorResponse is the rejected payload of the Jobs MQTT API.
type ErrorResponse = protocol.JobsErrorResponse

// ExecutionSummary is a JobExecutionSummary of the Jobs MQTT API.
type ExecutionSummary struct {
	JobID           string `json:"jobId"`
	QueuedAt        int64  `json:"queuedAt"`
	StartedAt       int64  `json:"startedAt,omitempty"`
	LastUpdatedAt   int64  `json:"lastUpdatedAt"`
	VersionNumber   int64  `json:"versionNumber"`
	ExecutionNumber int64  `json:"executionNumber"`
}

// PendingResponse answers GetPendingJobExecutions.
type PendingResponse struct {
	InProgressJobs []ExecutionSummary `json:"inProgressJobs"`
	QueuedJobs     []ExecutionSummary `json:"queuedJobs"`
	Timestamp      int64              `json:"timestamp"`
	ClientToken    string             `json:"clientToken,omitempty"`
}

// DescribeRequest is DescribeJobExecution's request.
type DescribeRequest struct {
	ExecutionNumber    int64  `json:"executionNumber,omitempty"`
	IncludeJobDocument *bool  `json:"includeJobDocument,omitempty"`
	ClientToken        string `json:"clientToken,omitempty"`
}

// NotifyMessage is published on $aws/things/<thing>/jobs/notify.
type NotifyMessage struct {
	Jobs      map[protocol.JobStatus][]ExecutionSummary `json:"jobs"`
	Timestamp int64                                     `json:"timestamp"`
}

// Job statuses.
const (
	JobInProgress = "IN_PROGRESS"
	JobCompleted  = "COMPLETED"
	JobCanceled   = "CANCELED"
)

// Errors of the operator API.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	ErrInvalid       = errors.New("invalid request")
)

// CreateJobInput describes a job to create.
type CreateJobInput struct {
	JobID    string          `json:"jobId"`
	Document json.RawMessage `json:"document"`
	Things   []string        `json:"things,omitempty"`
	Groups   []string        `json:"groups,omitempty"`
	// Continuous also targets things added to Groups later.
	Continuous bool `json:"continuous,omitempty"`
	// InProgressTimeoutMinutes times out executions that stay
	// IN_PROGRESS that long (timeoutConfig); 0 disables.
	InProgressTimeoutMinutes int64  `json:"inProgressTimeoutMinutes,omitempty"`
	Description              string `json:"description,omitempty"`
	// MaximumPerMinute, when positive, creates at most that many
	// executions per minute (jobExecutionsRolloutConfig); the other
	// targets wait for their turn (see rollout.go).
	MaximumPerMinute int `json:"maximumPerMinute,omitempty"`
	// Abort lists the criteria that cancel the job (abortConfig).
	Abort []AbortCriteria `json:"abort,omitempty"`
	// PresignExpiresSec, when positive, replaces every
	// ${aws:iot:s3-presigned-url:URL} placeholder in the document a device
	// receives by a URL valid that long (presignedUrlConfig.expiresInSec);
	// it needs SetPresigner.
	PresignExpiresSec int64 `json:"presignExpiresSec,omitempty"`
}

// Job is the operator view of a job.
type Job struct {
	JobID           string   `json:"jobId"`
	Status          string   `json:"status"`
	TargetSelection string   `json:"targetSelection"`
	Things          []string `json:"things,omitempty"`
	Groups          []string `json:"groups,omitempty"`
	Description     string   `json:"description,omitempty"`
	// Document is the job document's text exactly as CreateJob was given
	// it (as AWS IoT Jobs stores it).
	Document    json.RawMessage            `json:"document"`
	CreatedAt   time.Time                  `json:"createdAt"`
	CompletedAt time.Time                  `json:"completedAt,omitzero"`
	Counts      map[protocol.JobStatus]int `json:"counts"`
	// ReasonCode and Comment say why a job was canceled (CancelJob's, or
	// the abort criterion that canceled it).
	ReasonCode string `json:"reasonCode,omitempty"`
	Comment    string `json:"comment,omitempty"`
	// ForceCanceled is true when CancelJob was forced.
	ForceCanceled bool `json:"forceCanceled,omitempty"`
	// PendingRollout counts the targets waiting for the rollout rate.
	PendingRollout int `json:"pendingRollout,omitempty"`
	// MaximumPerMinute, Abort and PresignExpiresSec are the job's
	// rollout, abort and presigned-URL configurations.
	MaximumPerMinute  int             `json:"maximumPerMinute,omitempty"`
	Abort             []AbortCriteria `json:"abort,omitempty"`
	PresignExpiresSec int64           `json:"presignExpiresSec,omitempty"`
	// InProgressTimeoutMinutes is the job's timeoutConfig (0: none).
	InProgressTimeoutMinutes int64 `json:"inProgressTimeoutMinutes,omitempty"`
}

// Execution is the operator view of a job execution.
type Execution struct {
	JobID           string             `json:"jobId"`
	ThingName       string             `json:"thingName"`
	Status          protocol.JobStatus `json:"status"`
	StatusDetails   map[string]string  `json:"statusDetails,omitempty"`
	VersionNumber   int64              `json:"versionNumber"`
	ExecutionNumber int64              `json:"executionNumber"`
	QueuedAt        time.Time          `json:"queuedAt"`
	StartedAt       time.Time          `json:"startedAt,omitzero"`
	LastUpdatedAt   time.Time          `json:"lastUpdatedAt"`
}

// Options configure the service.
type Options struct {
	Registry *registry.Registry
	// Publish sends a message to the subscribers of topic (notify and
	// notify-next).
	Publish func(topic string, payload []byte)
	// Minute is how long a "minute" of stepTimeoutInMinutes and
	// inProgressTimeoutInMinutes lasts; tests shorten it. Default
	// time.Minute.
	Minute time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// Reply sends an answer to the requesting connection.
type Reply func(topic string, payload []byte)

type job struct {
	id string
	// doc is the document's text, byte for byte as given: it is never
	// decoded, so what devices receive is what the operator sent
	// (duplicate keys, number spellings and white space included).
	doc         []byte
	things      []string
	groups      []string
	continuous  bool
	timeoutMin  int64
	description string
	status      string
	createdAt   time.Time
	completedAt time.Time
	execs       map[string]*execution

	reasonCode    string
	comment       string
	forceCanceled bool
	abort         []AbortCriteria
	presignSec    int64
	rollout       rollout
}

type execution struct {
	job         *job
	thing       string
	seq         int64 // creation order across the service
	status      protocol.JobStatus
	details     map[string]string
	version     int64
	number      int64
	queuedAt    time.Time
	startedAt   time.Time
	lastUpdated time.Time
	stepTimer   *time.Timer
	jobTimer    *time.Timer
}

type outMsg struct {
	topic   string
	payload []byte
}

// Service is the Jobs service.
type Service struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	jobs    map[string]*job
	byThing map[string][]*execution
	seq     int64
	changed chan struct{}
	closed  bool

	pubMu sync.Mutex // keeps notifications in the order they were decided

	presign Presigner // under mu

	observers observers.Set[Answer] // Observe
}

// New creates the service and subscribes it to registry group changes
// (continuous jobs).
func New(opts Options) *Service {
	if opts.Minute <= 0 {
		opts.Minute = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Publish == nil {
		opts.Publish = func(string, []byte) {}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		opts:    opts,
		log:     opts.Logger.With("component", "jobs"),
		jobs:    map[string]*job{},
		byThing: map[string][]*execution{},
		changed: make(chan struct{}),
	}
	if opts.Registry != nil {
		opts.Registry.Observe(func(ev registry.Event) {
			if ev.Kind == registry.ThingAddedToGroup {
				s.thingJoinedGroup(ev.Thing, ev.Group)
			}
		})
	}
	return s
}

// Close stops the timers.
func (s *Service) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, j := range s.jobs {
		j.rollout.stop()
	}
	for _, execs := range s.byThing {
		for _, e := range execs {
			e.stopTimers()
		}
	}
}

// ---- helpers (callers hold s.mu) ----

func (s *Service) ts() int64 { return s.opts.Now().Unix() }

func (s *Service) signal() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (e *execution) stopTimers() {
	if e.stepTimer != nil {
		e.stepTimer.Stop()
		e.stepTimer = nil
	}
	if e.jobTimer != nil {
		e.jobTimer.Stop()
		e.jobTimer = nil
	}
}

func (e *execution) state() *protocol.JobExecutionState {
	return &protocol.JobExecutionState{Status: e.status, StatusDetails: maps.Clone(e.details), VersionNumber: e.version}
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// wire is the execution as the Jobs MQTT API sends it, with doc (the
// document as the device receives it, see deviceDoc) unless nil.
func (e *execution) wire(doc []byte) *protocol.JobExecution {
	x := &protocol.JobExecution{
		JobID: e.job.id, ThingName: e.thing, Status: e.status, StatusDetails: maps.Clone(e.details),
		QueuedAt: unix(e.queuedAt), StartedAt: unix(e.startedAt), LastUpdatedAt: unix(e.lastUpdated),
		VersionNumber: e.version, ExecutionNumber: e.number,
	}
	x.JobDocument = doc
	return x
}

// checkDocument accepts what AWS IoT Jobs accepts as a job document: JSON
// text (UTF-8) whose value is an object. It checks the syntax only; whether
// the document makes sense is for the device to decide.
func checkDocument(doc []byte) error {
	if !utf8.Valid(doc) {
		return errors.New("document must be UTF-8 text")
	}
	if !json.Valid(doc) {
		return errors.New("document must be a JSON object (it is not valid JSON)")
	}
	if t := bytes.TrimLeft(doc, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return errors.New("document must be a JSON object")
	}
	return nil
}

// The payloads that carry a job document are assembled around its exact
// text: encoding/json would reformat it (drop white space, escape "<").

// spliceField appends "key":raw to the JSON object obj (never empty).
func spliceField(obj []byte, key string, raw []byte) []byte {
	out := make([]byte, 0, len(obj)+len(key)+len(raw)+4)
	out = append(out, obj[:len(obj)-1]...)
	out = append(out, ',')
	out = strconv.AppendQuote(out, key)
	out = append(out, ':')
	out = append(out, raw...)
	return append(out, '}')
}

func executionJSON(x *protocol.JobExecution) []byte {
	c := *x
	c.JobDocument = nil
	b := mustJSON(c)
	if x.JobDocument != nil {
		b = spliceField(b, "jobDocument", x.JobDocument)
	}
	return b
}

// nextJSON encodes notify-next, start-next and describe answers.
func nextJSON(m protocol.NextJobMessage) []byte {
	x := m.Execution
	m.Execution = nil
	b := mustJSON(m)
	if x != nil {
		b = spliceField(b, "execution", executionJSON(x))
	}
	return b
}

func updateAcceptedJSON(m protocol.UpdateJobAccepted) []byte {
	doc := m.JobDocument
	m.JobDocument = nil
	b := mustJSON(m)
	if doc != nil {
		b = spliceField(b, "jobDocument", doc)
	}
	return b
}

func (e *execution) summary() ExecutionSummary {
	return ExecutionSummary{JobID: e.job.id, QueuedAt: unix(e.queuedAt), StartedAt: unix(e.startedAt), LastUpdatedAt: unix(e.lastUpdated), VersionNumber: e.version, ExecutionNumber: e.number}
}

func (e *execution) view() Execution {
	return Execution{
		JobID: e.job.id, ThingName: e.thing, Status: e.status, StatusDetails: maps.Clone(e.details),
		VersionNumber: e.version, ExecutionNumber: e.number, QueuedAt: e.queuedAt, StartedAt: e.startedAt, LastUpdatedAt: e.lastUpdated,
	}
}

// next returns the thing's next pending execution: IN_PROGRESS first,
// then QUEUED, each in creation order.
func (s *Service) next(thing string) *execution {
	var queued *execution
	for _, e := range s.byThing[thing] {
		if e.status == protocol.JobInProgress {
			return e
		}
		if e.status == protocol.JobQueued && queued == nil {
			queued = e
		}
	}
	return queued
}

func (s *Service) pendingSet(thing string) string {
	var ids []string
	for _, e := range s.byThing[thing] {
		if !e.status.Terminal() {
			ids = append(ids, e.job.id)
		}
	}
	return strings.Join(ids, "\x00")
}

type thingSnap struct {
	next    *execution
	pending string
}

func (s *Service) snap(thing string) thingSnap {
	return thingSnap{next: s.next(thing), pending: s.pendingSet(thing)}
}

// notifications compares a thing's state with before and returns the
// notify and notify-next messages AWS would publish.
func (s *Service) notifications(thing string, before thingSnap) []outMsg {
	var out []outMsg
	now := s.ts()
	after := s.snap(thing)
	if after.pending != before.pending {
		msg := NotifyMessage{Jobs: map[protocol.JobStatus][]ExecutionSummary{}, Timestamp: now}
		for _, e := range s.byThing[thing] {
			if !e.status.Terminal() {
				msg.Jobs[e.status] = append(msg.Jobs[e.status], e.summary())
			}
		}
		out = append(out, outMsg{protocol.JobsNotifyTopic(thing), mustJSON(msg)})
	}
	if after.next != before.next {
		msg := protocol.NextJobMessage{Timestamp: now}
		if after.next != nil {
			msg.Execution = after.next.wire(s.deviceDoc(after.next.job))
		}
		out = append(out, outMsg{protocol.JobsNotifyNextTopic(thing), nextJSON(msg)})
	}
	return out
}

// unlockAndPublish releases s.mu and sends msgs in decision order.
func (s *Service) unlockAndPublish(msgs []outMsg) { s.unlockReplyAndPublish(nil, msgs) }

// unlockReplyAndPublish releases s.mu, then sends the answer to the
// requester and the notifications, keeping the order in which changes
// were decided.
func (s *Service) unlockReplyAndPublish(answer func(), msgs []outMsg) {
	s.pubMu.Lock()
	s.mu.Unlock()
	defer s.pubMu.Unlock()
	if answer != nil {
		answer()
	}
	for _, m := range msgs {
		s.opts.Publish(m.topic, m.payload)
	}
}

func (s *Service) updateJobStatus(j *job) {
	if j.status != JobInProgress || j.continuous || len(j.rollout.pending) > 0 {
		return
	}
	for _, e := range j.execs {
		if !e.status.Terminal() {
			return
		}
	}
	j.status = JobCompleted
	j.completedAt = s.opts.Now()
}

// ---- operator API ----

// CreateJob creates a job and its executions (targets are resolved now;
// a continuous job also targets things that join its groups later).
func (s *Service) CreateJob(_ context.Context, in CreateJobInput) (Job, error) {
	if !jobIDRE.MatchString(in.JobID) {
		return Job{}, fmt.Errorf("create job: %w: jobId %q must match [a-zA-Z0-9_-]{1,64}", ErrInvalid, in.JobID)
	}
	if len(in.Document) > MaxDocumentBytes {
		return Job{}, fmt.Errorf("create job %s: %w: document is %d bytes, limit %d", in.JobID, ErrInvalid, len(in.Document), MaxDocumentBytes)
	}
	if err := checkDocument(in.Document); err != nil {
		return Job{}, fmt.Errorf("create job %s: %w: %v", in.JobID, ErrInvalid, err)
	}
	doc := append([]byte(nil), in.Document...)
	if len(in.Things) == 0 && len(in.Groups) == 0 {
		return Job{}, fmt.Errorf("create job %s: %w: no targets (things or groups)", in.JobID, ErrInvalid)
	}
	if in.Continuous && len(in.Groups) == 0 {
		return Job{}, fmt.Errorf("create job %s: %w: a continuous job needs a thing group target", in.JobID, ErrInvalid)
	}
	if in.InProgressTimeoutMinutes < 0 || in.InProgressTimeoutMinutes > MaxStepTimeoutMinutes {
		return Job{}, fmt.Errorf("create job %s: %w: inProgressTimeoutMinutes %d out of range 1..%d", in.JobID, ErrInvalid, in.InProgressTimeoutMinutes, MaxStepTimeoutMinutes)
	}
	if err := checkConfigs(in); err != nil {
		return Job{}, fmt.Errorf("create job %s: %w: %v", in.JobID, ErrInvalid, err)
	}
	targets := map[string]bool{}
	var order []string
	add := func(t string) {
		if !targets[t] {
			targets[t] = true
			order = append(order, t)
		}
	}
	for _, t := range in.Things {
		if s.opts.Registry != nil {
			if _, err := s.opts.Registry.Thing(t); err != nil {
				return Job{}, fmt.Errorf("create job %s: target thing %s: %w", in.JobID, t, ErrNotFound)
			}
		}
		add(t)
	}
	for _, g := range in.Groups {
		if s.opts.Registry == nil {
			return Job{}, fmt.Errorf("create job %s: %w: no registry to resolve groups", in.JobID, ErrInvalid)
		}
		members, err := s.opts.Registry.ThingsInGroup(g)
		if err != nil {
			return Job{}, fmt.Errorf("create job %s: target group %s: %w", in.JobID, g, ErrNotFound)
		}
		for _, m := range members {
			add(m)
		}
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return Job{}, fmt.Errorf("create job %s: service closed", in.JobID)
	}
	if _, ok := s.jobs[in.JobID]; ok {
		s.mu.Unlock()
		return Job{}, fmt.Errorf("create job %s: %w", in.JobID, ErrAlreadyExists)
	}
	if in.PresignExpiresSec > 0 {
		if err := s.checkPresign(doc); err != nil {
			s.mu.Unlock()
			return Job{}, fmt.Errorf("create job %s: %w: presignedUrlConfig: %v", in.JobID, ErrInvalid, err)
		}
	}
	j := &job{
		id: in.JobID, doc: doc, things: append([]string(nil), in.Things...), groups: append([]string(nil), in.Groups...),
		continuous: in.Continuous, timeoutMin: in.InProgressTimeoutMinutes, description: in.Description,
		status: JobInProgress, createdAt: s.opts.Now(), execs: map[string]*execution{},
		abort: slices.Clone(in.Abort), presignSec: in.PresignExpiresSec, rollout: rollout{perMinute: in.MaximumPerMinute},
	}
	s.jobs[j.id] = j
	var msgs []outMsg
	for _, thing := range order {
		msgs = append(msgs, s.addTarget(j, thing)...)
	}
	s.updateJobStatus(j)
	view := s.jobView(j)
	s.signal()
	s.log.Info("job created", "job", j.id, "targets", len(order), "continuous", j.continuous)
	s.unlockAndPublish(msgs)
	return view, nil
}

func (s *Service) addExecution(j *job, thing string) []outMsg {
	before := s.snap(thing)
	s.seq++
	now := s.opts.Now()
	e := &execution{job: j, thing: thing, seq: s.seq, status: protocol.JobQueued, version: 1, number: 1, queuedAt: now, lastUpdated: now}
	j.execs[thing] = e
	s.byThing[thing] = append(s.byThing[thing], e)
	return s.notifications(thing, before)
}

func (s *Service) thingJoinedGroup(thing, group string) {
	s.mu.Lock()
	var msgs []outMsg
	for _, j := range s.sortedJobs() {
		if !j.continuous || j.status != JobInProgress || j.execs[thing] != nil {
			continue
		}
		for _, g := range j.groups {
			if g == group {
				msgs = append(msgs, s.addTarget(j, thing)...)
				s.log.Info("continuous job targets new group member", "job", j.id, "thing", thing)
				break
			}
		}
	}
	if len(msgs) > 0 {
		s.signal()
	}
	s.unlockAndPublish(msgs)
}

func (s *Service) sortedJobs() []*job {
	out := make([]*job, 0, len(s.jobs))
	for _, j := range s.jobs {
		out = append(out, j)
	}
	sort.Slice(out, func(a, b int) bool {
		return out[a].createdAt.Before(out[b].createdAt) || (out[a].createdAt.Equal(out[b].createdAt) && out[a].id < out[b].id)
	})
	return out
}

func (s *Service) jobView(j *job) Job {
	v := Job{
		JobID: j.id, Status: j.status, TargetSelection: "SNAPSHOT", Things: j.things, Groups: j.groups,
		Description: j.description, Document: j.doc, CreatedAt: j.createdAt, CompletedAt: j.completedAt,
		Counts: map[protocol.JobStatus]int{}, ReasonCode: j.reasonCode, Comment: j.comment, ForceCanceled: j.forceCanceled,
		PendingRollout: len(j.rollout.pending), MaximumPerMinute: j.rollout.perMinute, Abort: slices.Clone(j.abort),
		PresignExpiresSec: j.presignSec, InProgressTimeoutMinutes: j.timeoutMin,
	}
	if j.continuous {
		v.TargetSelection = "CONTINUOUS"
	}
	for _, e := range j.execs {
		v.Counts[e.status]++
	}
	return v
}

// Job describes a job.
func (s *Service) Job(jobID string) (Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[jobID]
	if !ok {
		return Job{}, fmt.Errorf("job %s: %w", jobID, ErrNotFound)
	}
	return s.jobView(j), nil
}

// Jobs lists jobs in creation order.
func (s *Service) Jobs() []Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Job
	for _, j := range s.sortedJobs() {
		out = append(out, s.jobView(j))
	}
	return out
}

// Executions lists a job's executions sorted by thing name.
func (s *Service) Executions(jobID string) ([]Execution, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[jobID]
	if !ok {
		return nil, fmt.Errorf("job %s: %w", jobID, ErrNotFound)
	}
	return s.executionViews(j), nil
}

func (s *Service) executionViews(j *job) []Execution {
	out := make([]Execution, 0, len(j.execs))
	for _, e := range j.execs {
		out = append(out, e.view())
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ThingName < out[b].ThingName })
	return out
}

// Execution describes one execution.
func (s *Service) Execution(jobID, thing string) (Execution, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[jobID]
	if !ok {
		return Execution{}, fmt.Errorf("job %s: %w", jobID, ErrNotFound)
	}
	e, ok := j.execs[thing]
	if !ok {
		return Execution{}, fmt.Errorf("job %s execution on %s: %w", jobID, thing, ErrNotFound)
	}
	return e.view(), nil
}

// WaitForExecutions blocks until every execution of the job is in a
// terminal state (or ctx ends) and returns them.
func (s *Service) WaitForExecutions(ctx context.Context, jobID string) ([]Execution, error) {
	for {
		s.mu.Lock()
		j, ok := s.jobs[jobID]
		if !ok {
			s.mu.Unlock()
			return nil, fmt.Errorf("job %s: %w", jobID, ErrNotFound)
		}
		done := true
		for _, e := range j.execs {
			if !e.status.Terminal() {
				done = false
				break
			}
		}
		views := s.executionViews(j)
		ch := s.changed
		s.mu.Unlock()
		if done {
			return views, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return views, fmt.Errorf("wait for job %s: %w", jobID, ctx.Err())
		}
	}
}

// CancelJob cancels a job: QUEUED executions become CANCELED, and with
// force IN_PROGRESS ones too; targets still waiting for the rollout get
// none.
func (s *Service) CancelJob(jobID string, force bool) (Job, error) {
	return s.CancelJobWithReason(jobID, force, "", "")
}

// CancelJobWithReason is CancelJob recording reasonCode and comment (as
// AWS IoT's CancelJob does).
func (s *Service) CancelJobWithReason(jobID string, force bool, reasonCode, comment string) (Job, error) {
	s.mu.Lock()
	j, ok := s.jobs[jobID]
	if !ok {
		s.mu.Unlock()
		return Job{}, fmt.Errorf("cancel job %s: %w", jobID, ErrNotFound)
	}
	if j.status == JobCompleted {
		// As AWS IoT: a completed job cannot be canceled.
		s.mu.Unlock()
		return Job{}, fmt.Errorf("cancel job %s: %w: the job is already COMPLETED", jobID, ErrInvalid)
	}
	var msgs []outMsg
	if j.status != JobCanceled {
		j.reasonCode, j.comment, j.forceCanceled = reasonCode, comment, force
		msgs = s.cancelLocked(j, force)
	}
	view := s.jobView(j)
	s.unlockAndPublish(msgs)
	return view, nil
}

// cancelLocked cancels j (callers hold s.mu) and returns the
// notifications to publish.
func (s *Service) cancelLocked(j *job, force bool) []outMsg {
	var msgs []outMsg
	j.status = JobCanceled
	j.completedAt = s.opts.Now()
	j.rollout.stop()
	for _, e := range j.execs {
		if e.status == protocol.JobQueued || (force && e.status == protocol.JobInProgress) {
			before := s.snap(e.thing)
			e.status = protocol.JobCanceled
			e.version++
			e.lastUpdated = s.opts.Now()
			e.stopTimers()
			msgs = append(msgs, s.notifications(e.thing, before)...)
		}
	}
	s.signal()
	return msgs
}

// ---- timeouts ----

func (s *Service) armStepTimer(e *execution, minutes int64) {
	if e.stepTimer != nil {
		e.stepTimer.Stop()
		e.stepTimer = nil
	}
	if minutes <= 0 {
		return
	}
	e.stepTimer = time.AfterFunc(time.Duration(minutes)*s.opts.Minute, func() { s.timeout(e, "step timeout") })
}

func (s *Service) armJobTimer(e *execution) {
	if e.job.timeoutMin <= 0 || e.jobTimer != nil {
		return
	}
	e.jobTimer = time.AfterFunc(time.Duration(e.job.timeoutMin)*s.opts.Minute, func() { s.timeout(e, "in-progress timeout") })
}

func (s *Service) timeout(e *execution, why string) {
	s.mu.Lock()
	if s.closed || e.status.Terminal() {
		s.mu.Unlock()
		return
	}
	before := s.snap(e.thing)
	e.status = protocol.JobTimedOut
	e.version++
	e.lastUpdated = s.opts.Now()
	e.stopTimers()
	s.updateJobStatus(e.job)
	msgs := s.notifications(e.thing, before)
	msgs = append(msgs, s.checkAbort(e.job)...)
	s.signal()
	s.log.Info("job execution timed out", "job", e.job.id, "thing", e.thing, "reason", why)
	s.unlockAndPublish(msgs)
}

// ---- device API ----

// Match reports whether topic is a Jobs API request topic (as opposed to
// the response and notification topics the service publishes).
func (s *Service) Match(topic string) bool {
	thing, rest, ok := splitJobsTopic(topic)
	if !ok || thing == "" {
		return false
	}
	if rest == "notify" || rest == "notify-next" || strings.HasSuffix(rest, "/accepted") || strings.HasSuffix(rest, "/rejected") {
		return false
	}
	return true
}

func splitJobsTopic(topic string) (thing, rest string, ok bool) {
	const prefix = "$aws/things/"
	if !strings.HasPrefix(topic, prefix) {
		return "", "", false
	}
	thing, rest, ok = strings.Cut(topic[len(prefix):], "/jobs/")
	if !ok || strings.Contains(thing, "/") {
		return "", "", false
	}
	return thing, rest, true
}

// Handle answers one request. Answers go to the requesting client only.
func (s *Service) Handle(_ context.Context, topic string, payload []byte, reply Reply) {
	thing, rest, ok := splitJobsTopic(topic)
	if !ok {
		return
	}
	rejectTo := func(code, msg, token string, st *protocol.JobExecutionState) {
		s.log.Info("jobs request rejected", "thing", thing, "topic", topic, "code", code, "message", msg)
		reply(protocol.Rejected(topic), mustJSON(ErrorResponse{Code: code, Message: msg, ClientToken: token, Timestamp: s.ts(), ExecutionState: st}))
	}
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	if !json.Valid(payload) || !utf8.Valid(payload) {
		rejectTo(protocol.ErrCodeInvalidJSON, "request payload is not valid JSON", "", nil)
		return
	}
	switch {
	case rest == "get":
		var req struct {
			ClientToken string `json:"clientToken"`
		}
		if err := json.Unmarshal(payload, &req); err != nil {
			rejectTo(protocol.ErrCodeInvalidRequest, err.Error(), "", nil)
			return
		}
		reply(protocol.Accepted(topic), mustJSON(s.pending(thing, req.ClientToken)))
	case rest == "start-next":
		var req protocol.StartNextRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			rejectTo(protocol.ErrCodeInvalidRequest, err.Error(), "", nil)
			return
		}
		s.startNext(thing, topic, req, reply, rejectTo)
	default:
		jobID, op, ok := strings.Cut(rest, "/")
		if !ok || (op != "get" && op != "update") {
			rejectTo(protocol.ErrCodeInvalidTopic, "topic does not map to a Jobs API operation", "", nil)
			return
		}
		if op == "get" {
			var req DescribeRequest
			if err := json.Unmarshal(payload, &req); err != nil {
				rejectTo(protocol.ErrCodeInvalidRequest, err.Error(), "", nil)
				return
			}
			if jobID != "$next" && !jobIDRE.MatchString(jobID) {
				rejectTo(protocol.ErrCodeInvalidTopic, "invalid job id in topic", req.ClientToken, nil)
				return
			}
			s.describe(thing, jobID, topic, req, reply, rejectTo)
			return
		}
		var req protocol.UpdateJobRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			rejectTo(protocol.ErrCodeInvalidRequest, err.Error(), "", nil)
			return
		}
		if !jobIDRE.MatchString(jobID) {
			rejectTo(protocol.ErrCodeInvalidTopic, "invalid job id in topic", req.ClientToken, nil)
			return
		}
		s.update(thing, jobID, topic, req, reply, rejectTo)
	}
}

func (s *Service) pending(thing, token string) PendingResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := PendingResponse{InProgressJobs: []ExecutionSummary{}, QueuedJobs: []ExecutionSummary{}, Timestamp: s.ts(), ClientToken: token}
	for _, e := range s.byThing[thing] {
		switch e.status {
		case protocol.JobInProgress:
			resp.InProgressJobs = append(resp.InProgressJobs, e.summary())
		case protocol.JobQueued:
			resp.QueuedJobs = append(resp.QueuedJobs, e.summary())
		}
	}
	return resp
}

// ValidateStatusDetails checks what AWS IoT Jobs documents for
// statusDetails (UpdateJobExecution, StartNextPendingJobExecution): at
// most 10 entries; keys of 1-128 characters matching [a-zA-Z0-9:_-]+;
// values of 1-1024 characters matching [^\p{C}]+ with two exceptions
// that AWS demonstrably accepts: line feed and tab. The AWS IoT Device
// Client sends its output tails with exactly these two control characters
// kept (its filter turns every other one into a space), and its
// documentation shows AWS storing them (describe-job-execution returning
// "stderr": "...No such file or directory\n"). Rejecting them would leave
// every Device Client job that prints output stuck IN_PROGRESS. Every
// other character of category C (carriage return, escape, NUL, DEL,
// U+200B and other format characters, unassigned code points, invalid
// UTF-8) is still rejected.
func ValidateStatusDetails(d map[string]string) error {
	if len(d) > protocol.MaxStatusDetailsEntries {
		return fmt.Errorf("statusDetails has %d entries, at most %d allowed", len(d), protocol.MaxStatusDetailsEntries)
	}
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := d[k]
		if !detailsKeyRE.MatchString(k) {
			return fmt.Errorf("statusDetails key %q must be 1-%d characters of [a-zA-Z0-9:_-]", k, maxDetailsKeyLen)
		}
		n := utf8.RuneCountInString(v)
		if n < 1 || n > protocol.MaxStatusDetailsValueBytes {
			return fmt.Errorf("statusDetails[%s] is %d characters, must be 1-%d", k, n, protocol.MaxStatusDetailsValueBytes)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("statusDetails[%s] is not valid UTF-8", k)
		}
		for i, r := range v {
			if r == '\n' || r == '\t' {
				continue
			}
			if unicode.Is(unicode.C, r) || !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z) {
				return fmt.Errorf("statusDetails[%s] has a control, format, unassigned or invalid character %U at byte %d (pattern [^\\p{C}]+; only line feed and tab are accepted besides)", k, r, i)
			}
		}
	}
	return nil
}

func validStepTimeout(m int64) bool {
	return m == 0 || m == -1 || (m >= 1 && m <= MaxStepTimeoutMinutes)
}

func (s *Service) startNext(thing, topic string, req protocol.StartNextRequest, reply Reply, rejectTo func(string, string, string, *protocol.JobExecutionState)) {
	asked := Answer{Thing: thing, Op: "start-next", Status: protocol.JobInProgress, StatusDetails: req.StatusDetails}
	rejectTo = observedRejection(s, asked, rejectTo)
	if err := ValidateStatusDetails(req.StatusDetails); err != nil {
		rejectTo(protocol.ErrCodeInvalidRequest, err.Error(), req.ClientToken, nil)
		return
	}
	if !validStepTimeout(req.StepTimeoutInMinutes) {
		rejectTo(protocol.ErrCodeInvalidRequest, fmt.Sprintf("stepTimeoutInMinutes %d must be -1 or 1..%d", req.StepTimeoutInMinutes, MaxStepTimeoutMinutes), req.ClientToken, nil)
		return
	}
	s.mu.Lock()
	e := s.next(thing)
	resp := protocol.NextJobMessage{Timestamp: s.ts(), ClientToken: req.ClientToken}
	var msgs []outMsg
	if e != nil {
		before := s.snap(thing)
		if e.status == protocol.JobQueued {
			now := s.opts.Now()
			e.status = protocol.JobInProgress
			e.startedAt = now
			e.lastUpdated = now
			e.version++
			if req.StatusDetails != nil {
				e.details = maps.Clone(req.StatusDetails)
			}
			s.armJobTimer(e)
		}
		if req.StepTimeoutInMinutes != 0 {
			s.armStepTimer(e, req.StepTimeoutInMinutes)
		}
		resp.Execution = e.wire(s.deviceDoc(e.job))
		msgs = s.notifications(thing, before)
		s.signal()
		asked.JobID, asked.Version = e.job.id, e.version
	}
	asked.Accepted = true
	s.unlockReplyAndPublish(func() {
		s.observe(asked)
		reply(protocol.Accepted(topic), nextJSON(resp))
	}, msgs)
}

func (s *Service) describe(thing, jobID, topic string, req DescribeRequest, reply Reply, rejectTo func(string, string, string, *protocol.JobExecutionState)) {
	withDoc := req.IncludeJobDocument == nil || *req.IncludeJobDocument
	s.mu.Lock()
	var e *execution
	if jobID == "$next" {
		e = s.next(thing)
	} else {
		j, ok := s.jobs[jobID]
		if ok {
			e = j.execs[thing]
		}
		if e == nil || (req.ExecutionNumber != 0 && req.ExecutionNumber != e.number) {
			s.mu.Unlock()
			rejectTo(protocol.ErrCodeResourceNotFound, fmt.Sprintf("job execution %s on %s not found", jobID, thing), req.ClientToken, nil)
			return
		}
	}
	resp := protocol.NextJobMessage{Timestamp: s.ts(), ClientToken: req.ClientToken}
	if e != nil {
		var doc []byte
		if withDoc {
			doc = s.deviceDoc(e.job)
		}
		resp.Execution = e.wire(doc)
	}
	s.mu.Unlock()
	reply(protocol.Accepted(topic), nextJSON(resp))
}

func (s *Service) update(thing, jobID, topic string, req protocol.UpdateJobRequest, reply Reply, rejectTo func(string, string, string, *protocol.JobExecutionState)) {
	asked := Answer{Thing: thing, JobID: jobID, Op: "update", Status: req.Status, StatusDetails: req.StatusDetails, ExpectedVersion: req.ExpectedVersion}
	rejectTo = observedRejection(s, asked, rejectTo)
	switch req.Status {
	case protocol.JobInProgress, protocol.JobSucceeded, protocol.JobFailed, protocol.JobRejected:
	case "":
		rejectTo(protocol.ErrCodeInvalidRequest, "status is required", req.ClientToken, nil)
		return
	default:
		rejectTo(protocol.ErrCodeInvalidRequest, fmt.Sprintf("status %q cannot be set by a device (IN_PROGRESS, SUCCEEDED, FAILED or REJECTED)", req.Status), req.ClientToken, nil)
		return
	}
	if err := ValidateStatusDetails(req.StatusDetails); err != nil {
		rejectTo(protocol.ErrCodeInvalidRequest, err.Error(), req.ClientToken, nil)
		return
	}
	if !validStepTimeout(req.StepTimeoutInMinutes) {
		rejectTo(protocol.ErrCodeInvalidRequest, fmt.Sprintf("stepTimeoutInMinutes %d must be -1 or 1..%d", req.StepTimeoutInMinutes, MaxStepTimeoutMinutes), req.ClientToken, nil)
		return
	}
	s.mu.Lock()
	j, ok := s.jobs[jobID]
	var e *execution
	if ok {
		e = j.execs[thing]
	}
	if e == nil || (req.ExecutionNumber != 0 && req.ExecutionNumber != e.number) {
		s.mu.Unlock()
		rejectTo(protocol.ErrCodeResourceNotFound, fmt.Sprintf("job execution %s on %s not found", jobID, thing), req.ClientToken, nil)
		return
	}
	if req.ExpectedVersion != 0 && req.ExpectedVersion != e.version {
		st := e.state()
		s.mu.Unlock()
		rejectTo(protocol.ErrCodeVersionMismatch, fmt.Sprintf("expected version %d, current version %d", req.ExpectedVersion, st.VersionNumber), req.ClientToken, st)
		return
	}
	if e.status.Terminal() {
		st := e.state()
		s.mu.Unlock()
		rejectTo(protocol.ErrCodeInvalidStateTransition, fmt.Sprintf("job execution is in terminal state %s", st.Status), req.ClientToken, st)
		return
	}
	before := s.snap(thing)
	now := s.opts.Now()
	if e.status == protocol.JobQueued && req.Status == protocol.JobInProgress {
		e.startedAt = now
	}
	e.status = req.Status
	if req.StatusDetails != nil {
		e.details = maps.Clone(req.StatusDetails)
	}
	e.version++
	e.lastUpdated = now
	if e.status.Terminal() {
		e.stopTimers()
		s.updateJobStatus(j)
	} else {
		s.armJobTimer(e)
		if req.StepTimeoutInMinutes != 0 {
			s.armStepTimer(e, req.StepTimeoutInMinutes)
		}
	}
	resp := protocol.UpdateJobAccepted{Timestamp: s.ts(), ClientToken: req.ClientToken}
	if req.IncludeJobExecutionState {
		resp.ExecutionState = e.state()
	}
	if req.IncludeJobDocument {
		resp.JobDocument = s.deviceDoc(j)
	}
	msgs := s.notifications(thing, before)
	if e.status.Terminal() {
		msgs = append(msgs, s.checkAbort(j)...)
	}
	s.signal()
	asked.Accepted, asked.Version = true, e.version
	s.unlockReplyAndPublish(func() {
		s.observe(asked)
		reply(protocol.Accepted(topic), updateAcceptedJSON(resp))
	}, msgs)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("jobs: marshal %T: %v", v, err))
	}
	return b
}
