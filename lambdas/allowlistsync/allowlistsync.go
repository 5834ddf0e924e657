// Package allowlistsync makes the device registry and AWS IoT follow
// allowlist.txt. It runs on the S3 ObjectCreated notification of the config
// bucket: it reads the object and its metadata, parses it (a bad line fails
// the whole sync before anything changes), plans the changes against the
// registry (allowlist.Plan), and applies them: it finishes revocations a
// previous run left in state revoking, admits new serials (state allowed),
// records readmit=TOKEN re-admissions and revokes removed devices. A
// serial an emergency revocation holds out (lambdas/revoke) stays revoked
// while it is listed, until a readmit=TOKEN line whose token the serial
// never used (an older line brought back by a revert does not count).
//
// A plan that revokes more devices than the limit (Config.MaxRevocations,
// default max(5, ceil(10% of the provisioned fleet))) is refused as a whole,
// unless the object's metadata confirm-revocations equals the exact number
// of revocations; a file that lists no serial never revokes. A refused
// sync changes nothing, not even the additions, logs why and returns a
// *RefusedError saying how to override.
//
// Revoking a device: the record first moves to revoking (the hook denies
// it from then on), before any AWS call; then every certificate attached
// to its thing, plus the one the registry recorded, is set REVOKED and has
// the device policy and the thing detached; the thing leaves the thing
// group and is deleted; SSM is turned off for it (activation deleted,
// managed instance deregistered, SSM state cleared: ssmtoggle.TurnOff);
// only then does the registry record become revoked. Each step treats "not
// found" as already done, so a re-run after a partial failure (or a crash)
// picks up where the last run stopped, and the work is proportional to the
// number of changes. One device failing does not stop the others; the
// sync then returns a *SyncError naming every failed serial (the Lambda's
// asynchronous retries re-run it).
package allowlistsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/bounded"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/required"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/revocation"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

