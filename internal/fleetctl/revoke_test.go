package fleetctl

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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

// Where STS does not answer (the local IoT Core), by falls back to the OS
// user, and the note says so and why.
func TestRevokedByFallsBackToTheOSUser(t *testing.T) {
	srv, asked := stsServer(t, false)
	f, ctx := connectTo(t, srv.URL)
	t.Setenv("FLEETCTL_OPERATOR", "bob@bench")
	by, note := f.RevokedBy(ctx)
	assert.Equal(t, "bob@bench", by)
	assert.Contains(t, note, "sts GetCallerIdentity")
	assert.Contains(t, note, "by=bob@bench")
	assert.Contains(t, note, "--by")
	assert.EqualValues(t, 1, asked.Load(), "STS was asked")

	t.Setenv("FLEETCTL_OPERATOR", "")
	by, _ = (&Fleet{}).RevokedBy(ctx)
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
