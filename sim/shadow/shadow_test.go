package shadow

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

const (
	thing = "dev-1000"
	name  = "fleet-agent"
)

type recorder struct{ msgs []message }

func (r *recorder) publish(topic string, payload []byte) {
	r.msgs = append(r.msgs, message{topic, append([]byte(nil), payload...)})
}

// take returns and forgets the messages published so far, by topic.
func (r *recorder) take() map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, m := range r.msgs {
		var v map[string]any
		if err := json.Unmarshal(m.payload, &v); err != nil {
			panic(err)
		}
		out[m.topic] = v
	}
	r.msgs = nil
	return out
}

const now = 1700000000

func newService() (*Service, *recorder) {
	r := &recorder{}
	return New(Options{Publish: r.publish, Now: func() time.Time { return time.Unix(now, 0) }}), r
}

func topic(op string) string { return protocol.NamedShadowPrefix(thing, name) + "/" + op }

func do(s *Service, r *recorder, op, payload string) map[string]map[string]any {
	s.Handle(context.Background(), topic(op), []byte(payload))
	return r.take()
}

func jsonEq(t *testing.T, what string, got any, want string) {
	t.Helper()
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: bad want: %v", what, err)
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Errorf("%s:\n got %s\nwant %s", what, gb, wb)
	}
}

// The request and response documents of AWS's "Device Shadow service
// documents" page, with the example lights of its "Delta state" section.
func TestUpdateAcceptedDocumentsDelta(t *testing.T) {
	s, r := newService()
	got := do(s, r, "update", `{"state":{"reported":{"color":"GREEN","engine":"ON"}},"clientToken":"t1"}`)
	jsonEq(t, "first update/accepted", got[topic("update/accepted")], `{
		"state":{"reported":{"color":"GREEN","engine":"ON"}},
		"metadata":{"reported":{"color":{"timestamp":1700000000},"engine":{"timestamp":1700000000}}},
		"version":1,"timestamp":1700000000,"clientToken":"t1"}`)
	jsonEq(t, "first update/documents", got[topic("update/documents")], `{
		"current":{"state":{"reported":{"color":"GREEN","engine":"ON"}},
			"metadata":{"reported":{"color":{"timestamp":1700000000},"engine":{"timestamp":1700000000}}},"version":1},
		"timestamp":1700000000,"clientToken":"t1"}`)
	if _, ok := got[topic("update/delta")]; ok {
		t.Error("a reported-only update published a delta")
	}

	got = do(s, r, "update", `{"state":{"desired":{"color":"RED","state":"STOP"}},"clientToken":"t2","version":1}`)
	jsonEq(t, "delta", got[topic("update/delta")], `{
		"state":{"color":"RED","state":"STOP"},
		"metadata":{"color":{"timestamp":1700000000},"state":{"timestamp":1700000000}},
		"version":2,"timestamp":1700000000,"clientToken":"t2"}`)
	docs := got[topic("update/documents")]
	jsonEq(t, "documents previous", docs["previous"], `{
		"state":{"reported":{"color":"GREEN","engine":"ON"}},
		"metadata":{"reported":{"color":{"timestamp":1700000000},"engine":{"timestamp":1700000000}}},"version":1}`)
	if v := docs["current"].(map[string]any)["version"]; v != float64(2) {
		t.Errorf("documents current version = %v, want 2", v)
	}

	got = do(s, r, "get", `{"clientToken":"g1"}`)
	jsonEq(t, "get/accepted", got[topic("get/accepted")], `{
		"state":{"desired":{"color":"RED","state":"STOP"},"reported":{"color":"GREEN","engine":"ON"},
			"delta":{"color":"RED","state":"STOP"}},
		"metadata":{"desired":{"color":{"timestamp":1700000000},"state":{"timestamp":1700000000}},
			"reported":{"color":{"timestamp":1700000000},"engine":{"timestamp":1700000000}}},
		"version":2,"timestamp":1700000000,"clientToken":"g1"}`)

	// A report that leaves a difference gets the delta again.
	got = do(s, r, "update", `{"state":{"reported":{"engine":"OFF"}}}`)
	jsonEq(t, "delta after a report", got[topic("update/delta")]["state"], `{"color":"RED","state":"STOP"}`)

	// The device reports what it applied: no delta left; a null deletes.
	got = do(s, r, "update", `{"state":{"reported":{"color":"RED","state":"STOP","engine":null}}}`)
	if _, ok := got[topic("update/delta")]; ok {
		t.Error("a delta was published with desired and reported equal")
	}
	jsonEq(t, "accepted echoes nulls", got[topic("update/accepted")]["state"], `{"reported":{"color":"RED","state":"STOP","engine":null}}`)
	jsonEq(t, "accepted metadata omits deleted keys", got[topic("update/accepted")]["metadata"],
		`{"reported":{"color":{"timestamp":1700000000},"state":{"timestamp":1700000000}}}`)
	doc, ok := s.Get(thing, name)
	if !ok {
		t.Fatal("shadow gone")
	}
	jsonEq(t, "state after report", doc.State, `{"desired":{"color":"RED","state":"STOP"},"reported":{"color":"RED","state":"STOP"}}`)
	if doc.Version != 4 {
		t.Errorf("version = %d, want 4", doc.Version)
	}

	// desired: null deletes the section.
	do(s, r, "update", `{"state":{"desired":null}}`)
	doc, _ = s.Get(thing, name)
	jsonEq(t, "state after desired null", doc.State, `{"reported":{"color":"RED","state":"STOP"}}`)
}