// S3API is the part of the S3 client the sync uses; *s3.Client implements it.
type S3API interface {
	GetObject(ctx context.Context, in *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
}

// IoTAPI is the part of the AWS IoT control plane the sync uses to revoke a
// device (revocation.IoTAPI, which says where another implementation must
// behave like AWS IoT). *iot.Client implements it.
type IoTAPI = revocation.IoTAPI

// Registry is the part of the device registry the sync uses.
type Registry interface {
	registry.Scanner
	PutAllowed(ctx context.Context, serial string) error
	Readmit(ctx context.Context, serial, token, by string) (registry.Device, bool, error)
	MarkRevoking(ctx context.Context, serial, expectedCertificateID string) (registry.Device, error)
	MarkRevoked(ctx context.Context, serial, expectedCertificateID string) error
}

// Object metadata the sync reads (S3 user metadata, x-amz-meta-<key>).
const (
	// MetadataConfirm is allowlist.ConfirmMetadata: a decimal number that
	// lifts the revocation limit when it equals the number of revocations.
	MetadataConfirm = allowlist.ConfirmMetadata
	// MetadataDeployedBy names who deployed the object; it is recorded as
	// who re-admitted (default DefaultReadmittedBy).
	MetadataDeployedBy = "deployed-by"
	// DefaultReadmittedBy is recorded when the object has no deployed-by.
	DefaultReadmittedBy = "allowlist"
)

// Metric names, logged in the "metric" attribute (for metric filters and
// alarms).
const (
	MetricRefused = "AllowlistSyncRefused"
	MetricRevoked = "DeviceRevoked"
	// MetricRevocationFailed: a revocation did not finish; the record stays
	// revoking (the hook denies it) and the next sync finishes it. Alarm on
	// it: until then the device's certificate may still be ACTIVE.
	MetricRevocationFailed = "DeviceRevocationFailed"
)

// Options are what a sync takes from the allowlist object besides its
// content.
type Options struct {
	// ConfirmRevocations is the confirm-revocations metadata (0: none).
	ConfirmRevocations int
	// DeployedBy is the deployed-by metadata ("": DefaultReadmittedBy).
	DeployedBy string
}

// OptionsFromMetadata reads Options from S3 user metadata (keys without
// the x-amz-meta- prefix, any case). A confirm-revocations value that is
// not a non-negative decimal number is an error naming it.
func OptionsFromMetadata(meta map[string]string) (Options, error) {
	var o Options
	for k, v := range meta {
		switch strings.ToLower(k) {
		case MetadataConfirm:
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < 0 {
				return Options{}, fmt.Errorf("allowlist sync: object metadata %s=%q is not a non-negative decimal number", MetadataConfirm, truncate(v, 40))
			}
			o.ConfirmRevocations = n
		case MetadataDeployedBy:
			o.DeployedBy = truncate(strings.TrimSpace(v), 128)
		}
	}
	return o, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Defaults of Config.
const (
	DefaultObjectKey      = "allowlist.txt"
	DefaultMaxObjectBytes = 16 << 20
	DefaultConcurrency    = 8
	DefaultCallTimeout    = 10 * time.Second
	DefaultRetryDelay     = 500 * time.Millisecond
)

// Config configures a Handler.
type Config struct {
	S3       S3API    // required
	IoT      IoTAPI   // required
	Registry Registry // required
	// SerialPattern must match a serial in full (allowlist.CompilePattern).
	SerialPattern *regexp.Regexp // required
	ThingGroup    string         // required: the group devices are removed from
	DevicePolicy  string         // required: the policy detached from certificates
	// SSM and SSMState turn SSM off for a revoked device (required).
	SSM      ssmtoggle.OffAPI
	SSMState ssmstate.Store
	// MaxRevocations is the most devices one sync revokes without a
	// confirmation (MAX_REVOCATIONS_PER_SYNC); 0: the default,
	// allowlist.DefaultMaxRevocations of the admitted fleet.
	MaxRevocations int
	// ThingNamePrefix makes the thing name of a serial whose record has
	// none (thing name = prefix + serial).
	ThingNamePrefix string
	// ObjectKey is the only object key the handler acts on.
	ObjectKey string
	// MaxObjectBytes bounds the allowlist object.
	MaxObjectBytes int64
	// Concurrency is how many devices are changed at once.
	Concurrency int
	// CallTimeout bounds each AWS call.
	CallTimeout time.Duration
	// RetryDelay is the first pause before DeleteThing is retried.
	RetryDelay time.Duration
	Logger     *slog.Logger
}

// Handler is the allowlist sync. It is immutable after New.
type Handler struct {
	cfg     Config
	log     *slog.Logger
	revoker *revocation.Revoker
}

// New returns the sync handler for cfg.
func New(cfg Config) (*Handler, error) {
	if err := required.Fields("allowlistsync: missing",
		required.Field("S3", cfg.S3 != nil),
		required.Field("IoT", cfg.IoT != nil),
		required.Field("Registry", cfg.Registry != nil),
		required.Field("SerialPattern", cfg.SerialPattern != nil),
		required.Field("ThingGroup", cfg.ThingGroup != ""),
		required.Field("DevicePolicy", cfg.DevicePolicy != ""),
		required.Field("SSM", cfg.SSM != nil),
		required.Field("SSMState", cfg.SSMState != nil),
	); err != nil {
		return nil, err
	}
	if cfg.MaxRevocations < 0 {
		return nil, fmt.Errorf("allowlistsync: MaxRevocations %d is negative", cfg.MaxRevocations)
	}
	if cfg.ObjectKey == "" {
		cfg.ObjectKey = DefaultObjectKey
	}
	if cfg.MaxObjectBytes <= 0 {
		cfg.MaxObjectBytes = DefaultMaxObjectBytes
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Handler{cfg: cfg, log: log, revoker: &revocation.Revoker{
		IoT: cfg.IoT, Registry: cfg.Registry, SSM: cfg.SSM, SSMState: cfg.SSMState,
		ThingGroup: cfg.ThingGroup, DevicePolicy: cfg.DevicePolicy, ThingNamePrefix: cfg.ThingNamePrefix,
		CallTimeout: cfg.CallTimeout, RetryDelay: cfg.RetryDelay, Logger: log,
	}}, nil
}

// Result summarises one sync.
type Result struct {
	Listed     int `json:"listed"`               // serials in the allowlist
	Added      int `json:"added"`                // serials admitted (new or listed again)
	Readmitted int `json:"readmitted,omitempty"` // readmit=TOKEN annotations recorded
	Revoked    int `json:"revoked"`              // devices revoked
	Resumed    int `json:"resumed,omitempty"`    // interrupted revocations finished
	// Held are listed serials an emergency revocation holds out (the
	// revoke Lambda): listing them admits nothing until a readmit=TOKEN
	// line with a token never used for the serial is deployed.
	Held   []string `json:"held,omitempty"`
	Failed []string `json:"failed,omitempty"`
	// Refused is set when the plan was refused (nothing changed).
	Refused bool `json:"refused,omitempty"`
}

// RefusedError is returned when the plan is refused by the revocation
// limit (or because the file lists no serial); nothing was changed.
type RefusedError struct {
	// Reason says why and how to override.
	Reason string
	// ToRevoke is the number of revocations the plan made, Limit the
	// limit in force.
	ToRevoke, Limit int
}

func (e *RefusedError) Error() string {
	return "allowlist sync refused, nothing changed: " + e.Reason
}

// SyncError reports the serials whose change failed; the others were
// applied. Re-running the sync retries exactly the failed ones.
type SyncError struct {
	Failed map[string]error // serial → cause
}

func (e *SyncError) Error() string {
	serials := e.Serials()
	const show = 20
	parts := make([]string, 0, min(len(serials), show))
	for _, s := range serials[:min(len(serials), show)] {
		parts = append(parts, fmt.Sprintf("%s: %v", s, e.Failed[s]))
	}
	more := ""
	if len(serials) > show {
		more = fmt.Sprintf("; and %d more", len(serials)-show)
	}
	return fmt.Sprintf("allowlist sync: %d device(s) failed: %s%s", len(serials), strings.Join(parts, "; "), more)
}

// Unwrap returns the causes, so errors.Is and errors.As see them.
func (e *SyncError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failed))
	for _, s := range e.Serials() {
		errs = append(errs, e.Failed[s])
	}
	return errs
}

// Serials returns the failed serials in order.
func (e *SyncError) Serials() []string {
	s := make([]string, 0, len(e.Failed))
	for k := range e.Failed {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

// Handle processes an S3 notification: it syncs from the latest version of
// the allowlist object once, whatever number of records name it.
func (h *Handler) Handle(ctx context.Context, ev events.S3Event) (Result, error) {
	var bucket string
	for _, r := range ev.Records {
		key := r.S3.Object.URLDecodedKey
		if key == "" {
			key = r.S3.Object.Key
		}
		if key != h.cfg.ObjectKey || r.S3.Bucket.Name == "" {
			h.log.WarnContext(ctx, "ignoring S3 record", "bucket", r.S3.Bucket.Name, "key", key, "event", r.EventName)
			continue
		}
		if bucket != "" && bucket != r.S3.Bucket.Name {
			return Result{}, fmt.Errorf("allowlist sync: event names %s in two buckets (%s, %s)", h.cfg.ObjectKey, bucket, r.S3.Bucket.Name)
		}
		bucket = r.S3.Bucket.Name
	}
	if bucket == "" {
		return Result{}, fmt.Errorf("allowlist sync: event has no record for object %q (%d records)", h.cfg.ObjectKey, len(ev.Records))
	}
	body, meta, err := h.fetch(ctx, bucket)
	if err != nil {
		return Result{}, err
	}
	opts, err := OptionsFromMetadata(meta)
	if err != nil {
		h.log.ErrorContext(ctx, "allowlist rejected, nothing changed", "error", err.Error())
		return Result{}, fmt.Errorf("s3://%s/%s: %w", bucket, h.cfg.ObjectKey, err)
	}
	res, err := h.Sync(ctx, strings.NewReader(body), opts)
	if err != nil {
		return res, fmt.Errorf("s3://%s/%s: %w", bucket, h.cfg.ObjectKey, err)
	}
	return res, nil
}

// fetch reads the newest version of the allowlist object. It does not use
// the version in the event: an older event handled late must not undo a
// newer list.
// It returns the object's content and user metadata, read together so
// the confirmation belongs to the content it confirms.
func (h *Handler) fetch(ctx context.Context, bucket string) (string, map[string]string, error) {
	cctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
	defer cancel()
	out, err := h.cfg.S3.GetObject(cctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(h.cfg.ObjectKey)})
	if err != nil {
		return "", nil, fmt.Errorf("allowlist sync: get s3://%s/%s: %w", bucket, h.cfg.ObjectKey, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, h.cfg.MaxObjectBytes+1))
	if err != nil {
		return "", nil, fmt.Errorf("allowlist sync: read s3://%s/%s: %w", bucket, h.cfg.ObjectKey, err)
	}
	if int64(len(b)) > h.cfg.MaxObjectBytes {
		return "", nil, fmt.Errorf("allowlist sync: s3://%s/%s is larger than %d bytes", bucket, h.cfg.ObjectKey, h.cfg.MaxObjectBytes)
	}
	return string(b), out.Metadata, nil
}

// Sync makes the registry and AWS IoT follow the allowlist read from r,
// with the object's options (confirmation, who deployed it).
func (h *Handler) Sync(ctx context.Context, r io.Reader, opts Options) (Result, error) {
	start := time.Now()
	entries, err := allowlist.ParseEntries(r, h.cfg.SerialPattern)
	if err != nil {
		// Nothing has changed yet.
		h.log.ErrorContext(ctx, "allowlist rejected, nothing changed", "error", err.Error())
		return Result{}, err
	}
	var current []registry.Device
	if err := registry.ScanAll(ctx, h.cfg.Registry, func(d registry.Device) error {
		current = append(current, d)
		return nil
	}); err != nil {
		return Result{}, fmt.Errorf("allowlist sync: %w", err)
	}
	ch := allowlist.Plan(current, entries, allowlist.Limits{MaxRevocations: h.cfg.MaxRevocations, Confirm: opts.ConfirmRevocations})
	res := Result{Listed: ch.Listed, Held: ch.Held}
	if ch.Refused {
		res.Refused = true
		h.log.ErrorContext(ctx, "allowlist sync refused, nothing changed", "reason", ch.Reason, "metric", MetricRefused,
			"listed", ch.Listed, "admitted", ch.Admitted, "toRevoke", len(ch.Remove), "limit", ch.Limit,
			"confirmRevocations", opts.ConfirmRevocations)
		return res, &RefusedError{Reason: ch.Reason, ToRevoke: len(ch.Remove), Limit: ch.Limit}
	}
	if ch.Confirmed {
		h.log.WarnContext(ctx, "revocation limit lifted by the object's confirmation", MetadataConfirm, opts.ConfirmRevocations,
			"toRevoke", len(ch.Remove), "limit", ch.Limit, "deployedBy", opts.DeployedBy)
	}

	for _, serial := range ch.Held {
		h.log.WarnContext(ctx, "listed serial stays revoked: an emergency revocation holds it out until a readmit=TOKEN line with a token never used for this serial is deployed",
			"serial", serial)
	}
	var mu sync.Mutex
	failed := map[string]error{}
	fail := func(serial string, err error) {
		mu.Lock()
		defer mu.Unlock()
		failed[serial] = err
	}
	hasFailed := func(serial string) bool {
		mu.Lock()
		defer mu.Unlock()
		_, ok := failed[serial]
		return ok
	}
	// 1. Revocations a previous run left half-done come first: a serial
	// listed again is admitted only once no certificate of its old
	// identity is left active.
	res.Resumed = h.parallel(ctx, len(ch.Resume), func(ctx context.Context, i int) error {
		d := ch.Resume[i]
		if err := h.finishRevocation(ctx, d); err != nil {
			fail(d.Serial, fmt.Errorf("finish revocation: %w", err))
			h.log.ErrorContext(ctx, "revocation failed", "serial", d.Serial, "error", err.Error(), "metric", MetricRevocationFailed)
			return err
		}
		h.log.InfoContext(ctx, "interrupted revocation finished", "serial", d.Serial, "thingName", h.thingName(d), "metric", MetricRevoked)
		return nil
	})
	// 2. Admissions, then 3. re-admissions (which may name serials just
	// admitted).
	res.Added = h.parallel(ctx, len(ch.Add), func(ctx context.Context, i int) error {
		serial := ch.Add[i]
		if hasFailed(serial) {
			return errors.New("skipped")
		}
		cctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
		defer cancel()
		if err := h.cfg.Registry.PutAllowed(cctx, serial); err != nil {
			fail(serial, fmt.Errorf("admit: %w", err))
			return err
		}
		return nil
	})
	by := opts.DeployedBy
	if by == "" {
		by = DefaultReadmittedBy
	}
	res.Readmitted = h.parallel(ctx, len(ch.Readmit), func(ctx context.Context, i int) error {
		ra := ch.Readmit[i]
		if hasFailed(ra.Serial) {
			return errors.New("skipped")
		}
		cctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
		defer cancel()
		d, changed, err := h.cfg.Registry.Readmit(cctx, ra.Serial, ra.Token, by)
		if err != nil {
			fail(ra.Serial, fmt.Errorf("re-admit: %w", err))
			return err
		}
		if !changed {
			return errors.New("unchanged")
		}
		h.log.InfoContext(ctx, "device re-admitted", "serial", ra.Serial, "token", ra.Token, "by", by, "state", string(d.State))
		return nil
	})
	// 4. Revocations.
	res.Revoked = h.parallel(ctx, len(ch.Remove), func(ctx context.Context, i int) error {
		d := ch.Remove[i]
		if err := h.revoke(ctx, d); err != nil {
			fail(d.Serial, fmt.Errorf("revoke: %w", err))
			h.log.ErrorContext(ctx, "revocation failed", "serial", d.Serial, "error", err.Error(), "metric", MetricRevocationFailed)
			return err
		}
		h.log.InfoContext(ctx, "device revoked", "serial", d.Serial, "thingName", h.thingName(d), "metric", MetricRevoked)
		return nil
	})
	h.log.InfoContext(ctx, "allowlist synced", "listed", res.Listed, "registry", len(current), "admittedFleet", ch.Admitted,
		"toResume", len(ch.Resume), "resumed", res.Resumed, "toAdd", len(ch.Add), "added", res.Added,
		"toReadmit", len(ch.Readmit), "readmitted", res.Readmitted, "held", len(ch.Held), "toRevoke", len(ch.Remove), "revoked", res.Revoked,
		"limit", ch.Limit, "confirmed", ch.Confirmed, "failed", len(failed), "took", time.Since(start))
	if len(failed) > 0 {
		se := &SyncError{Failed: failed}
		res.Failed = se.Serials()
		return res, se
	}
	return res, nil
}

// parallel runs fn for 0..n-1 on at most Concurrency goroutines and
// returns how many succeeded. Once ctx ends, the remaining items fail with
// the context's error.
func (h *Handler) parallel(ctx context.Context, n int, fn func(context.Context, int) error) int {
	var (
		mu sync.Mutex
		ok int
	)
	g := bounded.NewGroup(h.cfg.Concurrency)
	for i := range n {
		// Every item is handed to fn, even after ctx ends: fn reports it.
		_ = g.Go(context.Background(), func() {
			if fn(ctx, i) == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
	}
	g.Wait()
	return ok
}

func (h *Handler) thingName(d registry.Device) string { return h.revoker.ThingName(d) }

// revoke moves the record to revoking (the hook denies it from then on),
// before any AWS call, then finishes the revocation.
func (h *Handler) revoke(ctx context.Context, d registry.Device) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
	rec, err := h.cfg.Registry.MarkRevoking(cctx, d.Serial, d.CertificateID)
	cancel()
	if err != nil {
		return fmt.Errorf("mark revoking: %w", err)
	}
	return h.finishRevocation(ctx, rec)
}

// finishRevocation takes a device in state revoking out of AWS IoT, turns
// SSM off for it, then marks it revoked (revocation.Revoker.Finish).
func (h *Handler) finishRevocation(ctx context.Context, d registry.Device) error {
	return h.revoker.Finish(ctx, d)
}

// certificateIDFromARN returns the id of a certificate ARN.
func certificateIDFromARN(arn string) (string, bool) { return revocation.CertificateIDFromARN(arn) }
