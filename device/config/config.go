// Package config loads and validates the agent's JSON configuration file
// (documented in example.json next to this file) and applies command-line
// overrides. Every validation error names the offending field.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/device/devkey"
	"github.com/iot-fleet/iot-fleet/device/jobs/jobdoc"
)

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// UnmarshalJSON accepts "90s", "5m", "1h30m".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"30s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// D is d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is the agent configuration.
type Config struct {
	// Endpoint is the AWS IoT Core data endpoint (host name, no scheme).
	Endpoint string `json:"endpoint"`
	// Port is 8883 (MQTT over TLS) or 443 (with ALPN).
	Port int `json:"port"`
	// ALPN sends the x-amzn-mqtt-ca ALPN protocol; required on port 443.
	ALPN bool `json:"alpn"`
	// RootCAFile is the PEM file of the root CA(s) that sign the endpoint.
	RootCAFile string `json:"rootCAFile"`
	// StateDir holds identity, keys, outbox and jobs state.
	StateDir string `json:"stateDir"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"logLevel"`

	Provisioning Provisioning `json:"provisioning"`
	MQTT         MQTT         `json:"mqtt"`
	Outbox       Outbox       `json:"outbox"`
	Jobs         Jobs         `json:"jobs"`
	OTA          OTA          `json:"ota"`
	SSM          SSM          `json:"ssm"`
	Rotation     Rotation     `json:"rotation"`
	Shadow       Shadow       `json:"shadow"`
}

// Provisioning configures provisioning by claim.
type Provisioning struct {
	// ClaimCertFile and ClaimKeyFile are the shared claim certificate.
	ClaimCertFile string `json:"claimCertFile"`
	ClaimKeyFile  string `json:"claimKeyFile"`
	// TemplateName is the fleet provisioning template.
	TemplateName string `json:"templateName"`
	// Serial overrides the serial read from the hardware.
	Serial string `json:"serial"`
	// SerialFiles are tried in order when Serial is empty: a file holding
	// only the serial (device tree) or /proc/cpuinfo ("Serial : ..." line).
	SerialFiles []string `json:"serialFiles"`
	// SerialPattern is the Go regexp (anchored) a serial must match.
	SerialPattern string `json:"serialPattern"`
	// KeyAlgorithm is ecdsa-p256 or rsa-2048.
	KeyAlgorithm string `json:"keyAlgorithm"`
	// ResponseTimeout bounds the wait for each provisioning answer.
	ResponseTimeout Duration `json:"responseTimeout"`
	// RetryMin and RetryMax bound the backoff after throttling and
	// transient errors.
	RetryMin Duration `json:"retryMin"`
	RetryMax Duration `json:"retryMax"`
	// DeniedBackoff is the longest wait after the pre-provisioning hook
	// denied the device (or the request was malformed); the wait starts at
	// DeniedBackoffMin and doubles (with jitter) at each denial in a row.
	DeniedBackoff    Duration `json:"deniedBackoff"`
	DeniedBackoffMin Duration `json:"deniedBackoffMin"`
	// RecoverAfterRefusals is how many connections in a row the broker
	// must refuse the device certificate (CONNACK not authorized, a TLS
	// alert about it, or closed right after CONNECT) before the agent
	// checks it once more and, if the claim certificate still connects,
	// provisions a new identity by claim.
	RecoverAfterRefusals int `json:"recoverAfterRefusals"`
	// TokenTTL is how long a certificate ownership token is trusted before a
	// resumed provisioning asks for a new certificate instead.
	TokenTTL Duration `json:"tokenTTL"`
}

// MQTT tunes the connection.
type MQTT struct {
	KeepAlive      Duration `json:"keepAlive"`
	ConnectTimeout Duration `json:"connectTimeout"`
	ReconnectMin   Duration `json:"reconnectMin"`
	ReconnectMax   Duration `json:"reconnectMax"`
}

// Outbox bounds the durable queue of outgoing messages.
type Outbox struct {
	MaxMessages int `json:"maxMessages"`
	MaxAttempts int `json:"maxAttempts"`
}

