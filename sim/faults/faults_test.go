package faults

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRulesCountAndClientScope(t *testing.T) {
	s := New()
	_, err := s.Add(Rule{Topic: "a/#", Direction: "sideways", Drop: true})
	require.ErrorContains(t, err, "direction")
	_, err = s.Add(Rule{Topic: "a/#", Direction: Inbound})
	require.ErrorContains(t, err, "drop or a positive delay")
	_, err = s.Add(Rule{Topic: "a/#/x", Direction: Inbound, Drop: true})
	require.ErrorContains(t, err, "topic")

	id, err := s.Add(Rule{Topic: "a/#", Direction: Outbound, Drop: true, Count: 2, ClientID: "c1"})
	require.NoError(t, err)
	_, ok := s.Match(Outbound, "c2", "a/b")
	assert.False(t, ok, "other client")
	_, ok = s.Match(Inbound, "c1", "a/b")
	assert.False(t, ok, "other direction")
	a, ok := s.Match(Outbound, "c1", "a/b")
	require.True(t, ok)
	assert.Equal(t, Action{Drop: true, RuleID: id}, a)
	_, ok = s.Match(Outbound, "c1", "a/c")
	require.True(t, ok)
	_, ok = s.Match(Outbound, "c1", "a/d")
	assert.False(t, ok, "rule used up after Count matches")
	assert.Empty(t, s.Rules())

	id2, err := s.Add(Rule{Topic: "x", Direction: Inbound, Delay: time.Second})
	require.NoError(t, err)
	for range 3 {
		a, ok = s.Match(Inbound, "any", "x")
		require.True(t, ok)
		assert.Equal(t, time.Second, a.Delay)
	}
	assert.True(t, s.Remove(id2))
	assert.False(t, s.Remove(id2))
}

func TestProvisioningCounters(t *testing.T) {
	s := New()
	s.ThrottleProvisioning(2)
	s.RefuseCSRs(1)
	th, rc := s.Pending()
	assert.Equal(t, 2, th)
	assert.Equal(t, 1, rc)
	assert.True(t, s.TakeThrottle())
	assert.True(t, s.TakeThrottle())
	assert.False(t, s.TakeThrottle())
	assert.True(t, s.TakeRefuseCSR())
	assert.False(t, s.TakeRefuseCSR())
	s.ThrottleProvisioning(5)
	s.Clear()
	assert.False(t, s.TakeThrottle())
}

func TestRejectionsAreTakenInOrderAndCounted(t *testing.T) {
	s := New()
	for _, bad := range []Rejection{
		{Topic: "a/#/b", StatusCode: 500, ErrorCode: "X", Count: 1},
		{Topic: "a", StatusCode: 500, ErrorCode: "X", Count: 0},
		{Topic: "a", StatusCode: 200, ErrorCode: "X", Count: 1},
		{Topic: "a", StatusCode: 500, Count: 1},
	} {
		if err := s.RejectRequests(bad); err == nil {
			t.Errorf("RejectRequests(%+v) accepted", bad)
		}
	}
	if err := s.RejectRequests(Rejection{Topic: "$aws/certificates/#", StatusCode: 429, ErrorCode: "Throttling", Count: 2}); err != nil {
		t.Fatal(err)
	}
	if err := s.RejectRequests(Rejection{Topic: "$aws/+/x", StatusCode: 500, ErrorCode: "InternalError", Count: 1}); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.TakeRejection("$aws/other/y"); ok {
		t.Fatal("unmatched topic rejected")
	}
	var got []string
	for _, topic := range []string{"$aws/certificates/x", "$aws/certificates/x", "$aws/certificates/x"} {
		if r, ok := s.TakeRejection(topic); ok {
			got = append(got, r.ErrorCode)
		}
	}
	if want := []string{"Throttling", "Throttling", "InternalError"}; !slices.Equal(got, want) {
		t.Fatalf("rejections %v, want %v", got, want)
	}
	if _, ok := s.TakeRejection("$aws/certificates/x"); ok {
		t.Fatal("rejection used beyond its count")
	}
	if err := s.RejectRequests(Rejection{Topic: "a", StatusCode: 500, ErrorCode: "X", Count: 5}); err != nil {
		t.Fatal(err)
	}
	s.Clear()
	if _, ok := s.TakeRejection("a"); ok {
		t.Fatal("Clear left a rejection")
	}
}

// Gone closes once a counted rule is used up, or a rule is removed.
func TestGone(t *testing.T) {
	s := New()
	once, err := s.Add(Rule{Topic: "a/#", Direction: Inbound, Drop: true, Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	kept, err := s.Add(Rule{Topic: "b/#", Direction: Inbound, Drop: true})
	if err != nil {
		t.Fatal(err)
	}
	isClosed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	if isClosed(s.Gone(once)) || isClosed(s.Gone(kept)) {
		t.Fatal("a rule not used yet is not gone")
	}
	if _, ok := s.Match(Inbound, "c", "a/x"); !ok {
		t.Fatal("the rule matches")
	}
	if !isClosed(s.Gone(once)) {
		t.Fatal("a counted rule used up is gone")
	}
	if _, ok := s.Match(Inbound, "c", "b/x"); !ok || isClosed(s.Gone(kept)) {
		t.Fatal("an unlimited rule stays")
	}
	s.Remove(kept)
	if !isClosed(s.Gone(kept)) {
		t.Fatal("a removed rule is gone")
	}
	third, _ := s.Add(Rule{Topic: "c/#", Direction: Outbound, Drop: true})
	ch := s.Gone(third)
	s.Clear()
	if !isClosed(ch) || !isClosed(s.Gone("fault-unknown")) {
		t.Fatal("Clear closes every Gone channel; an unknown id is gone")
	}
}
