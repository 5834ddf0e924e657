package preprovision

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/protocol"
	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

const (
	allowedSerial     = "10000000a1b2c3d4"
	provisionedSerial = "10000000a1b2c3d5"
	revokedSerial     = "10000000a1b2c3d6"
	unknownSerial     = "10000000ffffffff"
	certPEM           = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUSECRETPEMBODY\n-----END CERTIFICATE-----\n"
)

func certID(n int) string { return fmt.Sprintf("%064x", n) }

type fixture struct {
	h     *Handler
	store registry.Store
	iot   *simIoT
	logs  *testenv.LogBuffer
}

func newFixture(t *testing.T, store registry.Store) fixture {
	t.Helper()
	ctx := context.Background()
	for _, s := range []string{allowedSerial, provisionedSerial, revokedSerial} {
		require.NoError(t, store.PutAllowed(ctx, s))
	}
	_, err := store.MarkProvisioned(ctx, provisionedSerial, certID(1), "dev-"+provisionedSerial)
	require.NoError(t, err)
	require.NoError(t, store.MarkRevoked(ctx, revokedSerial, ""))

	re, err := allowlist.CompilePattern(allowlist.DefaultSerialPattern)
	require.NoError(t, err)
	logs := &testenv.LogBuffer{}
	iot := newSimIoT(t)
	h, err := New(Config{
		Registry:        store,
		IoT:             iot.client,
		DevicePolicy:    devicePolicy,
		SerialPattern:   re,
		ThingNamePrefix: "dev-",
		Logger:          slog.New(slog.NewJSONHandler(logs, nil)),
	})
	require.NoError(t, err)
	return fixture{h: h, store: store, iot: iot, logs: logs}
}

func request(serial, cert string) protocol.PreProvisioningHookRequest {
	return protocol.PreProvisioningHookRequest{
		ClaimCertificateID: certID(999),
		CertificateID:      cert,
		CertificatePEM:     certPEM,
		TemplateARN:        "arn:aws:iot:eu-central-1:123456789012:provisioningtemplate/iot-fleet-dev",
		ClientID:           protocol.ClaimClientID(serial),
		Parameters:         map[string]string{protocol.ParamSerialNumber: serial},
	}
}

func (f fixture) handle(t *testing.T, req protocol.PreProvisioningHookRequest) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := f.h.Handle(ctx, req)
	require.NoError(t, err)
	return resp.AllowProvisioning
}

func (f fixture) lastLog(t *testing.T) map[string]any {
	t.Helper()
	lines := f.logs.JSONLines(t)
	require.NotEmpty(t, lines)
	return lines[len(lines)-1]
}

func TestAdmitsAllowlistedSerials(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		ctx := context.Background()

		require.True(t, f.handle(t, request(allowedSerial, certID(2))))
		log := f.lastLog(t)
		assert.Equal(t, ReasonAdmitted, log["reason"])
		assert.Equal(t, true, log["allowProvisioning"])
		assert.Equal(t, allowedSerial, log["serial"])
		assert.Equal(t, "INFO", log["level"])
		d, err := f.store.Get(ctx, allowedSerial)
		require.NoError(t, err)
		assert.Equal(t, registry.StateProvisioned, d.State)
		assert.Equal(t, certID(2), d.CertificateID)
		assert.Equal(t, "dev-"+allowedSerial, d.ThingName)

		// IoT retries the hook: the same answer, the same record.
		require.True(t, f.handle(t, request(allowedSerial, certID(2))))
		d, err = f.store.Get(ctx, allowedSerial)
		require.NoError(t, err)
		assert.Equal(t, certID(2), d.CertificateID)

		// A provisioned serial with another certificate is a clone.
		require.False(t, f.handle(t, request(provisionedSerial, certID(3))))
		d, err = f.store.Get(ctx, provisionedSerial)
		require.NoError(t, err)
		assert.Equal(t, certID(1), d.CertificateID)
		assert.Equal(t, registry.StateProvisioned, d.State)
	})
}

