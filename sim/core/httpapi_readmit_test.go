package core

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	devreg "github.com/iot-fleet/iot-fleet/internal/registry"
)

// The operator API re-admits a provisioned serial, but never lifts an
// emergency hold: that takes the allowlist's readmit line (409 naming it).
func TestOperatorAPIReadmitRefusesHeldOut(t *testing.T) {
	c := startCore(t, Options{})
	srv := httptest.NewServer(c.HTTPHandler())
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	reg := c.DeviceRegistry()
	_, err := reg.RecordProvisioned(ctx, allowedSerial, "dev-"+allowedSerial, devreg.Certificate{ID: "c1"})
	require.NoError(t, err)

	post := func(body string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/devices/"+allowedSerial+"/readmit", strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var out map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		return resp.StatusCode, out
	}

	code, out := post(`{"token":"T1","by":"ops"}`)
	require.Equal(t, http.StatusOK, code, "%v", out)
	assert.Equal(t, true, out["changed"])
	d, err := reg.Get(ctx, allowedSerial)
	require.NoError(t, err)
	require.Equal(t, devreg.StateReadmitted, d.State)

	_, err = reg.MarkEmergencyRevoking(ctx, allowedSerial, "c1", devreg.Revocation{Reason: "stolen from site 4", By: "alice"})
	require.NoError(t, err)
	require.NoError(t, reg.MarkRevoked(ctx, allowedSerial, "c1"))

	code, out = post(`{"token":"T2","by":"ops"}`)
	assert.Equal(t, http.StatusConflict, code)
	assert.Contains(t, out["error"], "revoked in an emergency")
	assert.Contains(t, out["error"], "stolen from site 4")
	assert.Contains(t, out["error"], "readmit=TOKEN line in the allowlist")
	d, err = reg.Get(ctx, allowedSerial)
	require.NoError(t, err)
	assert.Equal(t, devreg.StateRevoked, d.State)
	assert.True(t, d.HeldOut(), "the hold stays")
	assert.False(t, d.ReadmitTokenUsed("T2"))
}
