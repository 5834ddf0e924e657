package jobs

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Limits of the job configurations, as AWS IoT Jobs documents them.
const (
	MaxRolloutPerMinute  = 1000
	MinPresignExpiresSec = 60
	MaxPresignExpiresSec = 3600
)

// Abort failure types (AbortCriteria.FailureType).
const (
	FailureFailed   = "FAILED"
	FailureRejected = "REJECTED"
	FailureTimedOut = "TIMED_OUT"
	FailureAll      = "ALL"
)

// AbortReasonCode is the reasonCode of a job its abort criteria canceled;
// its comment names the criterion that was met.
const AbortReasonCode = "AUTO_ABORT"

// AbortCriteria is one criterion of a job's abortConfig: when at least
// MinExecutedThings executions have finished (SUCCEEDED, FAILED,
// REJECTED or TIMED_OUT) and at least ThresholdPercentage percent of them
// finished with FailureType (ALL: any of FAILED, REJECTED, TIMED_OUT),
// the job is canceled (Action CANCEL, the only action AWS IoT has): its
// QUEUED executions are canceled, IN_PROGRESS ones continue, targets
// still waiting for the rollout get none.
type AbortCriteria struct {
	FailureType         string  `json:"failureType"`
	Action              string  `json:"action"`
	ThresholdPercentage float64 `json:"thresholdPercentage"`
	MinExecutedThings   int     `json:"minNumberOfExecutedThings"`
}

func (c AbortCriteria) counts(st protocol.JobStatus) bool {
	switch c.FailureType {
	case FailureAll:
		return st == protocol.JobFailed || st == protocol.JobRejected || st == protocol.JobTimedOut
	default:
		return string(st) == c.FailureType
	}
}

// checkConfigs validates the rollout, abort and presigned-URL settings.
func checkConfigs(in CreateJobInput) error {
	if in.MaximumPerMinute < 0 || in.MaximumPerMinute > MaxRolloutPerMinute {
		return fmt.Errorf("maximumPerMinute %d out of range 1..%d", in.MaximumPerMinute, MaxRolloutPerMinute)
	}
	for i, c := range in.Abort {
		switch c.FailureType {
		case FailureFailed, FailureRejected, FailureTimedOut, FailureAll:
		default:
			return fmt.Errorf("abort criteria %d: failureType %q must be FAILED, REJECTED, TIMED_OUT or ALL", i, c.FailureType)
		}
		if c.Action != "CANCEL" {
			return fmt.Errorf("abort criteria %d: action %q must be CANCEL", i, c.Action)
		}
		if c.ThresholdPercentage <= 0 || c.ThresholdPercentage > 100 {
			return fmt.Errorf("abort criteria %d: thresholdPercentage %v must be more than 0 and at most 100", i, c.ThresholdPercentage)
		}
		if c.MinExecutedThings < 1 {
			return fmt.Errorf("abort criteria %d: minNumberOfExecutedThings %d must be at least 1", i, c.MinExecutedThings)
		}
	}
	if in.PresignExpiresSec != 0 && (in.PresignExpiresSec < MinPresignExpiresSec || in.PresignExpiresSec > MaxPresignExpiresSec) {
		return fmt.Errorf("presignedUrlConfig expiresInSec %d out of range %d..%d", in.PresignExpiresSec, MinPresignExpiresSec, MaxPresignExpiresSec)
	}
	return nil
}

// checkAbort cancels j when one of its abort criteria is met (callers
// hold s.mu) and returns the notifications to publish.
func (s *Service) checkAbort(j *job) []outMsg {
	if len(j.abort) == 0 || j.status != JobInProgress {
		return nil
	}
	executed := 0
	for _, e := range j.execs {
		switch e.status {
		case protocol.JobSucceeded, protocol.JobFailed, protocol.JobRejected, protocol.JobTimedOut:
			executed++
		}
	}
	for _, c := range j.abort {
		if executed < c.MinExecutedThings {
			continue
		}
		failed := 0
		for _, e := range j.execs {
			if c.counts(e.status) {
				failed++
			}
		}
		pct := float64(failed) * 100 / float64(executed)
		if pct < c.ThresholdPercentage {
			continue
		}
		j.reasonCode = AbortReasonCode
		j.comment = fmt.Sprintf("abortConfig: %d of %d executed things (%.1f%%) ended %s, threshold %v%% with at least %d executed",
			failed, executed, pct, c.FailureType, c.ThresholdPercentage, c.MinExecutedThings)
		s.log.Warn("job aborted by its abort criteria", "job", j.id, "comment", j.comment)
		return s.cancelLocked(j, false)
	}
	return nil
}

