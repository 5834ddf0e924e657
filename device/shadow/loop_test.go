package shadow

import (
	"crypto/tls"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/store"
)

// AWS sends the delta again after every report while a refused key stays
// in desired. The agent reports only when applying a delta changed
// something, so a refused key does not make it report in a loop.
func TestRepeatedDeltaDoesNotForceAReport(t *testing.T) {
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
