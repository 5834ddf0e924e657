// Package stackconfig is the typed configuration of an iot-fleet Pulumi
// stack (Pulumi.<stack>.yaml). Every key is parsed and validated before any
// resource is declared; a bad value is reported with the full key name
// ("iot-fleet:logRetentionDays") and every bad key is reported at once.
package stackconfig

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Namespace is the project's configuration namespace (the Pulumi project
// name).
const Namespace = "iot-fleet"

// Full configuration keys.
const (
	KeyRegion                   = "aws:region"
	KeyEnvironment              = Namespace + ":environment"
	KeyThingGroup               = Namespace + ":thingGroup"
	KeySerialPattern            = Namespace + ":serialPattern"
	KeyCertExpiryWindowDays     = Namespace + ":certExpiryWindowDays"
	KeySSMActivationExpiryHours = Namespace + ":ssmActivationExpiryHours"
	KeyLogRetentionDays         = Namespace + ":logRetentionDays"
	KeyAllowlistPath            = Namespace + ":allowlistPath"
	KeyDeletionProtection       = Namespace + ":deletionProtection"
	KeyClaimCertificateArn      = Namespace + ":claimCertificateArn"
	// KeyCredentialDurationSeconds is the lifetime of the credentials the
	// role alias hands devices; at most TokenExchangeMaxSessionSeconds.
	KeyCredentialDurationSeconds = Namespace + ":credentialDurationSeconds"
	// KeyMaxRevocationsPerSync caps the revocations one allowlist sync
	// makes (env MAX_REVOCATIONS_PER_SYNC of the sync Lambda); unset means
	// the Lambda's default.
	KeyMaxRevocationsPerSync = Namespace + ":maxRevocationsPerSync"
	// KeyAllowlistConfirmRevocations, when > 0, is set as the allowlist
	// object's metadata confirm-revocations: the sync lifts the limit for
	// that object only if its plan makes exactly that many revocations.
	// Meant for one deploy (the workflow's input), never the stack file.
	KeyAllowlistConfirmRevocations = Namespace + ":allowlistConfirmRevocations"
	// KeyAdoptRetained makes the next deployment import what a destroy
	// retained under fixed names (device policy, thing group, a
	// deletion-protected registry table) instead of failing to create
	// them; docs/delivery.md.
	KeyAdoptRetained = Namespace + ":adoptRetained"
)

// Defaults of the optional keys. Pulumi.yaml declares the same defaults
// (a test keeps them equal).
const (
	DefaultSerialPattern             = `^[0-9a-f]{16}$`
	DefaultCertExpiryWindowDays      = 30
	DefaultSSMActivationExpiryHours  = 24
	DefaultLogRetentionDays          = 30
	DefaultAllowlistPath             = "allowlist.txt"
	DefaultCredentialDurationSeconds = 3600
)

// TokenExchangeMaxSessionSeconds is the MaxSessionDuration the program
// sets on the token-exchange role. AWS IoT's credentials provider cannot
// hand out credentials that outlive it, so credentialDurationSeconds may
// not exceed it.
const TokenExchangeMaxSessionSeconds = 3600

// MinCredentialDurationSeconds is the shortest credential lifetime a role
// alias accepts.
const MinCredentialDurationSeconds = 900

// maxCount bounds the revocation counts (far above any fleet this stack
// runs; it only catches typos such as an extra digit or a pasted id).
const maxCount = 100000

// Keys lists every key the loader reads, so callers (and tests) can reject
// unknown keys in a stack file.
func Keys() []string {
	return []string{
		KeyRegion, KeyEnvironment, KeyThingGroup, KeySerialPattern,
		KeyCertExpiryWindowDays, KeySSMActivationExpiryHours, KeyLogRetentionDays,
		KeyAllowlistPath, KeyDeletionProtection, KeyClaimCertificateArn,
		KeyCredentialDurationSeconds, KeyMaxRevocationsPerSync, KeyAllowlistConfirmRevocations, KeyAdoptRetained,
	}
}

