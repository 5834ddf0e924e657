package ota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Session is one OTA job's link to the jobs engine (the mender_install
// operation's step implements it).
//
// Report delivers a status update; it must be durable and ordered
// (persisted before it returns) so a status reported before a reboot is
// never lost, and returning nil for the "rebooting" step is the
// confirmation the updater waits for before it reboots.
//
// SavedState returns the OTA state last saved for the job (nil if none)
// and SaveState persists a new one, durably, before it returns: the
// engine's per-operation state, kept in the job's state file.
type Session interface {
	Report(ctx context.Context, status protocol.JobStatus, details map[string]string) error
	SavedState() json.RawMessage
	SaveState(ctx context.Context, state json.RawMessage) error
}

// Job is one job execution handed to the updater.
type Job struct {
	ID string
	// Document is the step's input, parsed and validated against the
	// device's Policy once, when the job document was parsed.
	Document Document
	// StatusDetails are the execution's current statusDetails as the Jobs
	// service returned them (start-next, notify-next or describe); used
	// only when the local state was lost.
	StatusDetails map[string]string
}

// ErrRebootPending is returned by Run after the reboot command
// was issued: the job stays IN_PROGRESS (step rebooting) and continues on
// the next start of the agent.
var ErrRebootPending = errors.New("ota: reboot pending")

// HealthCheck is a command that must exit 0 within Timeout before an
// update is committed.
type HealthCheck struct {
	Name    string
	Command []string
	Timeout time.Duration
}

// Config configures an Updater. Zero values take the defaults noted.
type Config struct {
	// StateDir is the agent's state directory (required): artifacts with
	// a sha256 are downloaded there, and agents before the one job engine
	// left LegacyStateFileName there, which a resumed job takes over.
	StateDir string
	// ThingName is used in progress topics (required when Publisher is set).
	ThingName string
	// Mender locates the mender client.
	Mender MenderConfig
	// MaxAttempts bounds install attempts (default 3).
	MaxAttempts int
	// RetryDelay is the pause between install attempts (default 30s).
	RetryDelay time.Duration
	// InstallTimeout bounds one mender install (default 2h).
	InstallTimeout time.Duration
	// CommandTimeout bounds commit, rollback and the pre-reboot hook
	// (default 10m).
	CommandTimeout time.Duration
	// AllowHTTP accepts http:// artifact URLs (local demos only).
	AllowHTTP bool
	// AllowedHosts are the hosts artifacts may come from (see
	// Policy.AllowedHosts); empty rejects every job.
	AllowedHosts []string
	// ArtifactVerifyKey is the PEM public key file that mender's
	// configuration names as ArtifactVerifyKey. When set, every install
	// first checks that it exists and holds a public key, and fails the
	// job otherwise (mender without its key would install unsigned
	// artifacts).
	ArtifactVerifyKey string
	// HTTPClient downloads artifacts whose job document carries sha256
	// (default: a client with the system roots that follows no
	// redirects).
	HTTPClient *http.Client

	// Publisher receives progress messages; nil disables progress.
	Publisher Publisher
	// ProgressInterval is the minimum time between two progress messages
	// that do not cross a 10% boundary (default 10s).
	ProgressInterval time.Duration
	// ReferenceProgress also publishes {"progress": line, "ts": ...} on
	// mender/<thing>/job/<jobId>/progress (the reference agent's topic).
	ReferenceProgress bool

	// PreRebootCommand runs before every reboot (e.g. stop services);
	// empty for none. A failure is logged and the reboot goes ahead.
	PreRebootCommand []string
	// RebootCommand reboots the device (default systemctl reboot).
	RebootCommand []string
	// RebootWait is how long Run waits, after the reboot command, to be
	// stopped by the shutdown before returning ErrRebootPending
	// (default 5m; negative returns at once).
	RebootWait time.Duration
	// MaxReboots bounds reboot requests that did not reboot (default 3).
	MaxReboots int
	// NoRollbackReboot skips the reboot into the old partition after a
	// rollback made on the new one (health check failure).
	NoRollbackReboot bool

	// Connectivity is the agent's own check that it is connected to AWS
	// IoT Core; it must return nil once connected or an error when ctx
	// ends. nil skips it.
	Connectivity func(ctx context.Context) error
	// ConnectivityTimeout bounds Connectivity (default 2m).
	ConnectivityTimeout time.Duration
	// HealthChecks run after Connectivity; each must exit 0.
	HealthChecks []HealthCheck

	// BootID returns the kernel's boot id (default: read
	// /proc/sys/kernel/random/boot_id). Tests replace it to simulate a
	// reboot.
	BootID func() (string, error)
	// RootDevice returns the device the running root file system is
	// mounted from (default ReadRootDevice). Tests replace it to model
	// which partition runs.
	RootDevice func() (string, error)
	// Now returns the time (default time.Now).
	Now func() time.Time
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultMaxAttempts         = 3
	DefaultRetryDelay          = 30 * time.Second
	DefaultInstallTimeout      = 2 * time.Hour
	DefaultCommandTimeout      = 10 * time.Minute
	DefaultProgressInterval    = 10 * time.Second
	DefaultRebootWait          = 5 * time.Minute
	DefaultMaxReboots          = 3
	DefaultConnectivityTimeout = 2 * time.Minute
	DefaultHealthCheckTimeout  = time.Minute
	bootIDPath                 = "/proc/sys/kernel/random/boot_id"
)

