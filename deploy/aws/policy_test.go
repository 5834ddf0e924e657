package aws

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// statement is one IAM policy statement; Action, Resource and Principal may
// be a string or a list in IAM JSON.
type statement struct {
	Sid          string                    `json:"Sid"`
	Effect       string                    `json:"Effect"`
	Principal    map[string]any            `json:"Principal"`
	Action       stringList                `json:"Action"`
	NotAction    stringList                `json:"NotAction"`
	Resource     stringList                `json:"Resource"`
	NotResource  stringList                `json:"NotResource"`
	NotPrincipal map[string]any            `json:"NotPrincipal"`
	Condition    map[string]map[string]any `json:"Condition"`
}

type document struct {
	Version   string      `json:"Version"`
	Statement []statement `json:"Statement"`
}

type stringList []string

func (s *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*s = many
	return nil
}

// resourceStarAllowed lists the only actions that may use "Resource": "*",
// because IAM defines no resource type for them (Service Authorization
// Reference). Each is documented in docs/delivery.md.
var resourceStarAllowed = map[string]string{
	"sts:GetCallerIdentity":        "no resource type; Pulumi's AWS provider calls it to learn the account",
	"iot:DescribeEndpoint":         "no resource type; the stack reads the data and credentials endpoints",
	"iot:CreateKeysAndCertificate": "the certificate's ARN does not exist before the call; the claim certificate is created by the stack",
}

var placeholders = map[string]bool{"ACCOUNT_ID": true, "REGION": true, "GITHUB_ORG": true, "GITHUB_REPO": true, "STATE_BUCKET": true}

func load(t *testing.T, name string) document {
	t.Helper()
	b, err := os.ReadFile(name)
	require.NoError(t, err)
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var d document
	require.NoError(t, dec.Decode(&d), name)
	return d
}

func policyFiles(t *testing.T) []string {
	files, err := filepath.Glob("*.json")
	require.NoError(t, err)
	sort.Strings(files)
	require.Equal(t, []string{
		"deploy-role-policy.json", "github-oidc-trust-policy.json", "image-build-role-policy.json",
		"preview-role-policy.json", "preview-trust-policy.json",
	}, files)
	return files
}

var upperToken = regexp.MustCompile(`\b[A-Z][A-Z_]{3,}\b`)

func TestDocumentsAreWellFormed(t *testing.T) {
	for _, f := range policyFiles(t) {
		t.Run(f, func(t *testing.T) {
			d := load(t, f)
			assert.Equal(t, "2012-10-17", d.Version)
			require.NotEmpty(t, d.Statement)
			sids := map[string]bool{}
			for _, s := range d.Statement {
				assert.NotEmpty(t, s.Sid, "every statement has a Sid")
				assert.False(t, sids[s.Sid], "duplicate Sid %s", s.Sid)
				sids[s.Sid] = true
				assert.Equal(t, "Allow", s.Effect, s.Sid)
				assert.Empty(t, s.NotAction, "%s: NotAction grants everything else", s.Sid)
				assert.Empty(t, s.NotResource, "%s: NotResource grants everything else", s.Sid)
				assert.Empty(t, s.NotPrincipal, s.Sid)
				assert.NotEmpty(t, s.Action, s.Sid)
			}
			raw, err := os.ReadFile(f)
			require.NoError(t, err)
			for _, tok := range upperToken.FindAllString(string(raw), -1) {
				if tok == "AWSLambdaBasicExecutionRole" {
					continue
				}
				assert.True(t, placeholders[tok], "unknown placeholder %s", tok)
			}
		})
	}
}

func TestPermissionPoliciesAreLeastPrivilege(t *testing.T) {
	for _, f := range []string{"deploy-role-policy.json", "preview-role-policy.json", "image-build-role-policy.json"} {
		t.Run(f, func(t *testing.T) {
			d := load(t, f)
			for _, s := range d.Statement {
				assert.Nil(t, s.Principal, "%s: permission policies name no principal", s.Sid)
				for _, a := range s.Action {
					assert.NotEqual(t, "*", a, "%s: Action *", s.Sid)
					assert.False(t, strings.HasSuffix(a, ":*"), "%s: %s grants a whole service", s.Sid, a)
					assert.Regexp(t, `^[a-z0-9-]+:[A-Za-z]+$`, a, "%s: actions are named one by one", s.Sid)
				}
				require.NotEmpty(t, s.Resource, s.Sid)
				for _, r := range s.Resource {
					if r == "*" {
						for _, a := range s.Action {
							_, ok := resourceStarAllowed[a]
							assert.True(t, ok, "%s: %s with Resource * is not a documented exception", s.Sid, a)
						}
						continue
					}
					assert.Regexp(t, `^arn:aws:[a-z0-9-]+:(REGION)?:(ACCOUNT_ID|aws)?:.+`, r, "%s: resource %s", s.Sid, r)
					if !strings.HasPrefix(r, "arn:aws:s3:::STATE_BUCKET") {
						assert.Regexp(t, `iot-fleet|iot_fleet|cert/\*|log-group:\*`, r, "%s: %s is outside the stack's names", s.Sid, r)
					}
				}
			}
		})
	}
}

