package mqtttopic

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMatch(t *testing.T) {
	cases := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/#", "a/b/c", true},
		{"a/#", "a", true},
		{"#", "a/b", true},
		{"#", "$aws/x", false},
		{"+/x", "$aws/x", false},
		{"$aws/things/+/jobs/#", "$aws/things/dev-a/jobs/j1/update", true},
		{"$aws/things/t/jobs/+/update/accepted", "$aws/things/t/jobs/j1/update/accepted", true},
		{"$aws/things/t/jobs/+/update/accepted", "$aws/things/t/jobs/j1/update/rejected", false},
		{"$aws/things/+/jobs/+/update", "$aws/things/dev-a/jobs/j1/update/accepted", false},
		{"a/b/c", "a/b", false},
		{"a/#/b", "a/x/b", false},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, Match(c.filter, c.topic), "%s vs %s", c.filter, c.topic)
	}
}

func TestValidateFilter(t *testing.T) {
	require.Error(t, ValidateFilter("a/#/b"))
	require.Error(t, ValidateFilter("a/b+"))
	require.Error(t, ValidateFilter("a/b#"))
	require.Error(t, ValidateFilter(""))
	require.NoError(t, ValidateFilter("a/+/#"))
	require.NoError(t, ValidateFilter("$aws/things/+/jobs/notify-next"))
}