// Jobs configures the jobs engine.
type Jobs struct {
	// Enabled turns the jobs engine on.
	Enabled bool `json:"enabled"`
	// HandlerDir holds the runHandler executables (mode 0700); empty means
	// <stateDir>/handlers.
	HandlerDir string `json:"handlerDir"`
	// AllowedPaths are the other directories (absolute) a job document may
	// name as a handler's `path`; empty allows none.
	AllowedPaths []string `json:"allowedPaths"`
	// StepTimeout bounds each process step; its process group is killed
	// when it elapses.
	StepTimeout Duration `json:"stepTimeout"`
	// ProgressTimeoutMinutes is sent as stepTimeoutInMinutes with every
	// IN_PROGRESS update (negative disables).
	ProgressTimeoutMinutes int64 `json:"progressTimeoutMinutes"`
	// SudoPath is the sudo used for runAsUser (empty: "sudo" from PATH).
	SudoPath string `json:"sudoPath"`
	// RunCommand is the switch for schema-1.0 runCommand steps.
	RunCommand RunCommand `json:"runCommand"`
	// PathExecutables lets a runHandler step without "path" (or an
	// old-schema operation without "path") whose handler is not in the
	// handler directory run a well-known executable of that name from the
	// agent's PATH, as the AWS IoT Device Client does (default true, so its
	// sample echo.json works). RunCommand governs it too: it is a command
	// from the job document.
	PathExecutables bool `json:"pathExecutables"`
}

// RunCommand is the device's rule for schema-1.0 runCommand steps (job
// documents that name a program and its arguments directly). A job with a
// step the rule refuses is rejected before any of its steps runs.
type RunCommand struct {
	// Enabled allows runCommand steps (default true, so the AWS IoT Device
	// Client's sample documents work). False refuses every runCommand step;
	// runHandler steps and operations are unaffected.
	Enabled bool `json:"enabled"`
	// AllowedExecutables, when not empty, are the only programs a
	// runCommand step may name as its first token: absolute paths or bare
	// names (looked up in the agent's PATH), matched exactly. Empty allows
	// any program.
	AllowedExecutables []string `json:"allowedExecutables"`
}

// RunCommandPolicy is the jobs engine's form of the runCommand rule.
func (j Jobs) RunCommandPolicy() jobdoc.RunCommandPolicy {
	return jobdoc.RunCommandPolicy{
		Disabled:                !j.RunCommand.Enabled,
		AllowedExecutables:      slices.Clone(j.RunCommand.AllowedExecutables),
		PathExecutablesDisabled: !j.PathExecutables,
	}
}

// Default serial sources on a Raspberry Pi.
const (
	DevicetreeSerialFile = "/sys/firmware/devicetree/base/serial-number"
	CPUInfoFile          = "/proc/cpuinfo"
)

// Default returns the configuration with every default filled in.
func Default() Config {
	return Config{
		Port:       8883,
		RootCAFile: "/etc/fleet-agent/AmazonRootCA1.pem",
		StateDir:   "/var/lib/fleet-agent",
		LogLevel:   "info",
		Provisioning: Provisioning{
			ClaimCertFile:   "/etc/fleet-agent/claim.crt",
			ClaimKeyFile:    "/etc/fleet-agent/claim.key",
			SerialFiles:     []string{DevicetreeSerialFile, CPUInfoFile},
			SerialPattern:   "^[0-9a-f]{16}$",
			KeyAlgorithm:    string(devkey.ECDSAP256),
			ResponseTimeout: Duration(30 * time.Second),
			RetryMin:        Duration(2 * time.Second),
			RetryMax:        Duration(5 * time.Minute),
			DeniedBackoff:   Duration(time.Hour),
			TokenTTL:        Duration(4 * time.Minute),
			// Recovery after a refused certificate (docs/protocol.md).
			DeniedBackoffMin:     Duration(time.Minute),
			RecoverAfterRefusals: 3,
		},
		MQTT: MQTT{
			KeepAlive:      Duration(60 * time.Second),
			ConnectTimeout: Duration(30 * time.Second),
			ReconnectMin:   Duration(time.Second),
			ReconnectMax:   Duration(2 * time.Minute),
		},
		Outbox: Outbox{MaxMessages: 10000, MaxAttempts: 5},
		Jobs:   Jobs{Enabled: true, AllowedPaths: []string{}, StepTimeout: Duration(time.Hour), ProgressTimeoutMinutes: 10, RunCommand: RunCommand{Enabled: true, AllowedExecutables: []string{}}, PathExecutables: true},
		OTA:    DefaultOTA(),
		SSM:    DefaultSSM(),
		// Certificate rotation (rotation.go).
		Rotation: DefaultRotation(),
		Shadow:   DefaultShadow(),
	}
}