func TestDeniesWithReason(t *testing.T) {
	big := strings.Repeat("x", MaxParameterValue+1)
	many := map[string]string{protocol.ParamSerialNumber: allowedSerial}
	for i := range MaxParameters {
		many[fmt.Sprintf("p%d", i)] = "v"
	}
	withParams := func(p map[string]string) protocol.PreProvisioningHookRequest {
		r := request(allowedSerial, certID(7))
		r.Parameters = p
		return r
	}
	withCert := func(c string) protocol.PreProvisioningHookRequest { return request(allowedSerial, c) }
	cases := []struct {
		name   string
		req    protocol.PreProvisioningHookRequest
		reason string
	}{
		{"nil parameters", withParams(nil), ReasonMissingSerial},
		{"no serial", withParams(map[string]string{"Other": "x"}), ReasonMissingSerial},
		{"empty serial", withParams(map[string]string{protocol.ParamSerialNumber: ""}), ReasonMissingSerial},
		{"too many parameters", withParams(many), ReasonTooManyParameters},
		{"oversized value", withParams(map[string]string{protocol.ParamSerialNumber: allowedSerial, "Note": big}), ReasonOversizedParameter},
		{"oversized key", withParams(map[string]string{protocol.ParamSerialNumber: allowedSerial, strings.Repeat("k", MaxParameterKey+1): "v"}), ReasonOversizedParameter},
		{"invalid utf-8", withParams(map[string]string{protocol.ParamSerialNumber: allowedSerial, "Note": "\xff\xfe"}), ReasonMalformedParameter},
		{"upper-case serial", withParams(map[string]string{protocol.ParamSerialNumber: strings.ToUpper(allowedSerial)}), ReasonSerialPattern},
		{"serial with suffix", withParams(map[string]string{protocol.ParamSerialNumber: allowedSerial + "0"}), ReasonSerialPattern},
		{"serial with newline", withParams(map[string]string{protocol.ParamSerialNumber: allowedSerial + "\n"}), ReasonSerialPattern},
		{"oversized serial", withParams(map[string]string{protocol.ParamSerialNumber: strings.Repeat("a", MaxSerialLength+1)}), ReasonSerialPattern},
		{"missing certificate id", withCert(""), ReasonMissingCertificate},
		{"short certificate id", withCert("abc"), ReasonBadCertificate},
		{"upper-case certificate id", withCert(strings.ToUpper(certID(0xabcdef))), ReasonBadCertificate},
		{"unknown serial", request(unknownSerial, certID(7)), ReasonUnknownSerial},
		{"revoked serial", request(revokedSerial, certID(7)), ReasonRevoked},
		{"provisioned serial, another certificate", request(provisionedSerial, certID(7)), ReasonAlreadyProvisioned},
	}
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		before, err := f.store.Get(context.Background(), allowedSerial)
		require.NoError(t, err)
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				require.False(t, f.handle(t, c.req))
				log := f.lastLog(t)
				assert.Equal(t, c.reason, log["reason"])
				assert.Equal(t, false, log["allowProvisioning"])
				assert.Equal(t, "WARN", log["level"])
				assert.Less(t, len(fmt.Sprint(log)), 2000, "a hostile request must not flood the log")
			})
		}
		// No denial touched the allowed record or created records.
		after, err := f.store.Get(context.Background(), allowedSerial)
		require.NoError(t, err)
		assert.Equal(t, before, after)
		_, err = f.store.Get(context.Background(), unknownSerial)
		require.ErrorIs(t, err, registry.ErrNotFound)
		d, err := f.store.Get(context.Background(), revokedSerial)
		require.NoError(t, err)
		assert.Equal(t, registry.StateRevoked, d.State)
		assert.Empty(t, d.CertificateID)
	})
}

// The reference design kept its answer in a package-level variable, so one
// admitted device admitted every later one. Here the same Handler value
// (as in a warm Lambda) keeps denying after it admitted.
func TestNoStateLeaksBetweenInvocations(t *testing.T) {
	registrytest.Stores(t, func(t *testing.T, newStore registrytest.NewStore) {
		f := newFixture(t, newStore(t, nil))
		require.True(t, f.handle(t, request(allowedSerial, certID(10))))
		require.False(t, f.handle(t, request(unknownSerial, certID(11))))
		require.False(t, f.handle(t, request(revokedSerial, certID(12))))
		require.True(t, f.handle(t, request(allowedSerial, certID(10))))
		require.False(t, f.handle(t, request(allowedSerial, certID(13))))
		require.False(t, f.handle(t, request("nothex", certID(14))))
		require.False(t, f.handle(t, request(unknownSerial, certID(15))))

		// Interleaved concurrent invocations on the same Handler value:
		// even ones for allowed serials of their own, odd ones unknown.
		results := make([]bool, 40)
		for i := range results {
			if i%2 == 0 {
				require.NoError(t, f.store.PutAllowed(context.Background(), fmt.Sprintf("20000000%08x", i)))
			}
		}
		var wg sync.WaitGroup
		for i := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				serial := fmt.Sprintf("20000000%08x", i)
				if i%2 == 1 {
					serial = unknownSerial
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				resp, err := f.h.Handle(ctx, request(serial, certID(100+i)))
				assert.NoError(t, err)
				results[i] = resp.AllowProvisioning
			}()
		}
		wg.Wait()
		for i, ok := range results {
			assert.Equal(t, i%2 == 0, ok, "invocation %d", i)
		}
	})
}

