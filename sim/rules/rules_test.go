package rules_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/sim/rules"
)

func project(t *testing.T, sql string, msg rules.Message) map[string]any {
	t.Helper()
	st, err := rules.Parse(sql)
	require.NoError(t, err)
	b, err := st.Project(msg)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(b, &out))
	return out
}

func TestRotationRuleTakesIdentityFromTheConnectionNotThePayload(t *testing.T) {
	st, err := rules.Parse(certrotate.RuleSQL)
	require.NoError(t, err)
	require.Equal(t, "dt/fleet/+/rotate/+", st.Filter)
	require.True(t, st.Matches("dt/fleet/dev-1/rotate/csr"))
	require.False(t, st.Matches("dt/fleet/dev-1/rotate"))
	require.False(t, st.Matches("cmd/fleet/dev-1/rotate/csr"))

	b, err := st.Project(rules.Message{
		Topic: "dt/fleet/dev-1/rotate/confirm", ClientID: "dev-1", Principal: "abc123",
		Payload: []byte(`{"rotationId":"r1","status":"connected","ts":17,"thingName":"dev-2","principal":"forged","kind":"csr","extra":1}`),
	})
	require.NoError(t, err)
	var ev certrotate.Event
	require.NoError(t, json.Unmarshal(b, &ev))
	assert.Equal(t, certrotate.Event{ThingName: "dev-1", Kind: "confirm", ClientID: "dev-1", Principal: "abc123",
		RotationID: "r1", Status: "connected", Timestamp: 17}, ev)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(b, &raw))
	assert.NotContains(t, raw, "extra", "only selected fields are projected")
	assert.NotContains(t, raw, "csr", "undefined fields are left out")
}

func TestProjectionFunctionsAndFields(t *testing.T) {
	now := time.UnixMilli(1700000000123)
	msg := rules.Message{Topic: "a/b/c", ClientID: "cl", Principal: "p", Received: now,
		Payload: []byte(`{"x":{"y":2},"z":"s"}`)}
	out := project(t, "select *, x.y, z AS zed, topic() AS t, topic(2) AS second, topic(9) AS none, clientid(), principal(), timestamp() AS ts from 'a/#'", msg)
	assert.Equal(t, map[string]any{
		"x": map[string]any{"y": 2.0}, "z": "s", "y": 2.0, "zed": "s", "t": "a/b/c", "second": "b",
		"clientid": "cl", "principal": "p", "ts": float64(now.UnixMilli()),
	}, out)

	// A payload that is not a JSON object defines no field.
	out = project(t, "SELECT rotationId, topic(1) AS first FROM 'a/+/c'", rules.Message{Topic: "a/b/c", Payload: []byte("not json")})
	assert.Equal(t, map[string]any{"first": "a"}, out)
}

func TestParseRefusesWhatItCannotEvaluate(t *testing.T) {
	for sql, want := range map[string]string{
		"SELECT a FROM 'x/+' WHERE a = 1": "WHERE",
		"SELECT upper(a) FROM 'x'":        "upper() is not supported",
		"SELECT a FROM x":                 "quoted topic filter",
		"SELECT a FROM 'x/#/y'":           "# must be a whole last level",
		"SELECT a":                        "no FROM",
		"DELETE a FROM 'x'":               "must start with SELECT",
		"SELECT a, , b FROM 'x'":          "select item 2",
		"SELECT topic(0) FROM 'x'":        "level number",
		"SELECT a AS 1b FROM 'x'":         "not an identifier",
		"SELECT a-b FROM 'x'":             "not a payload field",
	} {
		_, err := rules.Parse(sql)
		require.Error(t, err, sql)
		assert.Contains(t, err.Error(), want, sql)
	}
}

func TestEngineRunsMatchingRulesAndRetriesFailures(t *testing.T) {
	e := rules.New(rules.Options{RetryDelay: time.Millisecond})
	t.Cleanup(e.Close)
	var mu sync.Mutex
	var got []string
	var fails atomic.Int32
	require.NoError(t, e.Add(rules.Rule{Name: "ok", SQL: "SELECT topic(2) AS n FROM 'dt/+'", Action: func(_ context.Context, ev []byte) error {
		mu.Lock()
		got = append(got, string(ev))
		mu.Unlock()
		return nil
	}}))
	require.NoError(t, e.Add(rules.Rule{Name: "flaky", SQL: "SELECT * FROM 'dt/flaky'", Action: func(context.Context, []byte) error {
		if fails.Add(1) < 3 {
			return errors.New("throttled")
		}
		return nil
	}}))
	require.Error(t, e.Add(rules.Rule{Name: "ok", SQL: "SELECT * FROM 'x'", Action: func(context.Context, []byte) error { return nil }}), "duplicate name")
	require.Error(t, e.Add(rules.Rule{Name: "bad", SQL: "SELECT * FROM 'x' WHERE 1", Action: func(context.Context, []byte) error { return nil }}))

	assert.True(t, e.Match("dt/a"))
	assert.False(t, e.Match("cmd/a"))
	e.Dispatch(rules.Message{Topic: "dt/a", Payload: []byte(`{}`)})
	e.Dispatch(rules.Message{Topic: "cmd/a", Payload: []byte(`{}`)})
	e.Dispatch(rules.Message{Topic: "dt/flaky", Payload: []byte(`{}`)})
	e.Wait()
	// Every matching rule runs: dt/flaky also matches dt/+.
	assert.ElementsMatch(t, []string{`{"n":"a"}`, `{"n":"flaky"}`}, got)
	assert.Equal(t, int32(3), fails.Load(), "two retries after the first failure")

	// A rule that keeps failing stops after the attempts.
	fails.Store(-100)
	e.Dispatch(rules.Message{Topic: "dt/flaky"})
	e.Wait()
	assert.Equal(t, int32(-97), fails.Load())

	require.True(t, e.Remove("ok"))
	require.False(t, e.Remove("ok"))
	assert.True(t, e.Match("dt/flaky"))
	assert.False(t, e.Match("dt/a"))
}

func TestCloseCancelsRetries(t *testing.T) {
	e := rules.New(rules.Options{RetryDelay: time.Hour})
	started := make(chan struct{}, 1)
	require.NoError(t, e.Add(rules.Rule{Name: "r", SQL: "SELECT * FROM 'x'", Action: func(context.Context, []byte) error {
		started <- struct{}{}
		return errors.New("down")
	}}))
	e.Dispatch(rules.Message{Topic: "x"})
	<-started
	done := make(chan struct{})
	go func() { e.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not cancel the retry wait")
	}
	e.Dispatch(rules.Message{Topic: "x"}) // after Close: ignored
	assert.Empty(t, started)
}