// AWS's delta example with nested objects: only the nested keys that
// differ; arrays compare as a whole; numbers by value.
func TestDeltaRecursive(t *testing.T) {
	desired := map[string]any{
		"lights": map[string]any{"color": map[string]any{"r": json.Number("255"), "g": json.Number("255"), "b": json.Number("0")}},
		"modes":  []any{"a", "b"},
		"level":  json.Number("1.0"),
		"same":   "x",
	}
	reported := map[string]any{
		"lights": map[string]any{"color": map[string]any{"r": json.Number("255"), "g": json.Number("0"), "b": json.Number("255")}},
		"modes":  []any{"a"},
		"level":  json.Number("1"),
		"same":   "x",
	}
	jsonEq(t, "delta", Delta(desired, reported), `{"lights":{"color":{"g":255,"b":0}},"modes":["a","b"]}`)
	if d := Delta(reported, reported); d != nil {
		t.Errorf("delta of equal states = %v", d)
	}
}

func TestNestedMergeAndMetadata(t *testing.T) {
	s, r := newService()
	do(s, r, "update", `{"state":{"desired":{"cfg":{"a":1,"b":{"c":2}},"list":[1,2]}}}`)
	got := do(s, r, "update", `{"state":{"desired":{"cfg":{"b":{"c":null,"d":3}}}}}`)
	jsonEq(t, "accepted metadata", got[topic("update/accepted")]["metadata"], `{"desired":{"cfg":{"b":{"d":{"timestamp":1700000000}}}}}`)
	doc, _ := s.Get(thing, name)
	jsonEq(t, "merged", doc.State.Desired, `{"cfg":{"a":1,"b":{"d":3}},"list":[1,2]}`)
	jsonEq(t, "metadata", doc.Metadata.Desired, `{"cfg":{"a":{"timestamp":1700000000},"b":{"d":{"timestamp":1700000000}}},"list":[{"timestamp":1700000000},{"timestamp":1700000000}]}`)
}

// The error codes and messages of AWS's "Device Shadow error messages".
func TestRejected(t *testing.T) {
	deep := `{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}`
	big := `{"state":{"reported":{"x":"` + strings.Repeat("y", MaxStateBytes) + `"}}}`
	cases := []struct {
		name, op, payload string
		code              int
		msg               string
		token             string
	}{
		{"invalid json", "update", `{"state":`, 400, MsgInvalidJSON, ""},
		{"not an object", "update", `[1]`, 400, MsgInvalidJSON, ""},
		{"trailing data", "update", `{"state":{}} x`, 400, MsgInvalidJSON, ""},
		{"missing state", "update", `{"clientToken":"c"}`, 400, MsgMissingState, "c"},
		{"state not object", "update", `{"state":"on","clientToken":"c"}`, 400, MsgStateNotObject, "c"},
		{"desired not object", "update", `{"state":{"desired":1}}`, 400, MsgDesiredObject, ""},
		{"reported not object", "update", `{"state":{"reported":[1]}}`, 400, MsgReportedObject, ""},
		{"invalid node", "update", `{"state":{"delta":{"a":1}}}`, 400, MsgInvalidNode, ""},
		{"invalid version", "update", `{"state":{},"version":"3"}`, 400, MsgInvalidVersion, ""},
		{"fractional version", "update", `{"state":{},"version":1.5}`, 400, MsgInvalidVersion, ""},
		{"token too long", "update", `{"state":{},"clientToken":"` + strings.Repeat("t", 65) + `"}`, 400, MsgInvalidToken, ""},
		{"too deep", "update", `{"state":{"desired":` + deep + `}}`, 400, MsgTooDeep, ""},
		{"too large", "update", big, 413, MsgTooLarge, ""},
		{"not utf-8", "update", "{\"state\":{\"reported\":{\"a\":\"\xff\"}}}", 415, MsgEncoding, ""},
		{"version conflict", "update", `{"state":{"reported":{"a":1}},"version":7,"clientToken":"v"}`, 409, MsgVersionConflict, "v"},
		{"get missing", "get", `{"clientToken":"g"}`, 404, "No shadow exists with name: 'fleet-agent'", "g"},
		{"delete missing", "delete", ``, 404, "No shadow exists with name: 'fleet-agent'", ""},
		{"get invalid json", "get", `nope`, 400, MsgInvalidJSON, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, r := newService()
			got := do(s, r, tc.op, tc.payload)
			rej, ok := got[topic(tc.op+"/rejected")]
			if !ok || len(got) != 1 {
				t.Fatalf("published %v, want only %s/rejected", got, tc.op)
			}
			if rej["code"] != float64(tc.code) || rej["message"] != tc.msg {
				t.Errorf("rejected = %v, want code %d message %q", rej, tc.code, tc.msg)
			}
			if tok, _ := rej["clientToken"].(string); tok != tc.token {
				t.Errorf("clientToken = %q, want %q", tok, tc.token)
			}
			if rej["timestamp"] != float64(now) {
				t.Errorf("timestamp = %v", rej["timestamp"])
			}
			if _, exists := s.Get(thing, name); exists {
				t.Error("a rejected request created the shadow")
			}
		})
	}
}