// FieldError is a validation error for one field (JSON path).
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return fmt.Sprintf("config: field %q: %s", e.Field, e.Problem) }

// Load reads path over the defaults. Unknown fields are errors.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return Parse(data)
}

var unknownFieldRE = regexp.MustCompile(`unknown field "([^"]+)"`)

// Parse decodes data over the defaults (without validating).
func Parse(data []byte) (Config, error) {
	cfg := Default()
	if json.Valid(data) {
		if err := strictKeys(data); err != nil {
			return Config{}, err
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te):
			return Config{}, &FieldError{Field: te.Field, Problem: fmt.Sprintf("must be a %s, not a JSON %s", jsonType(te.Type.Kind().String()), te.Value)}
		case errors.As(err, &se):
			line := 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			return Config{}, fmt.Errorf("config: invalid JSON at line %d: %v", line, err)
		}
		if m := unknownFieldRE.FindStringSubmatch(err.Error()); m != nil {
			field := m[1]
			if path := unknownPath(data, reflect.TypeOf(Config{}), ""); path != "" {
				field = path
			}
			return Config{}, &FieldError{Field: field, Problem: "unknown field"}
		}
		// Errors from Duration.UnmarshalJSON lose the field name in
		// encoding/json; find it by decoding each duration on its own.
		if f := findBadHealthCheckTimeout(data); f != "" {
			return Config{}, &FieldError{Field: f, Problem: err.Error()}
		}
		if f := findBadDuration(data); f != "" {
			return Config{}, &FieldError{Field: f, Problem: err.Error()}
		}
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if dec.More() {
		return Config{}, errors.New("config: trailing data after the JSON object")
	}
	return cfg, nil
}

// unknownPath returns the JSON path of the first key in data that t (a
// struct type) does not declare.
func unknownPath(data []byte, t reflect.Type, prefix string) string {
	var raw map[string]json.RawMessage
	if json.Unmarshal(data, &raw) != nil {
		return ""
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f, ok := fieldByTag(t, k)
		if !ok {
			return prefix + k
		}
		if f.Type.Kind() == reflect.Struct {
			if p := unknownPath(raw[k], f.Type, prefix+k+"."); p != "" {
				return p
			}
		}
		if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct {
			var items []json.RawMessage
			_ = json.Unmarshal(raw[k], &items)
			for i, item := range items {
				if p := unknownPath(item, f.Type.Elem(), prefix+k+"["+strconv.Itoa(i)+"]."); p != "" {
					return p
				}
			}
		}
	}
	return ""
}

// strictKeys rejects what encoding/json accepts silently but a reader of
// the file would misread: a key given twice in one object (the last one
// wins, so "enabled": false above "enabled": true does nothing) and a key
// that names a field only when case is ignored ("Enabled").
func strictKeys(data []byte) error {
	return walkKeys(json.NewDecoder(bytes.NewReader(data)), reflect.TypeOf(Config{}), "")
}