// Config is a validated stack configuration.
type Config struct {
	// Region is the AWS region (aws:region).
	Region string
	// Environment is the environment name, e.g. "dev" or "prod".
	Environment string
	// ThingGroup is the thing group every provisioned device joins.
	ThingGroup string
	// SerialPattern is the anchored Go regexp a device serial must match.
	SerialPattern string
	// CertExpiryWindowDays: certificates expiring within this many days
	// are rotated.
	CertExpiryWindowDays int
	// SSMActivationExpiryHours is the lifetime of an SSM hybrid activation.
	SSMActivationExpiryHours int
	// LogRetentionDays is the retention of every log group of the stack.
	LogRetentionDays int
	// AllowlistPath is the allowlist file, relative to the project root.
	AllowlistPath string
	// DeletionProtection protects stateful resources (the registry table)
	// from deletion.
	DeletionProtection bool
	// ClaimCertificateArn, when set, adopts an existing claim certificate
	// (one retained from an earlier deployment of this environment)
	// instead of creating a new one.
	ClaimCertificateArn string
	// CredentialDurationSeconds is the role alias's credential lifetime
	// (MinCredentialDurationSeconds to TokenExchangeMaxSessionSeconds).
	CredentialDurationSeconds int
	// MaxRevocationsPerSync is the sync Lambda's revocation limit; 0 means
	// unset (the Lambda's default, max(5, ceil(10% of the provisioned fleet)).
	MaxRevocationsPerSync int
	// AllowlistConfirmRevocations, when > 0, is the allowlist object's
	// confirm-revocations metadata for this deploy.
	AllowlistConfirmRevocations int
	// AdoptRetained imports the resources an earlier destroy of this
	// environment retained under fixed names.
	AdoptRetained bool
}

// Prefix is the name prefix of the environment's resources:
// "iot-fleet-<env>".
func (c Config) Prefix() string { return Namespace + "-" + c.Environment }

// ThingNamePrefix is prepended to a serial to form the thing name: "<env>-".
func (c Config) ThingNamePrefix() string { return c.Environment + "-" }

// TemplateName is the fleet provisioning template name.
func (c Config) TemplateName() string { return c.Prefix() }

// ClaimPolicyName is the IoT policy of the claim certificate.
func (c Config) ClaimPolicyName() string { return c.Prefix() + "-claim" }

// DevicePolicyName is the IoT policy of every device certificate.
func (c Config) DevicePolicyName() string { return c.Prefix() + "-device" }

// RoleAliasName is the credentials-provider role alias.
func (c Config) RoleAliasName() string { return c.Prefix() + "-token-exchange" }

// ClaimSecretName is the Secrets Manager secret holding the claim
// certificate and its private key.
func (c Config) ClaimSecretName() string {
	return Namespace + "/" + c.Environment + "/claim-certificate"
}

// Lookup returns the raw value of a full configuration key and whether it
// is set.
type Lookup func(key string) (string, bool)

// FromContext reads the configuration of the running Pulumi program.
func FromContext(ctx *pulumi.Context) (Config, error) {
	return Parse(ctx.GetConfig)
}

// FromMap reads the configuration from a map of full keys to values (the
// form the Pulumi engine passes to a program).
func FromMap(m map[string]string) (Config, error) {
	return Parse(func(key string) (string, bool) {
		v, ok := m[key]
		return v, ok
	})
}