func TestNeverLogsCertificatePEM(t *testing.T) {
	f := newFixture(t, registry.NewMemory())
	f.handle(t, request(allowedSerial, certID(2)))
	f.handle(t, request(unknownSerial, certID(3)))
	bad := request(allowedSerial, certID(4))
	bad.Parameters["Note"] = certPEM // even echoed as a parameter it stays out
	bad.Parameters["Big"] = strings.Repeat("y", MaxParameterValue+1)
	f.handle(t, bad)
	out := f.logs.String()
	require.NotEmpty(t, out)
	assert.NotContains(t, out, "SECRETPEMBODY")
	assert.NotContains(t, out, "BEGIN CERTIFICATE")
}

// blockingRegistry never answers before its context ends, like a DynamoDB
// endpoint that stopped responding.
type blockingRegistry struct{ deadline chan time.Time }

func (b blockingRegistry) block(ctx context.Context) error {
	d, _ := ctx.Deadline()
	b.deadline <- d
	<-ctx.Done()
	return fmt.Errorf("registry: %w", ctx.Err())
}

func (b blockingRegistry) Get(ctx context.Context, _ string) (registry.Device, error) {
	return registry.Device{}, b.block(ctx)
}

func (b blockingRegistry) RecordProvisioned(ctx context.Context, _, _ string, _ registry.Certificate) (registry.Device, error) {
	return registry.Device{}, b.block(ctx)
}

func (b blockingRegistry) ReplaceCertificate(ctx context.Context, _, _ string, _ registry.Certificate, _ registry.RetiredCertificate) (registry.Device, error) {
	return registry.Device{}, b.block(ctx)
}

func TestBoundsRegistryCall(t *testing.T) {
	re, err := allowlist.CompilePattern(allowlist.DefaultSerialPattern)
	require.NoError(t, err)
	logs := &testenv.LogBuffer{}
	reg := blockingRegistry{deadline: make(chan time.Time, 2)}
	iot := newSimIoT(t).client
	h, err := New(Config{Registry: reg, IoT: iot, DevicePolicy: devicePolicy, SerialPattern: re, CallTimeout: 50 * time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	require.NoError(t, err)

	// The invocation has far more time left than the call timeout; the
	// registry call still gets only the call timeout.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	resp, err := h.Handle(ctx, request(allowedSerial, certID(1)))
	require.NoError(t, err)
	require.False(t, resp.AllowProvisioning)
	d := <-reg.deadline
	require.False(t, d.IsZero(), "registry call has no deadline")
	require.True(t, d.Before(start.Add(time.Second)), "registry deadline %v is not bounded by CallTimeout", d.Sub(start))
	lines := logs.JSONLines(t)
	require.Len(t, lines, 1)
	assert.Equal(t, ReasonRegistryError, lines[0]["reason"])
	assert.Equal(t, "ERROR", lines[0]["level"])
	assert.Contains(t, lines[0]["error"], "deadline exceeded")

	// A shorter invocation deadline wins over CallTimeout.
	h2, err := New(Config{Registry: reg, IoT: iot, DevicePolicy: devicePolicy, SerialPattern: re, CallTimeout: time.Hour, Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	require.NoError(t, err)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel2()
	want, _ := ctx2.Deadline()
	resp, err = h2.Handle(ctx2, request(allowedSerial, certID(1)))
	require.NoError(t, err)
	require.False(t, resp.AllowProvisioning)
	require.Equal(t, want, <-reg.deadline)
}

func TestNewValidates(t *testing.T) {
	_, err := New(Config{})
	require.ErrorContains(t, err, "missing Registry, IoT, DevicePolicy, SerialPattern")
}

func TestIsCertificateID(t *testing.T) {
	assert.True(t, isCertificateID(certID(1)))
	assert.False(t, isCertificateID(certID(1)[1:]))
	assert.False(t, isCertificateID(strings.Repeat("g", 64)))
}

func BenchmarkHandleMemory(b *testing.B) {
	benchmarkHandle(b, registry.NewMemory())
}

func BenchmarkHandleDynalite(b *testing.B) {
	client := testenv.DynamoDBClient(testenv.StartDynalite(b))
	testenv.CreateRegistryTable(b, client, "registry")
	s, err := registry.NewDynamoDB(client, "registry")
	require.NoError(b, err)
	benchmarkHandle(b, s)
}

func benchmarkHandle(b *testing.B, store registry.Store) {
	ctx := context.Background()
	require.NoError(b, store.PutAllowed(ctx, allowedSerial))
	re, err := allowlist.CompilePattern(allowlist.DefaultSerialPattern)
	require.NoError(b, err)
	h, err := New(Config{Registry: store, IoT: newSimIoT(b).client, DevicePolicy: devicePolicy, SerialPattern: re, ThingNamePrefix: "dev-",
		Logger: slog.New(slog.NewJSONHandler(discard{}, nil))})
	require.NoError(b, err)
	req := request(allowedSerial, certID(1))
	b.ReportAllocs()
	for b.Loop() {
		resp, err := h.Handle(ctx, req)
		if err != nil || !resp.AllowProvisioning {
			b.Fatalf("denied: %v", err)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
