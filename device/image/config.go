package image

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strings"

	"github.com/iot-fleet/iot-fleet/device/ota"
)

// StackOutputs are the string outputs of `pulumi stack output --json`.
type StackOutputs map[string]string

// Stack outputs the image build reads (names exported by infra/).
const (
	OutputArtifactsBucket     = "artifactsBucket"
	OutputRegion              = "region"
	OutputDataEndpoint        = "iotDataEndpoint"
	OutputCredentialsEndpoint = "iotCredentialsEndpoint"
	OutputTemplate            = "provisioningTemplate"
	OutputRoleAlias           = "roleAlias"
	OutputClaimSecretArn      = "claimCertificateSecretArn"
)

// ParseStackOutputs reads `pulumi stack output --json`. Non-string outputs
// are ignored; secret outputs appear as "[secret]" and are never needed.
func ParseStackOutputs(b []byte) (StackOutputs, error) {
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("stack outputs: not a JSON object: %w", err)
	}
	out := StackOutputs{}
	for k, v := range raw {
		if s, ok := v.(string); ok {
			out[k] = s
		}
	}
	return out, nil
}

var placeholder = regexp.MustCompile(`\$\{([A-Za-z][A-Za-z0-9]*)\}`)

// RenderConfig fills the ${name} placeholders of the embedded
// config.template.json from values (stack outputs plus "environment"). Values
// are JSON-escaped, so an output cannot break out of its string. Every
// placeholder must have a non-empty value; the error names all that do not.
func RenderConfig(values map[string]string) ([]byte, error) {
	tmpl, err := fs.ReadFile(files, "config.template.json")
	if err != nil {
		return nil, fmt.Errorf("config template: %w", err)
	}
	return renderConfig(tmpl, values)
}

func renderConfig(tmpl []byte, values map[string]string) ([]byte, error) {
	missing := map[string]bool{}
	out := placeholder.ReplaceAllFunc(tmpl, func(m []byte) []byte {
		name := string(placeholder.FindSubmatch(m)[1])
		v, ok := values[name]
		if !ok || v == "" || v == "[secret]" {
			missing[name] = true
			return m
		}
		q, _ := json.Marshal(v) // a string always marshals
		return q[1 : len(q)-1]
	})
	if len(missing) > 0 {
		names := make([]string, 0, len(missing))
		for n := range missing {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("config template: no value for %s (stack outputs and environment)", strings.Join(names, ", "))
	}
	if bytes.Contains(out, []byte("${")) {
		return nil, fmt.Errorf("config template: malformed placeholder left after rendering")
	}
	var check map[string]any
	if err := json.Unmarshal(out, &check); err != nil {
		return nil, fmt.Errorf("config template: rendered configuration is not a JSON object: %w", err)
	}
	return out, nil
}

// Paths of mender's configuration and of the artifact verification key in
// the image (the agent's ota.artifactVerifyKey names the same file).
const (
	MenderConfPath        = "/etc/mender/mender.conf"
	ArtifactVerifyKeyPath = "/etc/mender/artifact-verify-key.pem"
)

// MenderConf returns mender's configuration for the image: base (the base
// image's /etc/mender/mender.conf, or nil when it has none) with every
// setting kept and ArtifactVerifyKey set to ArtifactVerifyKeyPath, so
// mender refuses unsigned and wrongly signed artifacts.
func MenderConf(base []byte) ([]byte, error) {
	conf := map[string]json.RawMessage{}
	if len(bytes.TrimSpace(base)) > 0 {
		if err := json.Unmarshal(base, &conf); err != nil || conf == nil {
			return nil, fmt.Errorf("base image's %s is not a JSON object: %v", MenderConfPath, err)
		}
	}
	key, _ := json.Marshal(ArtifactVerifyKeyPath)
	conf["ArtifactVerifyKey"] = key
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("mender configuration: %w", err)
	}
	return append(out, '\n'), nil
}

// CheckArtifactVerifyKey checks the public key mender verifies artifact
// signatures with: one PEM "PUBLIC KEY" (RSA >= 2048 bits, ECDSA or
// Ed25519), never a private key.
func CheckArtifactVerifyKey(b []byte) error {
	return ota.CheckVerifyKey(b)
}