// walkKeys checks one JSON value whose Go type is t (nil when unknown);
// syntax errors are left to the decoder, which reports them with a line.
func walkKeys(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return nil
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch delim {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil
			}
			key, _ := kt.(string)
			field := key
			if path != "" {
				field = path + "." + key
			}
			if seen[key] {
				return &FieldError{Field: field, Problem: "appears more than once in the same object (only the last one would count)"}
			}
			seen[key] = true
			var child reflect.Type
			switch {
			case t != nil && t.Kind() == reflect.Struct:
				f, ok := fieldByTag(t, key)
				name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
				if ok && name != key {
					return &FieldError{Field: field, Problem: fmt.Sprintf("unknown field (keys are case-sensitive: did you mean %q?)", name)}
				}
				if ok {
					child = f.Type
				}
			case t != nil && t.Kind() == reflect.Map:
				child = t.Elem()
			}
			if err := walkKeys(dec, child, field); err != nil {
				return err
			}
		}
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := walkKeys(dec, elem, path+"["+strconv.Itoa(i)+"]"); err != nil {
				return err
			}
		}
	}
	_, _ = dec.Token()
	return nil
}

func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if strings.EqualFold(name, key) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func jsonType(kind string) string {
	switch kind {
	case "int", "int64", "uint16":
		return "number"
	case "slice":
		return "list"
	case "struct":
		return "object"
	}
	return kind
}

func findBadDuration(data []byte) string {
	var raw map[string]json.RawMessage
	if json.Unmarshal(data, &raw) != nil {
		return ""
	}
	for _, field := range append(durationFields, otaDurationFields...) {
		section, key, _ := strings.Cut(field, ".")
		var sec map[string]json.RawMessage
		if json.Unmarshal(raw[section], &sec) != nil {
			continue
		}
		if v, ok := sec[key]; ok {
			var d Duration
			if d.UnmarshalJSON(v) != nil {
				return field
			}
		}
	}
	return ""
}

var durationFields = []string{
	"provisioning.responseTimeout", "provisioning.retryMin", "provisioning.retryMax",
	"provisioning.deniedBackoff", "provisioning.deniedBackoffMin", "provisioning.tokenTTL",
	"mqtt.keepAlive", "mqtt.connectTimeout", "mqtt.reconnectMin", "mqtt.reconnectMax",
	"jobs.stepTimeout",
	"ssm.commandTimeout",
	"rotation.certTimeout", "rotation.switchTimeout",
}

