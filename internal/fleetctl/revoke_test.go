package fleetctl

import (
	"context"
	"encoding/json"
	"hash/crc32"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/sim/iottest"
)

const callerARN = "arn:aws:sts::123456789012:assumed-role/fleet-operator/alice"

// stsServer answers sts GetCallerIdentity (AWS query protocol) with
// callerARN when answer is true, and 404 (an endpoint without STS, as the
// local IoT Core) otherwise; it counts the identity requests.
func stsServer(t *testing.T, answer bool) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var asked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.Form.Get("Action") != "GetCallerIdentity" {
			http.NotFound(w, r)
			return
		}
		asked.Add(1)
		if !answer {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/xml")
		_, _ = w.Write([]byte(`<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>` + callerARN + `</Arn>
    <UserId>AROAEXAMPLE:alice</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>`))
	}))
	t.Cleanup(srv.Close)
	return srv, &asked
}

func connectTo(t *testing.T, endpoint string) (*Fleet, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	f, err := Connect(ctx, Outputs{OutLocalEndpoint: endpoint, OutRegion: "local-1"}, "")
	require.NoError(t, err)
	return f, ctx
}

// Without --by, the revocation is recorded as the caller's AWS identity.
func TestRevokedByIsTheCallersIdentity(t *testing.T) {
	srv, asked := stsServer(t, true)
	f, ctx := connectTo(t, srv.URL)
	by, note := f.RevokedBy(ctx)
	assert.Equal(t, callerARN, by)
	assert.Empty(t, note)
	assert.EqualValues(t, 1, asked.Load())
}

// Where STS does not answer, by falls back to the OS user, and the note
// says so and why: an endpoint without STS, and the local IoT Core's AWS
// endpoint (its real control plane over HTTP).
func TestRevokedByFallsBackToTheOSUser(t *testing.T) {
	t.Setenv("FLEETCTL_OPERATOR", "bob@bench")
	srv, asked := stsServer(t, false)
	local := iottest.Start(t, iottest.Options{})
	for _, endpoint := range []string{srv.URL, local.URL} {
		f, ctx := connectTo(t, endpoint)
		by, note := f.RevokedBy(ctx)
		assert.Equal(t, "bob@bench", by, endpoint)
		assert.Contains(t, note, "sts GetCallerIdentity", endpoint)
		assert.Contains(t, note, "by=bob@bench")
		assert.Contains(t, note, "--by")
	}
	assert.EqualValues(t, 1, asked.Load(), "STS was asked")
	ctx := context.Background()

	t.Setenv("FLEETCTL_OPERATOR", "")
	by, _ := (&Fleet{}).RevokedBy(ctx)
	assert.NotEmpty(t, by, "the login name")
	assert.LessOrEqual(t, len(by), maxByLen)
}

// Revoking a revoked device says what happened: the request is recorded
// and holds the serial out; AWS IoT was checked again, and a certificate
// found active is named loudly.
func TestWriteRevoke(t *testing.T) {
	resp := RevokeResponse{Serial: "10000000a1b2c3d4", ThingName: "dev-10000000a1b2c3d4", CertificateID: "c1", State: "revoked", RevokedCertificates: []string{"c1"}}
	var b strings.Builder
	require.NoError(t, WriteRevoke(&b, resp.Serial, "stolen", callerARN, resp))
	assert.Contains(t, b.String(), `revoked 10000000a1b2c3d4: certificate revoked and detached, thing deleted, SSM off; recorded (reason "stolen", by `+callerARN+")")
	assert.Contains(t, b.String(), "readmit=TOKEN, a token never used for this serial")

	resp.AlreadyRevoked, resp.RevokedCertificates = true, []string{}
	b.Reset()
	require.NoError(t, WriteRevoke(&b, resp.Serial, "confirm", "alice", resp))
	out := b.String()
	assert.Contains(t, out, `10000000a1b2c3d4 was already revoked: this request is recorded (reason "confirm", by alice) and holds the serial out of allowlist deploys`)
	assert.Contains(t, out, "every certificate of the device is REVOKED")
	assert.NotContains(t, out, "nothing changed")
	assert.NotContains(t, out, "WARNING")

	resp.RevokedCertificates = []string{"c1", "c0"}
	b.Reset()
	require.NoError(t, WriteRevoke(&b, resp.Serial, "confirm", "alice", resp))
	assert.Contains(t, b.String(), "WARNING: 2 certificate(s) of this revoked device were not REVOKED in AWS IoT")
	assert.Contains(t, b.String(), "c1, c0")
}

// fleetctl revoke without --by sends the caller's identity to the revoke
// Lambda; with --by, what was given. The endpoint answers STS,
// DynamoDB GetItem (the device's record) and Lambda Invoke (recording the
// event) as AWS does on the wire.
func TestRevokeCommandRecordsTheCallersIdentity(t *testing.T) {
	const serial = "10000000a1b2c3d4"
	var (
		mu     sync.Mutex
		events []RevokeRequest
	)
	sts, _ := stsServer(t, true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("X-Amz-Target") == "DynamoDB_20120810.GetItem":
			body := []byte(`{"Item":{"serial":{"S":"` + serial + `"},"state":{"S":"provisioned"},"thingName":{"S":"dev-` + serial + `"},"certificateId":{"S":"c1"}}}`)
			w.Header().Set("Content-Type", "application/x-amz-json-1.0")
			w.Header().Set("X-Amz-Crc32", strconv.FormatUint(uint64(crc32.ChecksumIEEE(body)), 10))
			_, _ = w.Write(body)
		case strings.HasPrefix(r.URL.Path, "/2015-03-31/functions/iot-fleet-local-revoke/invocations"):
			var ev RevokeRequest
			if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
			_ = json.NewEncoder(w).Encode(RevokeResponse{Serial: ev.Serial, ThingName: "dev-" + serial, CertificateID: "c1", State: "revoked", RevokedCertificates: []string{"c1"}})
		default:
			// Everything else (STS) goes to the STS server.
			req, err := http.NewRequestWithContext(r.Context(), r.Method, sts.URL+r.URL.RequestURI(), r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			req.Header = r.Header.Clone()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			w.WriteHeader(resp.StatusCode)
			_, _ = io.Copy(w, resp.Body)
		}
	}))
	t.Cleanup(srv.Close)
	outputs := writeFile(t, t.TempDir(), "outputs.json", `{"localEndpoint": "`+srv.URL+`", "region": "local-1",
  "registryTable": "iot-fleet-local-registry", "revokeLambda": "iot-fleet-local-revoke"}`)

	code, out, errOut := fleetctl(t, "--outputs", outputs, "revoke", serial, "--reason", "stolen")
	require.Equal(t, ExitOK, code, errOut)
	assert.Contains(t, out, "by "+callerARN)
	assert.NotContains(t, errOut, "note:")
	code, _, errOut = fleetctl(t, "--outputs", outputs, "revoke", serial, "--reason", "stolen", "--by", "carol")
	require.Equal(t, ExitOK, code, errOut)

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, events, 2)
	assert.Equal(t, RevokeRequest{Serial: serial, Reason: "stolen", By: callerARN}, events[0])
	assert.Equal(t, "carol", events[1].By)
}