func TestRejectedUpdateLosesNothing(t *testing.T) {
	s, r := newService()
	do(s, r, "update", `{"state":{"reported":{"a":1}}}`)
	got := do(s, r, "update", `{"state":{"reported":{"a":2}},"version":5}`)
	if rej := got[topic("update/rejected")]; rej["code"] != float64(409) {
		t.Fatalf("got %v, want 409", got)
	}
	got = do(s, r, "update", `{"state":{"reported":{"b":"`+strings.Repeat("y", MaxStateBytes)+`"}}}`)
	if rej := got[topic("update/rejected")]; rej["code"] != float64(413) {
		t.Fatalf("got %v, want 413", got)
	}
	doc, _ := s.Get(thing, name)
	jsonEq(t, "state", doc.State.Reported, `{"a":1}`)
	if doc.Version != 1 {
		t.Errorf("version = %d, want 1", doc.Version)
	}
	do(s, r, "update", `{"state":{"reported":{"a":3}},"version":1}`)
	if doc, _ := s.Get(thing, name); doc.Version != 2 {
		t.Errorf("version after a matching update = %d, want 2", doc.Version)
	}
}

func TestDeleteKeepsVersion(t *testing.T) {
	s, r := newService()
	do(s, r, "update", `{"state":{"reported":{"a":1}}}`)
	do(s, r, "update", `{"state":{"reported":{"a":2}}}`)
	got := do(s, r, "delete", `{"clientToken":"d"}`)
	jsonEq(t, "delete/accepted", got[topic("delete/accepted")], `{"version":2,"timestamp":1700000000,"clientToken":"d"}`)
	if _, ok := s.Get(thing, name); ok {
		t.Fatal("shadow still there after delete")
	}
	got = do(s, r, "update", `{"state":{"reported":{"a":3}}}`)
	if v := got[topic("update/accepted")]["version"]; v != float64(3) {
		t.Errorf("version after re-creation = %v, want 3", v)
	}
	if _, ok := got[topic("update/documents")]["previous"]; ok {
		t.Error("documents of a re-created shadow has a previous document")
	}
}

func TestMatchAndClassicShadow(t *testing.T) {
	s, r := newService()
	for topic, want := range map[string]bool{
		"$aws/things/t/shadow/name/fleet-agent/update":          true,
		"$aws/things/t/shadow/name/fleet-agent/get":             true,
		"$aws/things/t/shadow/name/fleet-agent/delete":          true,
		"$aws/things/t/shadow/update":                           true,
		"$aws/things/t/shadow/name/fleet-agent/update/accepted": false,
		"$aws/things/t/shadow/name/fleet-agent/update/delta":    false,
		"$aws/things/t/shadow/name/fleet-agent/list":            false,
		"$aws/things/t/jobs/get":                                false,
		"dt/fleet/t/status":                                     false,
	} {
		if got := s.Match(topic); got != want {
			t.Errorf("Match(%q) = %v, want %v", topic, got, want)
		}
	}
	s.Handle(context.Background(), "$aws/things/t/shadow/update", []byte(`{"state":{"reported":{"on":true}}}`))
	got := r.take()
	if _, ok := got["$aws/things/t/shadow/update/accepted"]; !ok {
		t.Fatalf("classic shadow update: %v", got)
	}
	if _, ok := s.Get("t", name); ok {
		t.Error("the classic shadow update created a named shadow")
	}
	if _, ok := s.Get("t", ""); !ok {
		t.Error("classic shadow missing")
	}
}

func TestOperatorUpdate(t *testing.T) {
	s, r := newService()
	doc, err := s.Update(thing, name, []byte(`{"state":{"desired":{"logLevel":"debug"}}}`))
	if err != nil || doc.Version != 1 {
		t.Fatalf("Update = %+v, %v", doc, err)
	}
	got := r.take()
	jsonEq(t, "delta", got[topic("update/delta")]["state"], `{"logLevel":"debug"}`)
	if _, err := s.Update(thing, name, []byte(`{"state":{"desired":{"x":1}},"version":9}`)); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("conflicting Update err = %v, want 409", err)
	}
}
