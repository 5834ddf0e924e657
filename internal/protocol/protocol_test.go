package protocol

import (
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