// DefaultRebootCommand reboots through systemd, which stops services
// (and the agent, with SIGTERM) in order.
func DefaultRebootCommand() []string { return []string{"systemctl", "reboot"} }

// ReadBootID reads the kernel's boot id.
func ReadBootID() (string, error) {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Updater runs mender_install jobs. One job at a time; safe for concurrent
// use.
type Updater struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	mender *Mender
}

// New returns an Updater. It checks the configuration and that the boot id
// is readable, but does not look for mender until a job runs.
func New(cfg Config) (*Updater, error) {
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	if cfg.InstallTimeout == 0 {
		cfg.InstallTimeout = DefaultInstallTimeout
	}
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = DefaultCommandTimeout
	}
	if cfg.ProgressInterval == 0 {
		cfg.ProgressInterval = DefaultProgressInterval
	}
	if len(cfg.RebootCommand) == 0 {
		cfg.RebootCommand = DefaultRebootCommand()
	}
	if cfg.RebootWait == 0 {
		cfg.RebootWait = DefaultRebootWait
	}
	if cfg.MaxReboots == 0 {
		cfg.MaxReboots = DefaultMaxReboots
	}
	if cfg.ConnectivityTimeout == 0 {
		cfg.ConnectivityTimeout = DefaultConnectivityTimeout
	}
	if cfg.BootID == nil {
		cfg.BootID = ReadBootID
	}
	if cfg.RootDevice == nil {
		cfg.RootDevice = ReadRootDevice
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.MaxAttempts < 0:
		return nil, fmt.Errorf("ota config: maxAttempts: %d is negative", cfg.MaxAttempts)
	case cfg.MaxReboots < 0:
		return nil, fmt.Errorf("ota config: maxReboots: %d is negative", cfg.MaxReboots)
	case cfg.RetryDelay < 0, cfg.InstallTimeout < 0, cfg.CommandTimeout < 0, cfg.ProgressInterval < 0, cfg.ConnectivityTimeout < 0:
		return nil, errors.New("ota config: durations must not be negative (except rebootWait)")
	case cfg.Publisher != nil && cfg.ThingName == "":
		return nil, errors.New("ota config: thingName: required to publish progress")
	case cfg.RebootCommand[0] == "":
		return nil, errors.New("ota config: rebootCommand: empty program")
	}
	for i, hc := range cfg.HealthChecks {
		if len(hc.Command) == 0 || hc.Command[0] == "" {
			return nil, fmt.Errorf("ota config: healthChecks[%d]: empty command", i)
		}
		if hc.Timeout < 0 {
			return nil, fmt.Errorf("ota config: healthChecks[%d].timeout: negative", i)
		}
	}
	if _, err := cfg.BootID(); err != nil {
		return nil, fmt.Errorf("ota config: boot id: %w", err)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("ota config: stateDir: empty")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("ota config: stateDir: %w", err)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = defaultHTTPClient()
	}
	if len(cfg.AllowedHosts) == 0 {
		cfg.Logger.Warn("ota: no artifact host is allowed (ota.allowedHosts is empty): every mender_install job will be rejected")
	}
	return &Updater{cfg: cfg, log: cfg.Logger}, nil
}