// Every iam:PassRole is limited to the stack's roles and to the services
// that use them, and role policies can only be attached from the stack's
// own policies: the deploy role cannot hand itself administrator rights
// through a managed policy.
func TestIAMEscalationGuards(t *testing.T) {
	d := load(t, "deploy-role-policy.json")
	for _, s := range d.Statement {
		for _, a := range s.Action {
			switch a {
			case "iam:PassRole":
				assert.Equal(t, stringList{"arn:aws:iam::ACCOUNT_ID:role/iot-fleet-*"}, s.Resource)
				require.Contains(t, s.Condition, "StringEquals")
				assert.Contains(t, s.Condition["StringEquals"], "iam:PassedToService")
			case "iam:AttachRolePolicy":
				require.Contains(t, s.Condition, "ArnLike")
				assert.Contains(t, s.Condition["ArnLike"], "iam:PolicyARN")
			}
			assert.NotContains(t, []string{"iam:CreateUser", "iam:CreateAccessKey", "iam:AttachUserPolicy", "iam:PutUserPolicy", "iam:CreateOpenIDConnectProvider"}, a)
		}
		for _, r := range s.Resource {
			assert.NotContains(t, r, "github", "%s: the pipeline role must not be able to change its own role", s.Sid)
		}
	}
}

func TestTrustPoliciesPinRepositoryEnvironmentAndBranch(t *testing.T) {
	subs := func(t *testing.T, f string) (equals, like []string) {
		d := load(t, f)
		require.Len(t, d.Statement, 1)
		s := d.Statement[0]
		assert.Equal(t, stringList{"sts:AssumeRoleWithWebIdentity"}, s.Action)
		assert.Equal(t, "arn:aws:iam::ACCOUNT_ID:oidc-provider/token.actions.githubusercontent.com", s.Principal["Federated"])
		assert.Empty(t, s.Resource)
		eq := s.Condition["StringEquals"]
		assert.Equal(t, "sts.amazonaws.com", eq["token.actions.githubusercontent.com:aud"])
		for _, v := range asList(eq["token.actions.githubusercontent.com:sub"]) {
			equals = append(equals, v)
		}
		for _, v := range asList(s.Condition["StringLike"]["token.actions.githubusercontent.com:sub"]) {
			like = append(like, v)
		}
		return equals, like
	}

	eq, like := subs(t, "github-oidc-trust-policy.json")
	assert.Empty(t, like, "the deploy trust has no wildcard subjects")
	assert.ElementsMatch(t, []string{
		"repo:GITHUB_ORG/GITHUB_REPO:environment:dev:ref:refs/heads/main",
		"repo:GITHUB_ORG/GITHUB_REPO:environment:prod:ref:refs/heads/main",
	}, eq)

	eq, like = subs(t, "preview-trust-policy.json")
	assert.Empty(t, eq)
	assert.Equal(t, []string{"repo:GITHUB_ORG/GITHUB_REPO:environment:preview:ref:refs/pull/*/merge"}, like)
}

func asList(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// The preview role can read but not change the stack, and the image-build
// role can only read the claim secret and write images.
func TestReadOnlyRoles(t *testing.T) {
	mutating := regexp.MustCompile(`:(Create|Delete|Update|Put|Attach|Detach|Replace|Set|Tag|Untag|Add|Remove|Pass|Enable|Disable)`)
	for _, s := range load(t, "preview-role-policy.json").Statement {
		for _, a := range s.Action {
			if mutating.MatchString(a) {
				assert.Equal(t, "PulumiPreviewLock", s.Sid, "%s: %s", s.Sid, a)
				assert.Equal(t, stringList{"arn:aws:s3:::STATE_BUCKET/.pulumi/locks/*"}, s.Resource)
			}
		}
	}
	for _, s := range load(t, "image-build-role-policy.json").Statement {
		for _, a := range s.Action {
			if mutating.MatchString(a) {
				assert.Equal(t, stringList{"arn:aws:s3:::iot-fleet-*/images/*"}, s.Resource, "%s: %s", s.Sid, a)
			}
			if strings.HasPrefix(a, "secretsmanager:") {
				assert.Equal(t, stringList{"arn:aws:secretsmanager:REGION:ACCOUNT_ID:secret:iot-fleet/*/claim-certificate-*"}, s.Resource)
			}
		}
	}
}