// rollout is a job's jobExecutionsRolloutConfig state: at most perMinute
// executions are created per minute (Options.Minute); the other targets
// wait in pending, in order.
type rollout struct {
	perMinute   int
	windowStart time.Time
	inWindow    int
	pending     []string
	timer       *time.Timer
}

func (r *rollout) stop() {
	r.pending = nil
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}

// addTarget gives thing an execution of j now, or queues it behind the
// rollout rate (callers hold s.mu).
func (s *Service) addTarget(j *job, thing string) []outMsg {
	r := &j.rollout
	if r.perMinute <= 0 {
		return s.addExecution(j, thing)
	}
	now := s.opts.Now()
	if r.windowStart.IsZero() || now.Sub(r.windowStart) >= s.opts.Minute {
		r.windowStart, r.inWindow = now, 0
	}
	if r.inWindow < r.perMinute && len(r.pending) == 0 {
		r.inWindow++
		return s.addExecution(j, thing)
	}
	r.pending = append(r.pending, thing)
	if r.timer == nil {
		r.timer = time.AfterFunc(s.opts.Minute-now.Sub(r.windowStart), func() { s.releaseRollout(j) })
	}
	return nil
}

// releaseRollout starts a new rollout minute of j: up to perMinute
// waiting targets get their execution.
func (s *Service) releaseRollout(j *job) {
	s.mu.Lock()
	r := &j.rollout
	r.timer = nil
	if s.closed || j.status != JobInProgress || len(r.pending) == 0 {
		s.mu.Unlock()
		return
	}
	r.windowStart, r.inWindow = s.opts.Now(), 0
	n := min(r.perMinute, len(r.pending))
	batch := r.pending[:n]
	r.pending = r.pending[n:]
	var msgs []outMsg
	for _, thing := range batch {
		if j.execs[thing] == nil {
			r.inWindow++
			msgs = append(msgs, s.addExecution(j, thing)...)
		}
	}
	if len(r.pending) > 0 {
		r.timer = time.AfterFunc(s.opts.Minute, func() { s.releaseRollout(j) })
	}
	s.log.Info("job rollout released executions", "job", j.id, "released", n, "waiting", len(r.pending))
	s.updateJobStatus(j)
	s.signal()
	s.unlockAndPublish(msgs)
}

// Presigner turns the S3 URL of a presigned-URL placeholder into a URL
// that fetches the object for expires.
type Presigner func(s3URL string, expires time.Duration) (string, error)

// SetPresigner sets what replaces ${aws:iot:s3-presigned-url:URL}
// placeholders in the documents of jobs created with PresignExpiresSec.
func (s *Service) SetPresigner(p Presigner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.presign = p
}

// presignRE matches a presigned-URL placeholder; group 1 is the S3 URL.
var presignRE = regexp.MustCompile(`\$\{aws:iot:s3-presigned-url:([^}]*)\}`)

// checkPresign checks that every placeholder of doc can be presigned
// (callers hold s.mu).
func (s *Service) checkPresign(doc []byte) error {
	if s.presign == nil {
		return errors.New("the local IoT Core has no artifact store to presign URLs with")
	}
	for _, m := range presignRE.FindAllSubmatch(doc, -1) {
		if _, err := s.presign(string(m[1]), time.Minute); err != nil {
			return fmt.Errorf("placeholder %s: %w", m[0], err)
		}
	}
	return nil
}

// deviceDoc is j's document as a device receives it: with presigned URLs
// (valid from now on) in place of the placeholders when the job has a
// presignedUrlConfig (callers hold s.mu).
func (s *Service) deviceDoc(j *job) []byte {
	if j.presignSec <= 0 || s.presign == nil || !presignRE.Match(j.doc) {
		return j.doc
	}
	ttl := time.Duration(j.presignSec) * time.Second
	return presignRE.ReplaceAllFunc(j.doc, func(m []byte) []byte {
		sub := presignRE.FindSubmatch(m)
		u, err := s.presign(string(sub[1]), ttl)
		if err != nil {
			s.log.Warn("presigned URL placeholder left as is", "job", j.id, "url", string(sub[1]), "error", err)
			return m
		}
		// The placeholder sits inside a JSON string: escape the URL as
		// JSON would, without the quotes.
		q := strconv.Quote(u)
		return []byte(q[1 : len(q)-1])
	})
}