// Policy is what a job document must satisfy on this device.
func (u *Updater) Policy() Policy {
	return Policy{AllowHTTP: u.cfg.AllowHTTP, AllowedHosts: slices.Clone(u.cfg.AllowedHosts)}
}

// Run starts or continues job, whose state s holds. It returns nil once
// a terminal status (SUCCEEDED or FAILED) has been reported, ErrRebootPending
// after it asked for a reboot, and any other error when it was interrupted
// (the job stays IN_PROGRESS; call Run again).
func (u *Updater) Run(ctx context.Context, job Job, s Session) error {
	if job.ID == "" {
		return errors.New("ota: job id is empty")
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	st, err := u.start(ctx, job, s)
	if err != nil {
		return err
	}
	return u.drive(ctx, st, s)
}

// start returns the job's state: the one saved in the session, else the
// one an earlier agent left in its legacy state file (taken over), else
// one rebuilt from the job's statusDetails.
func (u *Updater) start(ctx context.Context, job Job, s Session) (*State, error) {
	if raw := s.SavedState(); len(raw) > 0 {
		st, err := DecodeState(raw)
		if err == nil && st.JobID == job.ID {
			return st, nil
		}
		u.log.Error("ota: saved state unusable; continuing from the job's statusDetails", "job", job.ID, "err", err)
	}
	legacy, err := u.legacyState()
	if err != nil {
		return nil, fmt.Errorf("ota: %w", err)
	}
	var st *State
	if legacy != nil && legacy.JobID == job.ID {
		u.log.Info("ota: taking over the state file of the previous agent", "job", job.ID, "step", legacy.Step, "attempt", legacy.Attempt)
		st = legacy
	} else {
		if legacy != nil && !legacy.Step.Terminal() {
			u.log.Warn("ota: abandoning unfinished OTA state of another job", "job", legacy.JobID, "step", legacy.Step)
		}
		st = u.reconstruct(job)
	}
	if err := u.save(ctx, s, st); err != nil {
		return nil, err
	}
	if legacy != nil {
		if err := u.removeLegacyState(); err != nil {
			u.log.Warn("ota: legacy state file kept", "err", err)
		}
	}
	return st, nil
}

// reconstruct builds the starting state of a job without local state: a
// fresh job, or one whose local state was lost (its statusDetails say how
// far it got).
func (u *Updater) reconstruct(job Job) *State {
	doc := job.Document
	st := &State{JobID: job.ID, URL: doc.URL, SHA256: strings.ToLower(doc.SHA256), Step: StepDownloading, Status: protocol.JobInProgress, UpdatedAt: u.cfg.Now()}
	step := Step(job.StatusDetails[DetailStep])
	attempt, _ := strconv.Atoi(job.StatusDetails[DetailAttempt])
	if attempt < 0 {
		attempt = 0
	}
	reason := job.StatusDetails[DetailReason]
	switch step {
	case "":
		return st
	case StepDownloading, StepInstalling:
		// Interrupted mid-install: that attempt counts; retry after a
		// rollback of whatever mender left behind.
		st.Step, st.Attempt, st.Reason = step, max(attempt, 1), reason
	case StepRebooting, StepVerifying:
		// The reboot happened (or the job would not have been handed over
		// again by a fresh agent): verify and commit.
		st.Step, st.Attempt = StepVerifying, attempt
	case StepCommitted:
		st.Step, st.Status, st.Attempt = StepCommitted, protocol.JobSucceeded, attempt
	case StepRolledBack, StepFailed:
		st.Step, st.Status, st.Attempt, st.Reason = step, protocol.JobFailed, attempt, reason
		if reason == "" {
			st.Reason = "update failed (local OTA state lost)"
		}
	default:
		u.log.Warn("ota: unknown step in statusDetails; starting over", "job", job.ID, "step", step)
	}
	u.log.Info("ota: no local state; continuing from statusDetails", "job", job.ID, "step", st.Step, "attempt", st.Attempt)
	return st
}

// drive runs the state machine from st until a terminal status is
// reported, a reboot is pending, or it is interrupted.
func (u *Updater) drive(ctx context.Context, st *State, r Session) error {
	for {
		var err error
		switch st.Step {
		case StepDownloading, StepInstalling:
			err = u.install(ctx, st, r)
		case StepRebooting:
			err = u.rebooting(ctx, st, r)
		case StepVerifying:
			err = u.verify(ctx, st, r)
		case StepCommitting:
			err = u.committing(ctx, st, r)
		case StepCommitted, StepRolledBack, StepFailed:
			return u.finish(ctx, st, r)
		default:
			return fmt.Errorf("ota: job %s: unknown step %q", st.JobID, st.Step)
		}
		if err != nil {
			return err
		}
	}
}

// enter persists st at step with status and reason, then reports it.
func (u *Updater) enter(ctx context.Context, st *State, r Session, step Step, status protocol.JobStatus, reason string) error {
	st.Step, st.Status, st.Reason = step, status, u.redact(st, reason)
	st.Reported = false
	if step != StepRebooting {
		st.Reboots = 0
	}
	if err := u.save(ctx, r, st); err != nil {
		return err
	}
	u.log.Info("ota: step", "job", st.JobID, "step", step, "status", status, "attempt", st.Attempt, "reason", st.Reason)
	return u.report(ctx, st, r)
}

// report sends st's status (again) and records that it was accepted.
func (u *Updater) report(ctx context.Context, st *State, r Session) error {
	if err := r.Report(ctx, st.Status, st.Details(u.flavor())); err != nil {
		return fmt.Errorf("ota: job %s: report %s step %s: %w", st.JobID, st.Status, st.Step, err)
	}
	st.Reported = true
	return u.save(ctx, r, st)
}

func (u *Updater) save(ctx context.Context, s Session, st *State) error {
	st.UpdatedAt = u.cfg.Now()
	b, err := encodeState(st)
	if err != nil {
		return err
	}
	if err := s.SaveState(ctx, b); err != nil {
		return fmt.Errorf("ota: job %s: save state: %w", st.JobID, err)
	}
	return nil
}

func (u *Updater) flavor() Flavor {
	if u.mender == nil {
		return ""
	}
	return u.mender.Flavor
}

// redact removes the presigned URL (a credential) from text that goes
// into logs and statusDetails.
func (u *Updater) redact(st *State, s string) string {
	if st.URL == "" || s == "" {
		return s
	}
	return strings.ReplaceAll(s, st.URL, RedactURL(st.URL))
}

func (u *Updater) client(ctx context.Context) (*Mender, error) {
	if u.mender != nil {
		return u.mender, nil
	}
	m, err := DetectMender(ctx, u.cfg.Mender)
	if err != nil {
		if ctx.Err() != nil {
			// Stopping, not a missing client: never fail the job for it.
			return nil, fmt.Errorf("ota: detect mender: %w", ctx.Err())
		}
		return nil, err
	}
	u.log.Info("ota: mender client", "flavor", m.Flavor, "path", m.Path, "version", m.Version)
	u.mender = m
	return m, nil
}

// install runs install attempts until one succeeds (→ rebooting) or
// MaxAttempts are used (→ failed). st.Attempt is the last attempt started.
// An artifact that fails its integrity checks (sha256, or mender refusing
// its signature or checksums) fails the job at once: retrying cannot
// change the verdict.
func (u *Updater) install(ctx context.Context, st *State, r Session) error {
	m, err := u.client(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return u.enter(ctx, st, r, StepFailed, protocol.JobFailed, "mender client: "+err.Error())
	}
	if err := u.checkVerifyKey(); err != nil {
		return u.enter(ctx, st, r, StepFailed, protocol.JobFailed, err.Error())
	}
	if st.OldArtifact == "" {
		name, err := m.ShowArtifact(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return fmt.Errorf("ota: job %s: show-artifact interrupted: %w", st.JobID, ctx.Err())
		case err != nil:
			u.log.Warn("ota: mender show-artifact failed; a crash right after the commit will not be told apart from a failed commit", "job", st.JobID, "err", err)
		default:
			st.OldArtifact = name
			if err := u.save(ctx, r, st); err != nil {
				return err
			}
		}
	}
	if st.OldRoot == "" {
		if dev, err := u.cfg.RootDevice(); err != nil {
			u.log.Warn("ota: root device unknown; a crash right after the commit of a same-name artifact will not be told apart from a failed commit", "job", st.JobID, "err", err)
		} else {
			st.OldRoot = dev
			if err := u.save(ctx, r, st); err != nil {
				return err
			}
		}
	}
	// An attempt already started (recorded in st) was interrupted: mender
	// may hold a half-done installation that blocks a new one. Unless it
	// recorded its own failure, say why it did not finish: the next
	// attempt's report carries the reason.
	cleanup := st.Attempt > 0
	if cleanup && !strings.HasPrefix(st.Reason, fmt.Sprintf("install attempt %d/%d failed", st.Attempt, u.cfg.MaxAttempts)) {
		st.Reason = u.interruptedReason(st)
	}
	for {
		if st.Attempt >= u.cfg.MaxAttempts {
			reason := st.Reason
			if reason == "" {
				reason = fmt.Sprintf("install attempt %d/%d was interrupted", st.Attempt, u.cfg.MaxAttempts)
			}
			return u.enter(ctx, st, r, StepFailed, protocol.JobFailed, fmt.Sprintf("giving up after %d install attempts: %s", st.Attempt, reason))
		}
		st.Attempt++
		st.AttemptBootID = ""
		if id, err := u.cfg.BootID(); err == nil {
			st.AttemptBootID = id
		}
		if err := u.enter(ctx, st, r, StepDownloading, protocol.JobInProgress, st.Reason); err != nil {
			return err
		}
		if cleanup {
			u.rollbackQuietly(ctx, m, st)
		}
		err := u.installOnce(ctx, m, st, r)
		if err == nil {
			st.Reason = ""
			return u.enter(ctx, st, r, StepRebooting, protocol.JobInProgress, "")
		}
		if ctx.Err() != nil {
			return fmt.Errorf("ota: job %s: install attempt %d interrupted: %w", st.JobID, st.Attempt, ctx.Err())
		}
		var ie *IntegrityError
		if errors.As(err, &ie) {
			u.log.Error("ota: artifact refused", "job", st.JobID, "err", err)
			return u.enter(ctx, st, r, StepFailed, protocol.JobFailed, err.Error())
		}
		if refusal := menderRefusal(err); refusal != "" {
			u.log.Error("ota: mender refused the artifact", "job", st.JobID, "reason", u.redact(st, refusal))
			// mender cleans up after a refused artifact; make sure no
			// half-done installation is left behind.
			u.rollbackQuietly(ctx, m, st)
			return u.enter(ctx, st, r, StepFailed, protocol.JobFailed, "mender refused the artifact (nothing was installed): "+refusal)
		}
		cleanup = true
		st.Reason = u.redact(st, fmt.Sprintf("install attempt %d/%d failed: %v", st.Attempt, u.cfg.MaxAttempts, err))
		u.log.Warn("ota: install failed", "job", st.JobID, "attempt", st.Attempt, "err", st.Reason)
		if err := u.save(ctx, r, st); err != nil {
			return err
		}
		if st.Attempt < u.cfg.MaxAttempts {
			if err := backoff.Sleep(ctx, u.cfg.RetryDelay); err != nil {
				return fmt.Errorf("ota: job %s: waiting to retry: %w", st.JobID, err)
			}
		}
	}
}

// interruptedReason says why install attempt st.Attempt, found unfinished
// when the step resumed, did not finish.
func (u *Updater) interruptedReason(st *State) string {
	why := "the agent stopped"
	if cur, err := u.cfg.BootID(); err == nil && st.AttemptBootID != "" {
		if cur != st.AttemptBootID {
			why = "the device restarted (power loss or reboot)"
		} else {
			why = "the agent restarted (the device did not)"
		}
	}
	return fmt.Sprintf("install attempt %d/%d was interrupted while %s: %s", st.Attempt, u.cfg.MaxAttempts, st.Step, why)
}

func (u *Updater) installOnce(ctx context.Context, m *Mender, st *State, r Session) error {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.InstallTimeout)
	defer cancel()
	src := st.URL
	if st.SHA256 != "" {
		u.log.Info("ota: downloading the artifact to check its sha256", "job", st.JobID, "attempt", st.Attempt, "url", RedactURL(st.URL))
		path, err := u.download(ctx, st)
		if err != nil {
			return err
		}
		defer func() {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				u.log.Warn("ota: remove downloaded artifact", "path", path, "err", err)
			}
		}()
		src = path
	}
	var reportErr error
	sink := &progressSink{
		ctx:       ctx,
		pub:       u.cfg.Publisher,
		thing:     u.cfg.ThingName,
		jobID:     st.JobID,
		reference: u.cfg.ReferenceProgress,
		log:       u.log,
		throttle:  Throttle{Interval: u.cfg.ProgressInterval},
		now:       u.cfg.Now,
	}
	sink.onDone = func() {
		// The artifact is fully streamed; mender now finishes the
		// installation (ArtifactInstall).
		reportErr = u.enter(ctx, st, r, StepInstalling, protocol.JobInProgress, st.Reason)
	}
	u.log.Info("ota: mender install", "job", st.JobID, "attempt", st.Attempt, "url", RedactURL(st.URL), "checked", st.SHA256 != "")
	err := m.Install(ctx, src, sink.line)
	if reportErr != nil {
		// The installing step is persisted; only its report is missing,
		// and the next step's report supersedes it.
		u.log.Warn("ota: report installing step", "job", st.JobID, "err", reportErr)
	}
	return err
}

