package ota

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Step is an OTA step, persisted locally and reported as statusDetails.step.
type Step string

// Steps, in order. committed and rolled_back are terminal, and so is
// failed (an install that never succeeded: nothing to roll back).
const (
	StepDownloading Step = "downloading"
	StepInstalling  Step = "installing"
	StepRebooting   Step = "rebooting"
	StepVerifying   Step = "verifying"
	// StepCommitting is persisted (not reported) right before mender
	// commit: after a crash there, mender's own state says whether the
	// commit happened.
	StepCommitting Step = "committing"
	StepCommitted  Step = "committed"
	StepRolledBack Step = "rolled_back"
	StepFailed     Step = "failed"
)

// Terminal reports whether s ends the job.
func (s Step) Terminal() bool {
	return s == StepCommitted || s == StepRolledBack || s == StepFailed
}

func (s Step) valid() bool {
	switch s {
	case StepDownloading, StepInstalling, StepRebooting, StepVerifying, StepCommitting, StepCommitted, StepRolledBack, StepFailed:
		return true
	}
	return false
}

// statusDetails keys.
const (
	DetailStep    = "step"
	DetailAttempt = "attempt"
	DetailReason  = "reason"
	DetailMender  = "mender"
)

// stateVersion is the state's format version.
const stateVersion = 1

// LegacyStateFileName is where agents before the one job engine kept the
// OTA state, in the agent's state directory. The state now lives in the
// jobs engine's state file as the mender_install step's own state; a
// legacy file left by an agent updated in the middle of an OTA job is
// taken over (and removed) when the job's step resumes.
const LegacyStateFileName = "ota-state.json"

// State is the persisted OTA state. It is saved through the Session (the
// jobs engine's per-operation state: atomically, fsynced) before the step
// it names is acted on or reported.
type State struct {
	Version int    `json:"version"`
	JobID   string `json:"jobId"`
	// URL is the artifact URL, kept to retry an interrupted install. It is
	// a presigned URL (a short-lived credential): the file is 0600.
	URL string `json:"url"`
	// SHA256 is the artifact's expected SHA-256 from the job document
	// (empty: mender streams the URL itself).
	SHA256 string `json:"sha256,omitempty"`
	// OldArtifact is what `mender show-artifact` printed before the first
	// install attempt; after a crash in committing, a different name (and
	// no update in progress) proves the commit happened.
	OldArtifact string `json:"oldArtifact,omitempty"`
	// OldRoot is the device the root file system was mounted from before
	// the first install attempt (Config.RootDevice); after a crash in
	// committing, running from another one with no update in progress
	// proves the commit happened, even when the new artifact has the old
	// one's name (a re-install of the same release).
	OldRoot string             `json:"oldRoot,omitempty"`
	Step    Step               `json:"step"`
	Status  protocol.JobStatus `json:"status"`
	Attempt int                `json:"attempt"`
	Reason  string             `json:"reason,omitempty"`
	// Reported is true once the Session accepted this step's status.
	Reported bool `json:"reported"`
	// BootID is the kernel boot id when a reboot was requested; a
	// different boot id on resume proves the reboot happened.
	BootID string `json:"bootId,omitempty"`
	// AttemptBootID is the kernel boot id when the current install attempt
	// started: if the attempt is found interrupted, a different boot id
	// says the device restarted (power loss or reboot), the same one that
	// only the agent did.
	AttemptBootID string `json:"attemptBootId,omitempty"`
	// Reboots counts reboot requests in this step (a reboot command that
	// did not reboot is retried a bounded number of times).
	Reboots int `json:"reboots,omitempty"`
	// RollbackReboot is set when a rollback on the new partition needs a
	// reboot into the old one after the terminal status is reported.
	RollbackReboot bool `json:"rollbackReboot,omitempty"`
	// RollbackDone is set once mender rollback ran for a rolled_back step.
	RollbackDone bool      `json:"rollbackDone,omitempty"`
	UpdatedAt    time.Time `json:"updatedAt"`
}

// Details returns the statusDetails of s.
func (s State) Details(flavor Flavor) map[string]string {
	d := map[string]string{
		DetailStep:    string(s.Step),
		DetailAttempt: strconv.Itoa(s.Attempt),
	}
	if s.Reason != "" {
		d[DetailReason] = truncate(s.Reason, protocol.MaxStatusDetailsValueBytes)
	}
	if flavor != "" {
		d[DetailMender] = string(flavor)
	}
	return d
}

// truncate keeps the first n bytes of s, cut at a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return s[:i]
}

func (s State) validate() error {
	if s.Version != stateVersion {
		return fmt.Errorf("field version: %d is not %d", s.Version, stateVersion)
	}
	if s.JobID == "" {
		return errors.New("field jobId: empty")
	}
	if !s.Step.valid() {
		return fmt.Errorf("field step: unknown step %q", s.Step)
	}
	if s.Attempt < 0 {
		return fmt.Errorf("field attempt: negative (%d)", s.Attempt)
	}
	switch s.Status {
	case protocol.JobInProgress, protocol.JobSucceeded, protocol.JobFailed:
	default:
		return fmt.Errorf("field status: %q is not IN_PROGRESS, SUCCEEDED or FAILED", s.Status)
	}
	return nil
}

// DecodeState parses and checks a saved OTA state.
func DecodeState(b []byte) (*State, error) {
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse ota state: %w", err)
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("ota state: %w", err)
	}
	return &s, nil
}

func encodeState(s *State) (json.RawMessage, error) {
	s.Version = stateVersion
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("save ota state: %w", err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode ota state: %w", err)
	}
	return b, nil
}

// legacyState reads the state file an earlier agent left in dir; nil if
// there is none. An unreadable one is moved aside.
func (u *Updater) legacyState() (*State, error) {
	path := filepath.Join(u.cfg.StateDir, LegacyStateFileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read legacy ota state %s: %w", path, err)
	}
	st, err := DecodeState(b)
	if err != nil {
		dst := path + ".corrupt-" + strconv.FormatInt(time.Now().UnixNano(), 10)
		u.log.Error("ota: legacy state file unreadable, moved aside; continuing from the job's statusDetails", "err", err, "moved_to", dst)
		if rerr := os.Rename(path, dst); rerr != nil {
			return nil, fmt.Errorf("%w (and moving it aside failed: %w)", err, rerr)
		}
		return nil, atomicfile.SyncDir(u.cfg.StateDir)
	}
	return st, nil
}

// removeLegacyState deletes the legacy state file once its content is
// saved in the jobs engine's state (or belongs to a job that is over).
func (u *Updater) removeLegacyState() error {
	path := filepath.Join(u.cfg.StateDir, LegacyStateFileName)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove legacy ota state: %w", err)
	}
	return atomicfile.SyncDir(u.cfg.StateDir)
}
