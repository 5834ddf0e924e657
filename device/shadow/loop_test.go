package shadow

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/store"
)

func newTestReporter(t *testing.T) (*Reporter, *slog.LevelVar) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Never connected: the test feeds the answers itself.
	conn, err := mqttconn.New(mqttconn.Options{Address: "127.0.0.1:1", ClientID: "dev-1",
		TLSConfig: func() (*tls.Config, error) { return &tls.Config{MinVersion: tls.VersionTLS12}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	lv := new(slog.LevelVar)
	r, err := New(Options{ThingName: "dev-1", Conn: conn, Store: st, Level: lv, Config: config.Shadow{
		Enabled: true, PollInterval: config.Duration(time.Second), MinInterval: config.Duration(time.Second), ReportInterval: config.Duration(time.Hour),
	}})
	if err != nil {
		t.Fatal(err)
	}
	return r, lv
}

// AWS sends the delta again after every report while a refused key stays
// in desired. The agent reports only when applying a delta changed
// something, so a refused key does not make it report in a loop.
func TestRepeatedDeltaDoesNotForceAReport(t *testing.T) {
	r, lv := newTestReporter(t)
	delta := func(version int, state string) {
		r.handle(inbound{kind: "update/delta", payload: []byte(`{"state":` + state + `,"version":` + strconv.Itoa(version) + `}`)})
	}
	delta(3, `{"sshEnabled":true}`)
	if !r.force || r.rejected["sshEnabled"] == "" {
		t.Fatalf("first refusal: force=%v rejected=%v", r.force, r.rejected)
	}
	r.force = false
	delta(4, `{"sshEnabled":true}`)
	if r.force {
		t.Error("the same refused delta again forces a report (a report loop)")
	}
	delta(2, `{"logLevel":"debug"}`)
	if r.force || lv.Level() != slog.LevelInfo {
		t.Error("an older delta was applied")
	}
	delta(5, `{"sshEnabled":true,"logLevel":"debug"}`)
	if !r.force || lv.Level() != slog.LevelDebug {
		t.Errorf("a new setting: force=%v level=%v", r.force, lv.Level())
	}
}

// However many keys desired holds, what the agent reports of them stays
// small: the shadow would refuse a reported section over 8 KB.
func TestRejectedDesiredIsBounded(t *testing.T) {
	r, _ := newTestReporter(t)
	var b strings.Builder
	b.WriteString(`{"state":{`)
	for i := range 300 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%q:%q", fmt.Sprintf("key-%03d-%s", i, strings.Repeat("x", 100)), strings.Repeat("v", 1000))
	}
	b.WriteString(`},"version":3}`)
	r.handle(inbound{kind: "update/delta", payload: []byte(b.String())})
	rep := r.collect(context.Background())
	if len(rep.RejectedDesired) != MaxRejectedReported || rep.RejectedDesiredMore == nil || *rep.RejectedDesiredMore != 300-MaxRejectedReported {
		t.Fatalf("rejectedDesired has %d keys, more=%v", len(rep.RejectedDesired), rep.RejectedDesiredMore)
	}
	out, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) > 4096 {
		t.Errorf("reported state is %d bytes", len(out))
	}
}