// rollbackQuietly clears a half-done installation before a new attempt.
func (u *Updater) rollbackQuietly(ctx context.Context, m *Mender, st *State) {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.CommandTimeout)
	defer cancel()
	err := m.Rollback(ctx)
	switch {
	case err == nil:
		u.log.Info("ota: rolled back an interrupted installation before retrying", "job", st.JobID)
	case errors.Is(err, ErrNoUpdateInProgress):
	default:
		u.log.Warn("ota: rollback before retry failed", "job", st.JobID, "err", u.redact(st, err.Error()))
	}
}

// rebooting reboots once the rebooting status is confirmed, or moves on to
// verifying when the boot id shows the reboot happened.
func (u *Updater) rebooting(ctx context.Context, st *State, r Session) error {
	if !st.Reported {
		if err := u.report(ctx, st, r); err != nil {
			return err
		}
	}
	cur, err := u.cfg.BootID()
	if err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	if st.BootID != "" && cur != st.BootID {
		st.BootID = ""
		return u.enter(ctx, st, r, StepVerifying, protocol.JobInProgress, "")
	}
	if st.Reboots >= u.cfg.MaxReboots {
		m, err := u.client(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			return u.enter(ctx, st, r, StepFailed, protocol.JobFailed, "mender client: "+err.Error())
		}
		return u.rollback(ctx, m, st, r, fmt.Sprintf("the device did not reboot after %d reboot requests", st.Reboots), false)
	}
	return u.reboot(ctx, st, r, cur)
}

