// Package config loads and validates the agent's JSON configuration file
// (documented in example.json next to this file) and applies command-line
// overrides. Every problem of a file is reported at once, each with its
// JSON path (*Errors).
//
// Each feature owns its section: its own file declares the section's type,
// its Default<Section>() and a validate(path, errs) method (the section
// interface); this file only composes them, with the top-level fields and
// the rules that span sections.
package config

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"
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

	// The sections, each in its own file; every one implements section.
	Provisioning Provisioning `json:"provisioning"`
	MQTT         MQTT         `json:"mqtt"`
	Outbox       Outbox       `json:"outbox"`
	Jobs         Jobs         `json:"jobs"`
	OTA          OTA          `json:"ota"`
	SSM          SSM          `json:"ssm"`
	Rotation     Rotation     `json:"rotation"`
	Shadow       Shadow       `json:"shadow"`
}

// section is the convention each feature's part of the file follows:
// validate adds every problem of the section to errs, each named by its
// JSON path under path (the section's key).
type section interface {
	validate(path string, errs *Errors)
}

// Default returns the configuration with every default filled in.
func Default() Config {
	return Config{
		Port:         8883,
		RootCAFile:   "/etc/fleet-agent/AmazonRootCA1.pem",
		StateDir:     "/var/lib/fleet-agent",
		LogLevel:     "info",
		Provisioning: DefaultProvisioning(),
		MQTT:         DefaultMQTT(),
		Outbox:       DefaultOutbox(),
		Jobs:         DefaultJobs(),
		OTA:          DefaultOTA(),
		SSM:          DefaultSSM(),
		Rotation:     DefaultRotation(),
		Shadow:       DefaultShadow(),
	}
}

// Load reads path over the defaults, without validating; every decoding
// problem is reported (*Errors).
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return Parse(data)
}

// Parse decodes data over the defaults, without validating. A JSON syntax
// error or trailing data is reported alone; otherwise every type error,
// unknown key, case-mismatched key, repeated key and bad duration is
// reported at once with its JSON path (*Errors).
func Parse(data []byte) (Config, error) {
	cfg := Default()
	errs := &Errors{}
	if err := decodeFile(data, &cfg, errs); err != nil {
		return Config{}, err
	}
	if err := errs.Err(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// LoadValid reads path as the agent does at start: the file over the
// defaults, then overrides (the command-line flags' Apply), then Validate.
// Every problem, decoding and validation, is reported at once (*Errors);
// a field that could not be decoded keeps its default for the rules, and
// the rules about that field itself are not reported again.
func LoadValid(path string, overrides ...func(*Config)) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return ParseValid(data, overrides...)
}

// ParseValid is LoadValid of the file's contents.
func ParseValid(data []byte, overrides ...func(*Config)) (Config, error) {
	cfg := Default()
	decoded := &Errors{}
	if err := decodeFile(data, &cfg, decoded); err != nil {
		return Config{}, err
	}
	for _, o := range overrides {
		o(&cfg)
	}
	rules := &Errors{}
	cfg.validate(rules)
	errs := &Errors{List: decoded.List, Omitted: decoded.Omitted}
	for _, fe := range rules.List {
		if !overlaps(decoded.List, fe.Field) {
			errs.Add(fe.Field, "%s", fe.Problem)
		}
	}
	errs.Omitted += rules.Omitted
	if err := errs.Err(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// overlaps reports whether a problem in list is about field, a field
// inside it, or the object or list that holds it.
func overlaps(list []*FieldError, field string) bool {
	within := func(inner, outer string) bool {
		return inner == outer || outer == "" ||
			strings.HasPrefix(inner, outer+".") || strings.HasPrefix(inner, outer+"[")
	}
	for _, fe := range list {
		if within(fe.Field, field) || within(field, fe.Field) {
			return true
		}
	}
	return false
}

// Validate checks every field and reports every problem (*Errors).
func (c Config) Validate() error {
	errs := &Errors{}
	c.validate(errs)
	return errs.Err()
}

func (c Config) validate(errs *Errors) {
	switch {
	case c.Endpoint == "":
		errs.Add("endpoint", "is required (the AWS IoT data endpoint host name)")
	case strings.Contains(c.Endpoint, "://") || strings.ContainsAny(c.Endpoint, "/ "):
		errs.Add("endpoint", "must be a host name without scheme or path, got %q", c.Endpoint)
	default:
		if _, _, err := net.SplitHostPort(c.Endpoint); err == nil {
			errs.Add("endpoint", "must not include a port; use the port field")
		}
	}
	if c.Port < 1 || c.Port > 65535 {
		errs.Add("port", "must be between 1 and 65535, got %d", c.Port)
	} else if c.Port == 443 && !c.ALPN {
		errs.Add("alpn", "must be true on port 443 (AWS IoT Core needs ALPN x-amzn-mqtt-ca for MQTT on 443)")
	}
	required(errs, "rootCAFile", c.RootCAFile)
	if required(errs, "stateDir", c.StateDir) && !filepath.IsAbs(c.StateDir) {
		errs.Add("stateDir", "must be an absolute path, got %q", c.StateDir)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs.Add("logLevel", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	// Each section checks itself, under its JSON key.
	v := reflect.ValueOf(c)
	for i := range v.NumField() {
		if s, ok := v.Field(i).Interface().(section); ok {
			name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
			s.validate(name, errs)
		}
	}
	// Rules across sections.
	if !errs.Has("rotation.switchTimeout") && c.Rotation.SwitchTimeout.D() < 2*c.MQTT.ReconnectMax.D() {
		errs.Add("rotation.switchTimeout", "must be at least twice mqtt.reconnectMax (%v), got %v", c.MQTT.ReconnectMax.D(), c.Rotation.SwitchTimeout.D())
	}
}

// required adds "is required" when v is empty and reports whether v is
// set.
func required(errs *Errors, field, v string) bool {
	if v == "" {
		errs.Add(field, "is required")
		return false
	}
	return true
}

// atLeast adds a problem when d is below lowest.
func atLeast(errs *Errors, field string, d Duration, lowest time.Duration) {
	if d.D() < lowest {
		errs.Add(field, "must be at least %v, got %v", lowest, d.D())
	}
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
