package components

import (
	"encoding/json"
	"sort"
	"sync"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/stretchr/testify/require"
)

// recorder is a mock provider that keeps every resource's inputs and
// echoes them as outputs, giving each resource the ARN
// "arn:aws:mock:::<name>" (and its name as name when it has none).
type recorder struct {
	mu  sync.Mutex
	res []pulumi.MockResourceArgs
}

func (r *recorder) NewResource(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	r.mu.Lock()
	r.res = append(r.res, args)
	r.mu.Unlock()
	out := args.Inputs.Copy()
	out["arn"] = resource.NewStringProperty("arn:aws:mock:::" + args.Name)
	if _, ok := out["name"]; !ok {
		out["name"] = resource.NewStringProperty(args.Name)
	}
	return args.Name + "-id", out, nil
}

func (r *recorder) Call(pulumi.MockCallArgs) (resource.PropertyMap, error) {
	return resource.PropertyMap{}, nil
}

// find is the inputs of the resource of type typ named name.
func (r *recorder) find(t *testing.T, typ, name string) resource.PropertyMap {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.res {
		if a.TypeToken == typ && a.Name == name {
			return a.Inputs
		}
	}
	t.Fatalf("no %s %s", typ, name)
	return nil
}

// count is the number of resources of type typ (all when empty).
func (r *recorder) count(typ string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, a := range r.res {
		if typ == "" || a.TypeToken == typ {
			n++
		}
	}
	return n
}

// types are the type tokens of the resources declared, in order.
func (r *recorder) types() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, a := range r.res {
		out = append(out, a.TypeToken)
	}
	return out
}

// runMocked runs body against a recorder.
func runMocked(t *testing.T, body pulumi.RunFunc) (*recorder, error) {
	t.Helper()
	rec := &recorder{}
	err := pulumi.RunErr(body, pulumi.WithMocks("iot-fleet", "test", rec))
	return rec, err
}

// str is the string at path in m ("" when missing or not a string).
func str(m resource.PropertyMap, path ...string) string {
	v := resource.NewObjectProperty(m)
	for _, k := range path {
		if !v.IsObject() {
			return ""
		}
		v = v.ObjectValue()[resource.PropertyKey(k)]
	}
	if v.IsString() {
		return v.StringValue()
	}
	return ""
}

// policyStatement is one statement of a rendered IAM policy document.
type policyStatement struct {
	Sid       string
	Effect    string
	Action    []string
	Resource  []string
	Condition map[string]map[string]any
}

// statements parses a rendered IAM policy document.
func statements(t *testing.T, doc string) []policyStatement {
	t.Helper()
	var d struct{ Statement []policyStatement }
	require.NoError(t, json.Unmarshal([]byte(doc), &d), doc)
	return d.Statement
}

// actionResources maps each granted (Allow) action to its sorted
// resources.
func actionResources(sts []policyStatement) map[string][]string {
	return effectResources(sts, "Allow")
}

// effectResources maps each action of the statements with effect to its
// sorted resources.
func effectResources(sts []policyStatement, effect string) map[string][]string {
	out := map[string][]string{}
	for _, s := range sts {
		if s.Effect != effect {
			continue
		}
		for _, a := range s.Action {
			out[a] = append(out[a], s.Resource...)
		}
	}
	for _, v := range out {
		sort.Strings(v)
	}
	return out
}

// grants is actionResources of a rendered policy document.
func grants(t *testing.T, doc string) map[string][]string {
	t.Helper()
	return actionResources(statements(t, doc))
}

// denies maps each denied action of a rendered policy document to its
// sorted resources.
func denies(t *testing.T, doc string) map[string][]string {
	t.Helper()
	return effectResources(statements(t, doc), "Deny")
}
