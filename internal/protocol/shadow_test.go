package protocol

import "testing"

func TestParseShadowTopic(t *testing.T) {
	cases := map[string]struct {
		want ShadowTopic
		ok   bool
	}{
		"$aws/things/dev-1/shadow/name/fleet-agent/update":           {ShadowTopic{"dev-1", "fleet-agent", "update", ""}, true},
		"$aws/things/dev-1/shadow/name/fleet-agent/update/delta":     {ShadowTopic{"dev-1", "fleet-agent", "update", "delta"}, true},
		"$aws/things/dev-1/shadow/name/fleet-agent/update/documents": {ShadowTopic{"dev-1", "fleet-agent", "update", "documents"}, true},
		"$aws/things/dev-1/shadow/name/fleet-agent/get/accepted":     {ShadowTopic{"dev-1", "fleet-agent", "get", "accepted"}, true},
		"$aws/things/dev-1/shadow/name/fleet-agent/delete/rejected":  {ShadowTopic{"dev-1", "fleet-agent", "delete", "rejected"}, true},
		"$aws/things/dev-1/shadow/update":                            {ShadowTopic{"dev-1", "", "update", ""}, true},
		"$aws/things/dev-1/shadow/get/accepted":                      {ShadowTopic{"dev-1", "", "get", "accepted"}, true},
		"$aws/things/dev-1/shadow/name/fleet-agent/get/delta":        {ok: false},
		"$aws/things/dev-1/shadow/name/fleet-agent/list":             {ok: false},
		"$aws/things/dev-1/shadow/name//update":                      {ok: false},
		"$aws/things/dev-1/shadow/name/fleet-agent/update/x/y":       {ok: false},
		"$aws/things//shadow/update":                                 {ok: false},
		"$aws/things/dev-1/jobs/get":                                 {ok: false},
		"things/dev-1/shadow/update":                                 {ok: false},
	}
	for topic, tc := range cases {
		got, ok := ParseShadowTopic(topic)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseShadowTopic(%q) = %+v, %v; want %+v, %v", topic, got, ok, tc.want, tc.ok)
		}
	}
	if got := ShadowDeltaTopic("dev-1", AgentShadowName); got != "$aws/things/dev-1/shadow/name/fleet-agent/update/delta" {
		t.Errorf("ShadowDeltaTopic = %q", got)
	}
}