// reboot records the boot id, runs the pre-reboot hook and the reboot
// command, then waits to be stopped.
func (u *Updater) reboot(ctx context.Context, st *State, r Session, bootID string) error {
	st.BootID = bootID
	st.Reboots++
	if err := u.save(ctx, r, st); err != nil {
		return err
	}
	if len(u.cfg.PreRebootCommand) > 0 {
		hctx, cancel := context.WithTimeout(ctx, u.cfg.CommandTimeout)
		err := RunCommand(hctx, u.cfg.PreRebootCommand, nil, nil)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("ota: job %s: pre-reboot hook: %w", st.JobID, ctx.Err())
			}
			u.log.Warn("ota: pre-reboot hook failed; rebooting anyway", "job", st.JobID, "err", err)
		}
	}
	u.log.Info("ota: rebooting", "job", st.JobID, "step", st.Step, "command", u.cfg.RebootCommand)
	rctx, cancel := context.WithTimeout(ctx, u.cfg.CommandTimeout)
	err := RunCommand(rctx, u.cfg.RebootCommand, nil, nil)
	cancel()
	if err != nil {
		return fmt.Errorf("ota: job %s: reboot command: %w", st.JobID, err)
	}
	if u.cfg.RebootWait > 0 {
		// The shutdown stops the agent (SIGTERM → ctx) while we wait.
		_ = backoff.Sleep(ctx, u.cfg.RebootWait)
	}
	return ErrRebootPending
}

