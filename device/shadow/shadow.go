// Package shadow keeps the agent's named device shadow "fleet-agent"
// (docs/shadow.md) through AWS IoT's Device Shadow MQTT API.
//
// Reported state: agent version, OS image version (the mender artifact
// name, "unknown" without a mender client), the current job and step (the
// jobs engine's state file), the OTA step (the OTA operation's state in
// that file), the certificate id and expiry (the identity), the SSM state
// (its state file), boot id, uptime and connectivity, the settings in force and the
// desired keys it refused. The agent sends it on every (re)connect, when
// something changes (checked every pollInterval, at most one update per
// minInterval) and every reportInterval.
//
// Desired state: on every connect the agent gets the shadow (learning its
// version and desired state) and then follows update/delta and
// update/documents. It applies only logLevel (debug, info, warn, error)
// and reportInterval (a Go duration within [shadow.minInterval, 24h]); any
// other key, or an invalid value, is never applied and is reported in
// reported.rejectedDesired with the reason, until it leaves desired.
package shadow

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Name is the shadow's name (the device policy grants only this one).
const Name = protocol.AgentShadowName

// Unknown is reported for a value the device cannot read.
const Unknown = "unknown"

// State files of the other features, read (never written), relative to
// the state directory.
const (
	// JobsStateFile is the jobs engine's state file: the current job, and
	// (lastOperations) the state each operation last saved, OTA's
	// included.
	JobsStateFile = store.JobsDir + "/jobs-state.json"
	SSMStateFile  = "ssm-state.json"
)

// OTAOperation is the jobs operation whose last saved state, in
// JobsStateFile, is the OTA state (ota.Operation).
const OTAOperation = "mender_install"

// Conn is the MQTT connection (implemented by *mqttconn.Client).
type Conn interface {
	Subscribe(ctx context.Context, filter string, qos byte, handler mqttconn.Handler) error
	Publish(ctx context.Context, topic string, qos byte, payload []byte) error
	OnConnect(fn mqttconn.OnConnectFunc)
	Connections() int64
}

// Options configure a Reporter.
type Options struct {
	ThingName string
	Conn      Conn
	Store     *store.Store
	Config    config.Shadow
	// Version is the agent's version.
	Version string
	// Level is the agent's log level; desired.logLevel sets it.
	Level *slog.LevelVar
	// ImageVersion returns the running OS image's name (mender
	// show-artifact); nil or an error reports Unknown.
	ImageVersion func(ctx context.Context) (string, error)
	// BootIDFile and UptimeFile are the kernel's boot id and uptime
	// (defaults /proc/sys/kernel/random/boot_id and /proc/uptime).
	BootIDFile string
	UptimeFile string
	Logger     *slog.Logger
	Now        func() time.Time
}

// Reported is the reported state. Nil pointers are sent as null, which
// removes the key from the shadow (no job, no OTA, nothing refused).
type Reported struct {
	AgentVersion  string       `json:"agentVersion"`
	ImageVersion  string       `json:"imageVersion"`
	Job           *Job         `json:"job"`
	OTA           *OTA         `json:"ota"`
	Certificate   Certificate  `json:"certificate"`
	SSM           string       `json:"ssm"`
	BootID        string       `json:"bootId"`
	UptimeSeconds int64        `json:"uptimeSeconds"`
	Connectivity  Connectivity `json:"connectivity"`
	// The settings desired state may change are reported under the same
	// keys, with the value as desired wrote it, so an applied setting
	// leaves the delta.
	Settings
	// RejectedDesired holds up to MaxRejectedReported refused desired keys
	// (the first in sorted order; keys cut to 64 bytes) and why;
	// RejectedDesiredMore counts the others. Bounded, so no desired state
	// can push reported over the shadow's 8 KB limit.
	RejectedDesired     map[string]string `json:"rejectedDesired"`
	RejectedDesiredMore *int              `json:"rejectedDesiredMore"`
}

// MaxRejectedReported bounds reported.rejectedDesired.
const MaxRejectedReported = 10

// Job is the job the jobs engine is running.
type Job struct {
	JobID string `json:"jobId"`
	// Step is the index of the current step (the final step is the
	// number of steps); StepName its action name when known.
	Step     int    `json:"step"`
	StepName string `json:"stepName,omitempty"`
	Phase    string `json:"phase,omitempty"`
	Status   string `json:"status,omitempty"`
}