var (
	regionRE       = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]$`)
	environmentRE  = regexp.MustCompile(`^[a-z][a-z0-9]{1,15}$`)
	thingGroupRE   = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)
	certificateARN = regexp.MustCompile(`^arn:aws[a-z-]*:iot:[a-z0-9-]+:[0-9]{12}:cert/[0-9a-f]{64}$`)
)

// logRetentionDays are the values CloudWatch Logs accepts.
var logRetentionDays = []int{1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}

// Parse reads and validates every key through lookup. The error lists every
// invalid key.
func Parse(lookup Lookup) (Config, error) {
	p := parser{lookup: lookup}
	c := Config{
		Region:                      p.required(KeyRegion),
		Environment:                 p.required(KeyEnvironment),
		SerialPattern:               p.str(KeySerialPattern, DefaultSerialPattern),
		CertExpiryWindowDays:        p.intRange(KeyCertExpiryWindowDays, DefaultCertExpiryWindowDays, 1, 365),
		SSMActivationExpiryHours:    p.intRange(KeySSMActivationExpiryHours, DefaultSSMActivationExpiryHours, 1, 720),
		LogRetentionDays:            p.intRange(KeyLogRetentionDays, DefaultLogRetentionDays, 1, 3653),
		AllowlistPath:               p.str(KeyAllowlistPath, DefaultAllowlistPath),
		DeletionProtection:          p.boolean(KeyDeletionProtection, false),
		ClaimCertificateArn:         p.str(KeyClaimCertificateArn, ""),
		CredentialDurationSeconds:   p.credentialDuration(),
		MaxRevocationsPerSync:       p.optionalInt(KeyMaxRevocationsPerSync, 1, maxCount),
		AllowlistConfirmRevocations: p.optionalInt(KeyAllowlistConfirmRevocations, 0, maxCount),
		AdoptRetained:               p.boolean(KeyAdoptRetained, false),
	}
	if c.Region != "" && !regionRE.MatchString(c.Region) {
		p.fail(KeyRegion, "%q is not an AWS region name", c.Region)
	}
	if c.Environment != "" && !environmentRE.MatchString(c.Environment) {
		p.fail(KeyEnvironment, "%q must be 2-16 lower-case letters or digits, starting with a letter (e.g. dev, prod)", c.Environment)
	}
	c.ThingGroup = p.str(KeyThingGroup, c.Prefix())
	if !thingGroupRE.MatchString(c.ThingGroup) {
		p.fail(KeyThingGroup, "%q must be 1-128 characters of a-z, A-Z, 0-9, ':', '_' or '-'", c.ThingGroup)
	}
	if err := checkSerialPattern(c.SerialPattern); err != nil {
		p.fail(KeySerialPattern, "%v", err)
	}
	if c.LogRetentionDays != 0 && !slices.Contains(logRetentionDays, c.LogRetentionDays) {
		p.fail(KeyLogRetentionDays, "%d is not a CloudWatch Logs retention; use one of %v", c.LogRetentionDays, logRetentionDays)
	}
	if filepath.IsAbs(c.AllowlistPath) || c.AllowlistPath == "" || !filepath.IsLocal(c.AllowlistPath) {
		p.fail(KeyAllowlistPath, "%q must be a relative path inside the project", c.AllowlistPath)
	}
	if c.ClaimCertificateArn != "" && !certificateARN.MatchString(c.ClaimCertificateArn) {
		p.fail(KeyClaimCertificateArn, "%q is not an IoT certificate ARN (arn:aws:iot:<region>:<account>:cert/<64 hex>)", c.ClaimCertificateArn)
	}
	if err := errors.Join(p.errs...); err != nil {
		return Config{}, fmt.Errorf("stack configuration: %w", err)
	}
	return c, nil
}

// checkSerialPattern requires a compilable, anchored pattern that rejects
// the empty serial and anything that could break out of a topic level or
// thing name.
func checkSerialPattern(pattern string) error {
	if !strings.HasPrefix(pattern, "^") || !strings.HasSuffix(pattern, "$") {
		return fmt.Errorf("%q must be anchored with ^ and $", pattern)
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return fmt.Errorf("%q does not compile: %w", pattern, err)
	}
	for _, bad := range []string{"", "a/b", "+", "#", "a b", "${iot:ClientId}"} {
		if re.MatchString(bad) {
			return fmt.Errorf("%q accepts %q; serials become thing names and topic levels", pattern, bad)
		}
	}
	return nil
}

type parser struct {
	lookup Lookup
	errs   []error
}

func (p *parser) fail(key, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
}

func (p *parser) required(key string) string {
	v, ok := p.lookup(key)
	v = strings.TrimSpace(v)
	if !ok || v == "" {
		p.fail(key, "required but not set (pulumi config set %s <value>)", key)
		return ""
	}
	return v
}

// str returns the value of key, or def when it is unset or empty.
func (p *parser) str(key, def string) string {
	v, ok := p.lookup(key)
	if v = strings.TrimSpace(v); !ok || v == "" {
		return def
	}
	return v
}

func (p *parser) intRange(key string, def, lo, hi int) int {
	v, ok := p.lookup(key)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		p.fail(key, "%q is not an integer", v)
		return 0
	}
	if n < lo || n > hi {
		p.fail(key, "%d is out of range [%d, %d]", n, lo, hi)
		return 0
	}
	return n
}

// optionalInt is intRange for a key without default: 0 when unset or
// empty.
func (p *parser) optionalInt(key string, lo, hi int) int {
	v, ok := p.lookup(key)
	if !ok || strings.TrimSpace(v) == "" {
		return 0
	}
	return p.intRange(key, 0, lo, hi)
}

// credentialDuration reads KeyCredentialDurationSeconds and checks it
// against the role alias's minimum and the token-exchange role's
// MaxSessionDuration.
func (p *parser) credentialDuration() int {
	v, ok := p.lookup(KeyCredentialDurationSeconds)
	if !ok {
		return DefaultCredentialDurationSeconds
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	switch {
	case err != nil:
		p.fail(KeyCredentialDurationSeconds, "%q is not an integer (seconds)", v)
		return 0
	case n < MinCredentialDurationSeconds:
		p.fail(KeyCredentialDurationSeconds, "%d is below the role alias minimum of %d seconds", n, MinCredentialDurationSeconds)
		return 0
	case n > TokenExchangeMaxSessionSeconds:
		p.fail(KeyCredentialDurationSeconds, "%d exceeds the token-exchange role's MaxSessionDuration of %d seconds: "+
			"the credentials provider could not hand out credentials that long", n, TokenExchangeMaxSessionSeconds)
		return 0
	}
	return n
}

func (p *parser) boolean(key string, def bool) bool {
	v, ok := p.lookup(key)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		p.fail(key, "%q is not a boolean (true or false)", v)
		return false
	}
	return b
}