// verify runs the health checks and commits, or rolls back.
func (u *Updater) verify(ctx context.Context, st *State, r Session) error {
	if !st.Reported {
		if err := u.report(ctx, st, r); err != nil {
			return err
		}
	}
	m, err := u.client(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return u.enter(ctx, st, r, StepFailed, protocol.JobFailed, "mender client: "+err.Error())
	}
	if reason := u.healthCheck(ctx); reason != "" {
		if ctx.Err() != nil {
			return fmt.Errorf("ota: job %s: health check interrupted: %w", st.JobID, ctx.Err())
		}
		// Running the new, unhealthy partition: roll back and reboot into
		// the old one.
		return u.rollback(ctx, m, st, r, "health check failed: "+reason, !u.cfg.NoRollbackReboot)
	}
	// Persisted before the commit: a crash from here on is resolved from
	// mender's own state (committing). Nothing to report for it.
	st.Step, st.Reported = StepCommitting, true
	if err := u.save(ctx, r, st); err != nil {
		return err
	}
	return u.commit(ctx, m, st, r, false)
}

// committing resumes a commit that a crash interrupted: it may or may not
// have taken effect.
func (u *Updater) committing(ctx context.Context, st *State, r Session) error {
	m, err := u.client(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return u.enter(ctx, st, r, StepFailed, protocol.JobFailed, "mender client: "+err.Error())
	}
	u.log.Info("ota: resuming an interrupted commit", "job", st.JobID)
	return u.commit(ctx, m, st, r, true)
}