// OTA is the last full-system update, as the OTA operation last saved it
// in the jobs engine's state file.
type OTA struct {
	JobID  string `json:"jobId"`
	Step   string `json:"step"`
	Status string `json:"status,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Certificate is the device certificate in use.
type Certificate struct {
	ID        string `json:"id"`
	ExpiresAt string `json:"expiresAt,omitempty"`
}

// Connectivity is the MQTT connection as the device sees it.
type Connectivity struct {
	Connected   bool   `json:"connected"`
	ConnectedAt string `json:"connectedAt,omitempty"`
	// Connections counts the connections since the agent started.
	Connections int64 `json:"connections"`
}

// Settings are the desired-state settings in force (reported at the top
// level of reported).
type Settings struct {
	LogLevel       string `json:"logLevel"`
	ReportInterval string `json:"reportInterval"`
}

// Reporter keeps the shadow. Create it with New, then Start.
type Reporter struct {
	o      Options
	log    *slog.Logger
	prefix string
	inbox  chan inbound
	wg     sync.WaitGroup

	// Owned by the run goroutine.
	settings       Settings
	reportInterval time.Duration
	rejected       map[string]string
	desiredVersion int64
	lastDesired    map[string]any
	version        int64
	image          string
	otaSeen        string
	connectedAt    time.Time
	lastSent       time.Time
	lastReport     []byte
	force          bool
	tokens         int64
}

type inbound struct {
	kind    string // "connect" or the response topic suffix
	payload []byte
}

// New validates o.
func New(o Options) (*Reporter, error) {
	if o.ThingName == "" || o.Conn == nil || o.Store == nil {
		return nil, errors.New("shadow: ThingName, Conn and Store are required")
	}
	if o.Level == nil {
		o.Level = new(slog.LevelVar)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.BootIDFile == "" {
		o.BootIDFile = config.DefaultBootIDFile
	}
	if o.UptimeFile == "" {
		o.UptimeFile = "/proc/uptime"
	}
	r := &Reporter{
		o: o, log: o.Logger, prefix: protocol.NamedShadowPrefix(o.ThingName, Name),
		inbox: make(chan inbound, 64), reportInterval: o.Config.ReportInterval.D(),
	}
	r.settings = Settings{LogLevel: levelName(o.Level.Level()), ReportInterval: r.reportInterval.String()}
	return r, nil
}

// requestTimeout bounds one shadow request (a publish and its PUBACK) and
// the image-version lookup, so the reporting loop never blocks unbounded
// (the agent's supervisor expects its next beat within that).
const requestTimeout = 30 * time.Second

// Start subscribes to the shadow's answers and starts the reporting
// goroutine, bound to ctx, unsupervised (the agent runs Run under its
// supervisor instead).
func (r *Reporter) Start(ctx context.Context) error {
	if err := r.Subscribe(ctx); err != nil {
		return err
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		_ = r.Run(ctx, nil)
	}()
	return nil
}

// Subscribe subscribes to the shadow's answers and asks for the shadow on
// every connect; Run handles them.
func (r *Reporter) Subscribe(ctx context.Context) error {
	for _, suffix := range []string{"update/accepted", "update/rejected", "update/delta", "update/documents", "get/accepted", "get/rejected"} {
		kind := suffix
		err := r.o.Conn.Subscribe(ctx, r.prefix+"/"+suffix, 1, func(_ string, payload []byte) {
			select {
			case r.inbox <- inbound{kind: kind, payload: append([]byte(nil), payload...)}:
			case <-ctx.Done():
			}
		})
		if err != nil {
			return fmt.Errorf("shadow: subscribe %s: %w", suffix, err)
		}
	}
	r.o.Conn.OnConnect(func(cctx context.Context) {
		select {
		case r.inbox <- inbound{kind: "connect"}:
		case <-cctx.Done():
		}
	})
	return nil
}

// Stop waits for the reporting goroutine (after ctx is done).
func (r *Reporter) Stop() { r.wg.Wait() }

// Run is the reporting loop: it answers the shadow's messages, reports on
// change and on schedule, until ctx ends. live (nil: none) is told that the
// loop turns, and for how long each bounded request may block it.
func (r *Reporter) Run(ctx context.Context, live agent.Liveness) error {
	if live == nil {
		live = noLiveness{}
	}
	live.Busy(requestTimeout)
	r.image = r.imageVersion(ctx)
	poll := r.o.Config.PollInterval.D()
	if i := live.Interval(); i > 0 {
		poll = min(poll, i)
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	connected := false
	for {
		live.Beat()
		select {
		case <-ctx.Done():
			return nil
		case m := <-r.inbox:
			live.Busy(requestTimeout)
			if m.kind == "connect" {
				connected = true
				r.connectedAt = r.o.Now()
				r.force = true
				r.publish(ctx, protocol.ShadowGetTopic(r.o.ThingName, Name), map[string]string{"clientToken": r.token()})
			} else {
				r.handle(m)
			}
		case <-t.C:
		}
		if connected {
			live.Busy(requestTimeout)
			if err := r.maybeReport(ctx); err != nil {
				switch {
				case ctx.Err() != nil:
				case errors.Is(err, mqttconn.ErrNotConnected) || errors.Is(err, mqttconn.ErrConnectionLost):
					// Sent again after the next connect.
					connected = false
					r.force = true
					r.log.Debug("shadow update not sent: not connected", "err", err)
				default:
					r.log.Warn("shadow update not sent", "err", err)
				}
			}
		}
	}
}

func (r *Reporter) token() string {
	r.tokens++
	return "fleet-agent-" + strconv.FormatInt(r.o.Now().UnixMilli(), 36) + "-" + strconv.FormatInt(r.tokens, 10)
}

func (r *Reporter) publish(ctx context.Context, topic string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		r.log.Error("shadow: encode request", "err", err)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if err := r.o.Conn.Publish(pctx, topic, 1, b); err != nil && ctx.Err() == nil {
		r.log.Warn("shadow request not sent", "topic", topic, "err", err)
	}
}

// maybeReport sends the reported state if it changed, was asked for or is
// due, and the rate limit allows.
func (r *Reporter) maybeReport(ctx context.Context) error {
	now := r.o.Now()
	if !r.lastSent.IsZero() && now.Sub(r.lastSent) < r.o.Config.MinInterval.D() {
		return nil
	}
	rep := r.collect(ctx)
	stable, err := json.Marshal(withoutVolatile(rep))
	if err != nil {
		return fmt.Errorf("encode reported state: %w", err)
	}
	due := r.lastSent.IsZero() || now.Sub(r.lastSent) >= r.reportInterval
	if !r.force && !due && string(stable) == string(r.lastReport) {
		return nil
	}
	reported, err := json.Marshal(rep)
	if err != nil {
		return fmt.Errorf("encode reported state: %w", err)
	}
	b, err := json.Marshal(protocol.ShadowUpdateRequest{State: protocol.ShadowUpdateState{Reported: reported}, ClientToken: r.token()})
	if err != nil {
		return fmt.Errorf("encode shadow update: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if err := r.o.Conn.Publish(pctx, protocol.ShadowUpdateTopic(r.o.ThingName, Name), 1, b); err != nil {
		return err
	}
	r.lastSent, r.lastReport, r.force = now, stable, false
	r.log.Debug("shadow reported", "job", rep.Job != nil, "image", rep.ImageVersion)
	return nil
}

// withoutVolatile drops what changes all the time (uptime) from the
// comparison that decides whether something changed.
func withoutVolatile(rep Reported) Reported {
	rep.UptimeSeconds = 0
	return rep
}

// handle processes one answer of the Device Shadow service.
func (r *Reporter) handle(m inbound) {
	switch m.kind {
	case "get/accepted":
		var doc struct {
			State struct {
				Desired map[string]any `json:"desired"`
			} `json:"state"`
			Version int64 `json:"version"`
		}
		if err := json.Unmarshal(m.payload, &doc); err != nil {
			r.log.Warn("shadow: bad get/accepted", "err", err)
			return
		}
		r.version = doc.Version
		r.log.Info("shadow fetched", "version", doc.Version, "desiredKeys", len(doc.State.Desired))
		r.applyDesired(doc.State.Desired, doc.Version, true)
	case "get/rejected", "update/rejected":
		var e protocol.ShadowError
		_ = json.Unmarshal(m.payload, &e)
		if m.kind == "get/rejected" && e.Code == 404 {
			r.log.Info("shadow does not exist yet; the first report creates it")
			return
		}
		r.log.Warn("shadow request rejected", "topic", m.kind, "code", e.Code, "message", e.Message)
		if m.kind == "update/rejected" {
			r.force = true
		}
	case "update/accepted":
		var doc struct {
			Version int64 `json:"version"`
		}
		if json.Unmarshal(m.payload, &doc) == nil && doc.Version > r.version {
			r.version = doc.Version
		}
	case "update/delta":
		var d protocol.ShadowDelta
		if err := json.Unmarshal(m.payload, &d); err != nil {
			r.log.Warn("shadow: bad delta", "err", err)
			return
		}
		r.log.Info("shadow delta", "version", d.Version, "keys", slices.Sorted(maps.Keys(d.State)))
		r.applyDesired(d.State, d.Version, false)
	case "update/documents":
		var docs protocol.ShadowDocuments
		if err := json.Unmarshal(m.payload, &docs); err != nil {
			r.log.Warn("shadow: bad documents", "err", err)
			return
		}
		r.version = max(r.version, docs.Current.Version)
		// The full desired state: keys removed from desired leave
		// rejectedDesired.
		r.applyDesired(docs.Current.State.Desired, docs.Current.Version, true)
	}
}

// applyDesired applies desired keys (all of desired when full, else a
// delta) and refuses the others. Messages older than the last one handled
// are ignored.
func (r *Reporter) applyDesired(desired map[string]any, version int64, full bool) {
	if version < r.desiredVersion {
		return
	}
	r.desiredVersion = version
	if full && equalJSON(desired, r.lastDesired) {
		return
	}
	before := r.settings
	rejected := map[string]string{}
	if !full {
		maps.Copy(rejected, r.rejected)
	}
	for _, k := range slices.Sorted(maps.Keys(desired)) {
		delete(rejected, k)
		if reason := r.applySetting(k, desired[k]); reason != "" {
			if rejected[k] != reason && r.rejected[k] != reason {
				r.log.Warn("desired shadow key refused", "key", k, "reason", reason)
			}
			rejected[k] = reason
		}
	}
	if full {
		r.lastDesired = desired
	}
	if len(rejected) == 0 {
		rejected = nil
	}
	// Report only a change: AWS sends the delta again after every report
	// while a refused key stays in desired, and answering each one would
	// loop.
	if r.settings != before || !maps.Equal(rejected, r.rejected) {
		r.force = true
	}
	r.rejected = rejected
}

// applySetting applies one desired key and returns why it was refused
// ("" when applied).
func (r *Reporter) applySetting(key string, v any) string {
	switch key {
	case "logLevel":
		s, ok := v.(string)
		lvl, known := parseLevel(s)
		if !ok || !known {
			return fmt.Sprintf("logLevel must be one of debug, info, warn, error; got %s", describe(v))
		}
		if r.o.Level.Level() != lvl {
			r.log.Info("log level set from desired state", "logLevel", s)
			r.o.Level.Set(lvl)
		}
		r.settings.LogLevel = s
	case "reportInterval":
		s, ok := v.(string)
		d, err := time.ParseDuration(s)
		lo := r.o.Config.MinInterval.D()
		if !ok || err != nil || d < lo || d > config.MaxReportInterval {
			return fmt.Sprintf("reportInterval must be a duration such as \"10m\" between %v and %v; got %s", lo, config.MaxReportInterval, describe(v))
		}
		if d != r.reportInterval {
			r.log.Info("shadow report interval set from desired state", "reportInterval", d)
			r.reportInterval = d
		}
		r.settings.ReportInterval = s
	default:
		return "unknown setting; the agent applies only logLevel and reportInterval"
	}
	return ""
}

// clip cuts s to at most n bytes without splitting a UTF-8 sequence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func describe(v any) string {
	b, err := json.Marshal(v)
	if err != nil || len(b) > 64 {
		return fmt.Sprintf("a %T", v)
	}
	return string(b)
}

func parseLevel(s string) (slog.Level, bool) {
	switch s {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

func levelName(l slog.Level) string {
	switch {
	case l <= slog.LevelDebug:
		return "debug"
	case l <= slog.LevelInfo:
		return "info"
	case l <= slog.LevelWarn:
		return "warn"
	}
	return "error"
}

func equalJSON(a, b map[string]any) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// collect reads the device's state.
func (r *Reporter) collect(ctx context.Context) Reported {
	rep := Reported{
		AgentVersion: r.o.Version,
		Settings:     r.settings,
		Connectivity: Connectivity{Connected: true, Connections: r.o.Conn.Connections()},
	}
	if len(r.rejected) > 0 {
		rep.RejectedDesired = map[string]string{}
		keys := slices.Sorted(maps.Keys(r.rejected))
		for _, k := range keys[:min(len(keys), MaxRejectedReported)] {
			rep.RejectedDesired[clip(k, 64)] = r.rejected[k]
		}
		if more := len(keys) - MaxRejectedReported; more > 0 {
			rep.RejectedDesiredMore = &more
		}
	}
	if !r.connectedAt.IsZero() {
		rep.Connectivity.ConnectedAt = r.connectedAt.UTC().Format(time.RFC3339)
	}
	rep.Job = r.job()
	rep.OTA = r.ota()
	// The image changes only through an OTA update: ask mender again when
	// the OTA state moved.
	otaKey := ""
	if rep.OTA != nil {
		otaKey = rep.OTA.JobID + "/" + rep.OTA.Step + "/" + rep.OTA.Status
	}
	if otaKey != r.otaSeen {
		r.otaSeen = otaKey
		r.image = r.imageVersion(ctx)
	}
	rep.ImageVersion = r.image
	rep.Certificate = r.certificate()
	rep.SSM = r.ssm()
	rep.BootID = readTrimmed(r.o.BootIDFile)
	rep.UptimeSeconds = r.uptime()
	return rep
}

func (r *Reporter) imageVersion(ctx context.Context) string {
	if r.o.ImageVersion == nil {
		return Unknown
	}
	ictx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	name, err := r.o.ImageVersion(ictx)
	if err != nil || name == "" {
		r.log.Debug("image version unknown", "err", err)
		return Unknown
	}
	return name
}

// readState reads a JSON state file of another feature; false when it
// does not exist or cannot be read (logged).
func (r *Reporter) readState(name string, v any) bool {
	found, err := r.o.Store.ReadJSON(name, v)
	if err != nil {
		r.log.Debug("state file unreadable for the shadow", "file", name, "err", err)
		return false
	}
	return found
}

func (r *Reporter) job() *Job {
	var st struct {
		Job *struct {
			JobID    string          `json:"jobId"`
			Document json.RawMessage `json:"document"`
			Phase    string          `json:"phase"`
			Step     int             `json:"step"`
			Status   string          `json:"status"`
		} `json:"job"`
	}
	if !r.readState(JobsStateFile, &st) || st.Job == nil || st.Job.JobID == "" {
		return nil
	}
	j := &Job{JobID: st.Job.JobID, Step: st.Job.Step, Phase: st.Job.Phase, Status: st.Job.Status}
	var doc struct {
		Steps []struct {
			Action struct {
				Name string `json:"name"`
			} `json:"action"`
		} `json:"steps"`
		FinalStep *struct {
			Action struct {
				Name string `json:"name"`
			} `json:"action"`
		} `json:"finalStep"`
		Operation string `json:"operation"`
	}
	if json.Unmarshal(st.Job.Document, &doc) == nil {
		switch {
		case j.Step < len(doc.Steps):
			j.StepName = doc.Steps[j.Step].Action.Name
		case j.Step == len(doc.Steps) && doc.FinalStep != nil:
			j.StepName = doc.FinalStep.Action.Name
		case len(doc.Steps) == 0 && doc.Operation != "":
			j.StepName = doc.Operation
		}
	}
	return j
}

func (r *Reporter) ota() *OTA {
	var st struct {
		LastOperations map[string]struct {
			State OTA `json:"state"`
		} `json:"lastOperations"`
	}
	if !r.readState(JobsStateFile, &st) {
		return nil
	}
	op, ok := st.LastOperations[OTAOperation]
	if !ok || op.State.JobID == "" {
		return nil
	}
	return &op.State
}

func (r *Reporter) certificate() Certificate {
	id, found, err := r.o.Store.Identity()
	if err != nil || !found {
		return Certificate{ID: Unknown}
	}
	c := Certificate{ID: id.CertificateID}
	if c.ID == "" {
		c.ID = Unknown
	}
	if b, err := os.ReadFile(r.o.Store.Path(id.CertFile)); err == nil {
		if blk, _ := pem.Decode(b); blk != nil {
			if cert, err := x509.ParseCertificate(blk.Bytes); err == nil {
				c.ExpiresAt = cert.NotAfter.UTC().Format(time.RFC3339)
			}
		}
	}
	return c
}

func (r *Reporter) ssm() string {
	var st struct {
		State string `json:"state"`
	}
	if !r.readState(SSMStateFile, &st) || st.State == "" {
		return "off"
	}
	return st.State
}

func (r *Reporter) uptime() int64 {
	f := strings.Fields(readTrimmed(r.o.UptimeFile))
	if len(f) == 0 {
		return 0
	}
	secs, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0
	}
	return int64(secs)
}

func readTrimmed(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return Unknown
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return Unknown
	}
	return s
}

// noLiveness is the Liveness of an unsupervised Run.
type noLiveness struct{}

func (noLiveness) Beat()                   {}
func (noLiveness) Busy(time.Duration)      {}
func (noLiveness) Interval() time.Duration { return 0 }