// Validate checks every field and returns the first problem found.
func (c Config) Validate() error {
	fe := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	if c.Endpoint == "" {
		return fe("endpoint", "is required (the AWS IoT data endpoint host name)")
	}
	if strings.Contains(c.Endpoint, "://") || strings.ContainsAny(c.Endpoint, "/ ") {
		return fe("endpoint", "must be a host name without scheme or path, got %q", c.Endpoint)
	}
	if _, _, err := net.SplitHostPort(c.Endpoint); err == nil {
		return fe("endpoint", "must not include a port; use the port field")
	}
	if c.Port < 1 || c.Port > 65535 {
		return fe("port", "must be between 1 and 65535, got %d", c.Port)
	}
	if c.Port == 443 && !c.ALPN {
		return fe("alpn", "must be true on port 443 (AWS IoT Core needs ALPN x-amzn-mqtt-ca for MQTT on 443)")
	}
	if c.RootCAFile == "" {
		return fe("rootCAFile", "is required")
	}
	if c.StateDir == "" {
		return fe("stateDir", "is required")
	}
	if !filepath.IsAbs(c.StateDir) {
		return fe("stateDir", "must be an absolute path, got %q", c.StateDir)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fe("logLevel", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	p := c.Provisioning
	if p.ClaimCertFile == "" {
		return fe("provisioning.claimCertFile", "is required")
	}
	if p.ClaimKeyFile == "" {
		return fe("provisioning.claimKeyFile", "is required")
	}
	if p.TemplateName == "" {
		return fe("provisioning.templateName", "is required (the fleet provisioning template name)")
	}
	if strings.ContainsAny(p.TemplateName, "/#+ ") {
		return fe("provisioning.templateName", "must not contain '/', '#', '+' or spaces, got %q", p.TemplateName)
	}
	re, err := regexp.Compile(p.SerialPattern)
	if err != nil {
		return fe("provisioning.serialPattern", "invalid regular expression: %v", err)
	}
	if p.SerialPattern == "" {
		return fe("provisioning.serialPattern", "is required")
	}
	if p.Serial != "" && !re.MatchString(p.Serial) {
		return fe("provisioning.serial", "%q does not match serialPattern %s", p.Serial, p.SerialPattern)
	}
	if p.Serial == "" && len(p.SerialFiles) == 0 {
		return fe("provisioning.serialFiles", "must list at least one file when serial is empty")
	}
	for i, f := range p.SerialFiles {
		if f == "" {
			return fe("provisioning.serialFiles["+strconv.Itoa(i)+"]", "is empty")
		}
	}
	if !devkey.Algorithm(p.KeyAlgorithm).Valid() {
		return fe("provisioning.keyAlgorithm", "must be %q or %q, got %q", devkey.ECDSAP256, devkey.RSA2048, p.KeyAlgorithm)
	}
	for _, d := range []struct {
		name string
		v    Duration
		min  time.Duration
	}{
		{"provisioning.responseTimeout", p.ResponseTimeout, 10 * time.Millisecond},
		{"provisioning.retryMin", p.RetryMin, time.Millisecond},
		{"provisioning.retryMax", p.RetryMax, time.Millisecond},
		{"provisioning.deniedBackoff", p.DeniedBackoff, time.Millisecond},
		{"provisioning.deniedBackoffMin", p.DeniedBackoffMin, time.Millisecond},
		{"provisioning.tokenTTL", p.TokenTTL, time.Second},
		{"mqtt.keepAlive", c.MQTT.KeepAlive, time.Second},
		{"mqtt.connectTimeout", c.MQTT.ConnectTimeout, 100 * time.Millisecond},
		{"mqtt.reconnectMin", c.MQTT.ReconnectMin, time.Millisecond},
		{"mqtt.reconnectMax", c.MQTT.ReconnectMax, time.Millisecond},
		{"jobs.stepTimeout", c.Jobs.StepTimeout, time.Second},
	} {
		if d.v.D() < d.min {
			return fe(d.name, "must be at least %v, got %v", d.min, d.v.D())
		}
	}
	if p.RetryMax < p.RetryMin {
		return fe("provisioning.retryMax", "must not be below retryMin (%v)", p.RetryMin.D())
	}
	if p.DeniedBackoff < p.RetryMin {
		return fe("provisioning.deniedBackoff", "must not be below retryMin (%v): a denial must back off at least as long as a transient error", p.RetryMin.D())
	}
	if p.RecoverAfterRefusals < 1 || p.RecoverAfterRefusals > 100 {
		return fe("provisioning.recoverAfterRefusals", "must be between 1 and 100, got %d", p.RecoverAfterRefusals)
	}
	if c.MQTT.ReconnectMax < c.MQTT.ReconnectMin {
		return fe("mqtt.reconnectMax", "must not be below reconnectMin (%v)", c.MQTT.ReconnectMin.D())
	}
	if c.Outbox.MaxMessages < 1 {
		return fe("outbox.maxMessages", "must be at least 1, got %d", c.Outbox.MaxMessages)
	}
	if c.Outbox.MaxAttempts < 1 {
		return fe("outbox.maxAttempts", "must be at least 1, got %d", c.Outbox.MaxAttempts)
	}
	if c.Jobs.HandlerDir != "" && !filepath.IsAbs(c.Jobs.HandlerDir) {
		return fe("jobs.handlerDir", "must be an absolute path, got %q", c.Jobs.HandlerDir)
	}
	for i, p := range c.Jobs.AllowedPaths {
		if !filepath.IsAbs(p) {
			return fe("jobs.allowedPaths["+strconv.Itoa(i)+"]", "must be an absolute path, got %q", p)
		}
	}
	if c.Jobs.ProgressTimeoutMinutes == 0 || c.Jobs.ProgressTimeoutMinutes > 10080 {
		return fe("jobs.progressTimeoutMinutes", "must be between 1 and 10080 (or negative to disable), got %d", c.Jobs.ProgressTimeoutMinutes)
	}
	for i, x := range c.Jobs.RunCommand.AllowedExecutables {
		field := "jobs.runCommand.allowedExecutables[" + strconv.Itoa(i) + "]"
		if err := jobdoc.ValidateExecutable(x); err != nil {
			return fe(field, "%v", err)
		}
		if slices.Index(c.Jobs.RunCommand.AllowedExecutables, x) < i {
			return fe(field, "%q is listed twice", x)
		}
	}
	if err := c.OTA.validate(); err != nil {
		return err
	}
	if err := c.SSM.validate(); err != nil {
		return err
	}
	if err := c.Rotation.validate(c.MQTT); err != nil {
		return err
	}
	if err := c.Shadow.validate(); err != nil {
		return err
	}
	return nil
}

// DeniedBackoffStart is the first wait after a denial: deniedBackoffMin,
// but never more than deniedBackoff (a short deniedBackoff alone, as in a
// lab, shortens both).
func (p Provisioning) DeniedBackoffStart() time.Duration {
	return min(p.DeniedBackoffMin.D(), p.DeniedBackoff.D())
}

// Address is endpoint:port.
func (c Config) Address() string { return net.JoinHostPort(c.Endpoint, strconv.Itoa(c.Port)) }

// HandlerDir is the jobs handler directory (default <stateDir>/handlers).
func (c Config) HandlerDir() string {
	if c.Jobs.HandlerDir != "" {
		return c.Jobs.HandlerDir
	}
	return filepath.Join(c.StateDir, "handlers")
}

// Flags registers the command-line overrides on fs. Call Apply after
// fs.Parse to copy the flags that were set into a Config.
type Flags struct {
	fs           *flag.FlagSet
	endpoint     string
	port         int
	alpn         bool
	rootCA       string
	stateDir     string
	logLevel     string
	claimCert    string
	claimKey     string
	template     string
	serial       string
	keyAlgorithm string
}

// RegisterFlags defines the override flags on fs.
func RegisterFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	fs.StringVar(&f.endpoint, "endpoint", "", "override endpoint (AWS IoT data endpoint host)")
	fs.IntVar(&f.port, "port", 0, "override port")
	fs.BoolVar(&f.alpn, "alpn", false, "override alpn (x-amzn-mqtt-ca, required on port 443)")
	fs.StringVar(&f.rootCA, "root-ca", "", "override rootCAFile")
	fs.StringVar(&f.stateDir, "state-dir", "", "override stateDir")
	fs.StringVar(&f.logLevel, "log-level", "", "override logLevel (debug|info|warn|error)")
	fs.StringVar(&f.claimCert, "claim-cert", "", "override provisioning.claimCertFile")
	fs.StringVar(&f.claimKey, "claim-key", "", "override provisioning.claimKeyFile")
	fs.StringVar(&f.template, "template", "", "override provisioning.templateName")
	fs.StringVar(&f.serial, "serial", "", "override provisioning.serial")
	fs.StringVar(&f.keyAlgorithm, "key-algorithm", "", "override provisioning.keyAlgorithm (ecdsa-p256|rsa-2048)")
	return f
}

// Apply copies every flag that was set on the command line into c.
func (f *Flags) Apply(c *Config) {
	f.fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "endpoint":
			c.Endpoint = f.endpoint
		case "port":
			c.Port = f.port
		case "alpn":
			c.ALPN = f.alpn
		case "root-ca":
			c.RootCAFile = f.rootCA
		case "state-dir":
			c.StateDir = f.stateDir
		case "log-level":
			c.LogLevel = f.logLevel
		case "claim-cert":
			c.Provisioning.ClaimCertFile = f.claimCert
		case "claim-key":
			c.Provisioning.ClaimKeyFile = f.claimKey
		case "template":
			c.Provisioning.TemplateName = f.template
		case "serial":
			c.Provisioning.Serial = f.serial
		case "key-algorithm":
			c.Provisioning.KeyAlgorithm = f.keyAlgorithm
		}
	})
}