// commit runs mender commit and reports committed, or rolls back. After a
// crash (resumed), "no update in progress" while the device runs another
// root partition than before the install, or show-artifact names another
// artifact, means the earlier commit took effect.
func (u *Updater) commit(ctx context.Context, m *Mender, st *State, r Session, resumed bool) error {
	cctx, cancel := context.WithTimeout(ctx, u.cfg.CommandTimeout)
	err := m.Commit(cctx)
	cancel()
	if err == nil {
		return u.enter(ctx, st, r, StepCommitted, protocol.JobSucceeded, "")
	}
	if ctx.Err() != nil {
		return fmt.Errorf("ota: job %s: commit interrupted: %w", st.JobID, ctx.Err())
	}
	reason := "commit failed (the device did not boot the new update): " + err.Error()
	if errors.Is(err, ErrNoUpdateInProgress) {
		reason = "commit failed: mender has no update in progress (the device came back on the old partition)"
		if resumed {
			if dev, derr := u.cfg.RootDevice(); derr == nil && st.OldRoot != "" && dev != st.OldRoot {
				u.log.Info("ota: the commit before the restart took effect: the device runs another root partition", "job", st.JobID, "rootDevice", dev, "previous", st.OldRoot)
				return u.enter(ctx, st, r, StepCommitted, protocol.JobSucceeded, "")
			}
			name, serr := m.ShowArtifact(ctx)
			switch {
			case serr != nil && ctx.Err() != nil:
				return fmt.Errorf("ota: job %s: show-artifact interrupted: %w", st.JobID, ctx.Err())
			case serr != nil:
				reason += "; show-artifact failed: " + serr.Error()
			case st.OldArtifact != "" && name != "" && name != st.OldArtifact:
				u.log.Info("ota: the commit before the restart took effect", "job", st.JobID, "artifact", name, "previous", st.OldArtifact)
				return u.enter(ctx, st, r, StepCommitted, protocol.JobSucceeded, "")
			case st.OldArtifact == "":
				reason += fmt.Sprintf("; mender runs %q and the artifact before the update is unknown", name)
			default:
				reason += fmt.Sprintf("; mender still runs %q", name)
			}
		}
	}
	return u.rollback(ctx, m, st, r, reason, false)
}

