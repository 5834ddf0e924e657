package protocol

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestThingFromTopic(t *testing.T) {
	for _, tc := range []struct {
		topic, thing, kind string
		ok                 bool
	}{
		{DataTopic("dev-1", KindRotateCSR), "dev-1", "rotate/csr", true},
		{CommandTopic("dev-1", KindSSM), "dev-1", "ssm", true},
		{"dt/other/dev-1/status", "", "", false},
		{"dt/fleet//status", "", "", false},
		{"dt/fleet/dev-1", "", "", false},
		{JobsNotifyNextTopic("dev-1"), "", "", false},
	} {
		thing, kind, ok := ThingFromTopic(tc.topic)
		require.Equal(t, tc.ok, ok, tc.topic)
		require.Equal(t, tc.thing, thing, tc.topic)
		require.Equal(t, tc.kind, kind, tc.topic)
	}
}

func TestJobTopicsFollowAWS(t *testing.T) {
	require.Equal(t, "$aws/things/t1/jobs/notify-next", JobsNotifyNextTopic("t1"))
	require.Equal(t, "$aws/things/t1/jobs/start-next/accepted", Accepted(JobsStartNextTopic("t1")))
	require.Equal(t, "$aws/things/t1/jobs/j-1/update/rejected", Rejected(JobsUpdateTopic("t1", "j-1")))
	require.Equal(t, "$aws/provisioning-templates/tpl/provision/json/accepted", RegisterThingAcceptedTopic("tpl"))
	require.True(t, JobTimedOut.Terminal())
	require.False(t, JobInProgress.Terminal())
}

// The job document stays the exact JSON text of the response, whatever it
// holds: duplicate keys, numbers no Go type can hold, or no object at all.
// The envelope still decodes, so the device knows which job to reject.
func TestJobDocumentIsRawJSON(t *testing.T) {
	for _, doc := range []string{
		`{"version":"1.0","steps":[],"steps":[{"x":1}]}`,
		`{"version":"1.0","steps":[{"action":{"name":"a","name":"b"}}]}`,
		`{"version":"1.0","steps":[], "x": 1e999}`,
		`{ "spaced" :  [ 1 , 2 ] }`,
		`"a string"`,
		`[1,2,3]`,
		`-12345678901234567890123456789e-99999`,
	} {
		payload := []byte(`{"timestamp":1,"clientToken":"c","execution":{"jobId":"j1","status":"QUEUED","versionNumber":1,"jobDocument":` + doc + `}}`)
		var msg NextJobMessage
		require.NoError(t, json.Unmarshal(payload, &msg), doc)
		require.NotNil(t, msg.Execution)
		require.Equal(t, "j1", msg.Execution.JobID)
		require.Equal(t, doc, string(msg.Execution.JobDocument))

		var upd UpdateJobAccepted
		require.NoError(t, json.Unmarshal([]byte(`{"timestamp":1,"jobDocument":`+doc+`}`), &upd), doc)
		require.Equal(t, doc, string(upd.JobDocument))
	}
}
