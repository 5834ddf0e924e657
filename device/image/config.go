package image

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strings"
)

// StackOutputs are the string outputs of `pulumi stack output --json`.
type StackOutputs map[string]string

// Stack outputs the image build reads (names exported by infra/).
const (
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