// healthCheck returns "" when every check passes, else the first failure.
func (u *Updater) healthCheck(ctx context.Context) string {
	if u.cfg.Connectivity != nil {
		cctx, cancel := context.WithTimeout(ctx, u.cfg.ConnectivityTimeout)
		err := u.cfg.Connectivity(cctx)
		cancel()
		if err != nil {
			return fmt.Sprintf("connectivity to AWS IoT Core: %v", err)
		}
	}
	for i, hc := range u.cfg.HealthChecks {
		name := hc.Name
		if name == "" {
			name = "healthChecks[" + strconv.Itoa(i) + "]"
		}
		timeout := hc.Timeout
		if timeout == 0 {
			timeout = DefaultHealthCheckTimeout
		}
		hctx, cancel := context.WithTimeout(ctx, timeout)
		err := RunCommand(hctx, hc.Command, nil, nil)
		cancel()
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				return fmt.Sprintf("%s: did not finish within %s", name, timeout)
			}
			return fmt.Sprintf("%s: %v", name, err)
		}
	}
	return ""
}

// rollback persists rolled_back (FAILED) before rolling back, so a kill
// during the rollback repeats it (mender's rollback is idempotent).
func (u *Updater) rollback(ctx context.Context, m *Mender, st *State, r Session, reason string, rebootAfter bool) error {
	st.Reason = u.redact(st, reason)
	st.Step, st.Status = StepRolledBack, protocol.JobFailed
	st.RollbackDone, st.Reported = false, false
	st.RollbackReboot = rebootAfter
	st.BootID, st.Reboots = "", 0
	if err := u.save(ctx, r, st); err != nil {
		return err
	}
	u.log.Warn("ota: rolling back", "job", st.JobID, "reason", st.Reason)
	return u.finish(ctx, st, r)
}

// finish completes a terminal step: the rollback if not yet done, the
// terminal report, and the reboot into the old partition if requested.
func (u *Updater) finish(ctx context.Context, st *State, r Session) error {
	if st.Step == StepRolledBack && !st.RollbackDone {
		m, err := u.client(ctx)
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, u.cfg.CommandTimeout)
		err = m.Rollback(rctx)
		cancel()
		switch {
		case err == nil, errors.Is(err, ErrNoUpdateInProgress):
		case ctx.Err() != nil:
			return fmt.Errorf("ota: job %s: rollback interrupted: %w", st.JobID, ctx.Err())
		default:
			st.Reason = truncate(st.Reason+"; rollback failed: "+u.redact(st, err.Error()), protocol.MaxStatusDetailsValueBytes)
		}
		st.RollbackDone = true
		if err := u.save(ctx, r, st); err != nil {
			return err
		}
	}
	if !st.Reported {
		if err := u.report(ctx, st, r); err != nil {
			return err
		}
		u.log.Info("ota: job finished", "job", st.JobID, "status", st.Status, "step", st.Step, "reason", st.Reason)
	}
	if !st.RollbackReboot {
		return nil
	}
	cur, err := u.cfg.BootID()
	if err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	if (st.BootID != "" && cur != st.BootID) || st.Reboots >= u.cfg.MaxReboots {
		st.RollbackReboot, st.BootID = false, ""
		return u.save(ctx, r, st)
	}
	return u.reboot(ctx, st, r, cur)
}

// Flavor returns the detected mender flavor, or "" before the first job.
func (u *Updater) Flavor() Flavor {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.flavor()
}
