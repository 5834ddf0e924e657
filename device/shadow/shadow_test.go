package shadow_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/iot-fleet/iot-fleet/device/backoff"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/jobs"
	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/ota"
	"github.com/iot-fleet/iot-fleet/device/shadow"
	"github.com/iot-fleet/iot-fleet/device/ssm"
	"github.com/iot-fleet/iot-fleet/device/store"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

type device struct {
	thing string
	core  *core.Core
	st    *store.Store
	level *slog.LevelVar
	image string // file the stand-in show-artifact reads
}

// startDevice registers a device on a local IoT Core (the stack's device
// policy applies), connects it over mutual TLS and starts its shadow
// reporter.
func startDevice(t *testing.T) (*device, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	c, err := core.Start(ctx, core.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	thing, creds, err := c.RegisterDevice("aaaaaaaaaaaaaaaa")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.WriteFile("certs/device.crt", creds.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteFile("certs/device.key", creds.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	id := store.Identity{ThingName: thing, CertificateID: creds.CertificateID, CertFile: "certs/device.crt", KeyFile: "certs/device.key"}
	if err := st.SaveIdentity(id); err != nil {
		t.Fatal(err)
	}
	cert, err := st.TLSCertificate(id)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := mqttconn.New(mqttconn.Options{
		Address: c.Endpoint(), ClientID: thing,
		TLSConfig: func() (*tls.Config, error) { return mqttconn.NewTLSConfig(c.RootCAPEM(), cert, "127.0.0.1", false) },
		Backoff:   backoff.Policy{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &device{thing: thing, core: c, st: st, level: new(slog.LevelVar), image: filepath.Join(dir, "artifact")}
	if err := os.WriteFile(d.image, []byte("raspios-fleet-1.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bootID := filepath.Join(dir, "boot_id")
	if err := os.WriteFile(bootID, []byte("6d1f6f1c-0000-4000-8000-000000000001\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := shadow.New(shadow.Options{
		ThingName: thing, Conn: conn, Store: st, Version: "v1.2.3", Level: d.level,
		Config: config.Shadow{Enabled: true, PollInterval: config.Duration(100 * time.Millisecond),
			MinInterval: config.Duration(100 * time.Millisecond), ReportInterval: config.Duration(time.Hour)},
		ImageVersion: func(context.Context) (string, error) {
			b, err := os.ReadFile(d.image)
			return string(bytes.TrimSpace(b)), err
		},
		BootIDFile: bootID,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	if err := r.Start(runCtx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = conn.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done; r.Stop() })
	return d, ctx
}

// reported returns the shadow's reported state decoded.
func (d *device) reported() (shadow.Reported, protocol.ShadowResponse, bool) {
	doc, ok := d.core.Shadows().Get(d.thing, shadow.Name)
	if !ok || doc.State == nil {
		return shadow.Reported{}, doc, false
	}
	b, _ := json.Marshal(doc.State.Reported)
	var rep shadow.Reported
	if err := json.Unmarshal(b, &rep); err != nil {
		return shadow.Reported{}, doc, false
	}
	return rep, doc, true
}

// waitFor polls the shadow until cond holds.
func (d *device) waitFor(t *testing.T, ctx context.Context, what string, cond func(shadow.Reported) bool) shadow.Reported {
	t.Helper()
	for {
		rep, doc, ok := d.reported()
		if ok && cond(rep) {
			return rep
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not reported in time; shadow: %+v %+v", what, doc.State, rep)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestReportsDeviceState(t *testing.T) {
	d, ctx := startDevice(t)
	rep := d.waitFor(t, ctx, "first report", func(r shadow.Reported) bool { return r.AgentVersion != "" })
	if rep.AgentVersion != "v1.2.3" || rep.ImageVersion != "raspios-fleet-1.0" || rep.BootID != "6d1f6f1c-0000-4000-8000-000000000001" {
		t.Errorf("reported %+v", rep)
	}
	id, _, _ := d.st.Identity()
	if rep.Certificate.ID != id.CertificateID || rep.Certificate.ExpiresAt == "" {
		t.Errorf("certificate = %+v, want id %s and an expiry", rep.Certificate, id.CertificateID)
	}
	if !rep.Connectivity.Connected || rep.Connectivity.Connections != 1 || rep.Job != nil || rep.OTA != nil || rep.SSM != "off" {
		t.Errorf("reported %+v", rep)
	}
	if rep.Settings != (shadow.Settings{LogLevel: "info", ReportInterval: "1h0m0s"}) {
		t.Errorf("settings = %+v", rep.Settings)
	}

	// A job starts (the jobs engine's state file): its id and step name.
	job := `{"format":1,"job":{"jobId":"install-1","document":{"version":"1.0","steps":[{"action":{"name":"Install","type":"runHandler","input":{"handler":"install.sh"}}},{"action":{"name":"Check","type":"runHandler","input":{"handler":"check.sh"}}}]},"phase":"running","step":1,"status":"IN_PROGRESS"}}`
	if _, err := d.st.SubDir(store.JobsDir); err != nil {
		t.Fatal(err)
	}
	if err := d.st.WriteFile(shadow.JobsStateFile, []byte(job), 0o600); err != nil {
		t.Fatal(err)
	}
	rep = d.waitFor(t, ctx, "job", func(r shadow.Reported) bool { return r.Job != nil })
	if *rep.Job != (shadow.Job{JobID: "install-1", Step: 1, StepName: "Check", Phase: "running", Status: "IN_PROGRESS"}) {
		t.Errorf("job = %+v", *rep.Job)
	}

	// An OTA update commits a new image; SSM is registered; the job ends.
	if err := os.WriteFile(d.image, []byte("raspios-fleet-2.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.st.WriteFile(shadow.SSMStateFile, []byte(`{"state":"registered"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	// No current job; the OTA operation's last saved state stays.
	idle := `{"format":1,"tokenSeq":12,"lastOperations":{"mender_install":{"jobId":"ota-2","state":{"version":1,"jobId":"ota-2","step":"committed","status":"SUCCEEDED"}}}}`
	if err := d.st.WriteFile(shadow.JobsStateFile, []byte(idle), 0o600); err != nil {
		t.Fatal(err)
	}
	rep = d.waitFor(t, ctx, "after OTA", func(r shadow.Reported) bool {
		return r.OTA != nil && r.Job == nil && r.SSM == "registered" && r.ImageVersion == "raspios-fleet-2.0"
	})
	if *rep.OTA != (shadow.OTA{JobID: "ota-2", Step: "committed", Status: "SUCCEEDED"}) {
		t.Errorf("ota = %+v", *rep.OTA)
	}
	if _, doc, _ := d.reported(); doc.State.Reported["job"] != nil {
		t.Errorf("the finished job is still in the shadow: %v", doc.State.Reported["job"])
	}
}

func TestDesiredSettingsAppliedAndUnknownRefused(t *testing.T) {
	d, ctx := startDevice(t)
	d.waitFor(t, ctx, "first report", func(r shadow.Reported) bool { return r.AgentVersion != "" })

	_, err := d.core.Shadows().Update(d.thing, shadow.Name, []byte(`{"state":{"desired":{"logLevel":"debug","reportInterval":"30m","runCommand":"rm -rf /"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	rep := d.waitFor(t, ctx, "desired applied", func(r shadow.Reported) bool { return r.Settings.LogLevel == "debug" })
	if rep.Settings.ReportInterval != "30m" {
		t.Errorf("settings = %+v", rep.Settings)
	}
	if d.level.Level() != slog.LevelDebug {
		t.Errorf("log level = %v, want debug", d.level.Level())
	}
	if len(rep.RejectedDesired) != 1 || rep.RejectedDesired["runCommand"] == "" {
		t.Errorf("rejectedDesired = %v, want runCommand only", rep.RejectedDesired)
	}
	// The refused key stays in the delta (never applied); the applied
	// ones do not.
	doc, _ := d.core.Shadows().Get(d.thing, shadow.Name)
	if len(doc.State.Delta) != 1 || doc.State.Delta["runCommand"] == nil {
		t.Errorf("delta = %v", doc.State.Delta)
	}

	// Invalid values are refused and change nothing.
	if _, err := d.core.Shadows().Update(d.thing, shadow.Name, []byte(`{"state":{"desired":{"logLevel":"verbose","reportInterval":"1ms"}}}`)); err != nil {
		t.Fatal(err)
	}
	rep = d.waitFor(t, ctx, "invalid values refused", func(r shadow.Reported) bool { return r.RejectedDesired["logLevel"] != "" })
	if rep.RejectedDesired["reportInterval"] == "" || rep.Settings != (shadow.Settings{LogLevel: "debug", ReportInterval: "30m"}) {
		t.Errorf("reported %+v", rep)
	}
	if d.level.Level() != slog.LevelDebug {
		t.Errorf("log level = %v, want debug kept", d.level.Level())
	}

	// The operator removes the refused keys: they leave rejectedDesired.
	if _, err := d.core.Shadows().Update(d.thing, shadow.Name, []byte(`{"state":{"desired":{"runCommand":null,"logLevel":"warn","reportInterval":null}}}`)); err != nil {
		t.Fatal(err)
	}
	rep = d.waitFor(t, ctx, "cleared", func(r shadow.Reported) bool { return r.RejectedDesired == nil && r.Settings.LogLevel == "warn" })
	if d.level.Level() != slog.LevelWarn {
		t.Errorf("log level = %v, want warn", d.level.Level())
	}
	_ = rep
}

// The shadow reads the other features' own state files.
func TestStateFileNamesFollowTheFeatures(t *testing.T) {
	for got, want := range map[string]string{
		shadow.JobsStateFile: store.JobsDir + "/" + jobs.StateFileName,
		shadow.OTAOperation:  ota.Operation,
		shadow.SSMStateFile:  ssm.StateFile,
	} {
		if got != want {
			t.Errorf("state file %q, want %q", got, want)
		}
	}
}
