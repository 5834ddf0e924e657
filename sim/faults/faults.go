// Package faults holds the fault injections of the simulated IoT Core:
// message drop/delay rules matched by MQTT topic filter (and optionally
// client id), provisioning throttling and CSR refusal counters. The broker
// and services consult it; tests and the operator API change it at run
// time. Safe for concurrent use.
package faults

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/mqtttopic"
)

// Direction of a message relative to the broker.
type Direction string

const (
	// Inbound: a client publishes to the broker.
	Inbound Direction = "inbound"
	// Outbound: the broker delivers to a client.
	Outbound Direction = "outbound"
)

// Rule drops or delays messages. Exactly one of Drop and Delay applies
// (Drop wins if both are set).
type Rule struct {
	ID string `json:"id,omitempty"`
	// Topic is an MQTT topic filter (+ and # wildcards) the message topic
	// must match.
	Topic string `json:"topic"`
	// ClientID, if set, restricts the rule to one client.
	ClientID  string        `json:"clientId,omitempty"`
	Direction Direction     `json:"direction"`
	Drop      bool          `json:"drop,omitempty"`
	Delay     time.Duration `json:"delay,omitempty"`
	// Count is how many messages the rule applies to; 0 is unlimited.
	// Remaining counts down as the rule fires.
	Count     int `json:"count,omitempty"`
	Remaining int `json:"remaining,omitempty"`
}

// Action is what to do with one message.
type Action struct {
	Drop   bool
	Delay  time.Duration
	RuleID string
}

// Set is the live fault configuration.
type Set struct {
	mu        sync.Mutex
	rules     []*Rule
	nextID    int
	throttle  int
	refuseCSR int
	rejects   []*Rejection
	gone      map[string]chan struct{} // closed when the rule of that id is gone (Gone)
}

// New returns an empty fault set.
func New() *Set { return &Set{} }

// Add validates and installs a rule and returns its id.
func (s *Set) Add(r Rule) (string, error) {
	if r.Direction != Inbound && r.Direction != Outbound {
		return "", fmt.Errorf("fault rule: direction %q, want %q or %q", r.Direction, Inbound, Outbound)
	}
	if err := mqtttopic.ValidateFilter(r.Topic); err != nil {
		return "", fmt.Errorf("fault rule: topic: %w", err)
	}
	if !r.Drop && r.Delay <= 0 {
		return "", fmt.Errorf("fault rule: set drop or a positive delay")
	}
	if r.Count < 0 {
		return "", fmt.Errorf("fault rule: count %d must not be negative", r.Count)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	r.ID = "fault-" + strconv.Itoa(s.nextID)
	r.Remaining = r.Count
	s.rules = append(s.rules, &r)
	if s.gone == nil {
		s.gone = map[string]chan struct{}{}
	}
	s.gone[r.ID] = make(chan struct{})
	return r.ID, nil
}

// Gone returns a channel closed once the rule id is gone: a counted rule
// used up by Match, or one removed by Remove or Clear. An unknown id's
// channel is closed already.
func (s *Set) Gone(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch, ok := s.gone[id]; ok {
		return ch
	}
	ch := make(chan struct{})
	close(ch)
	return ch
}

// forget closes the Gone channel of id; s.mu is held.
func (s *Set) forget(id string) {
	if ch, ok := s.gone[id]; ok {
		close(ch)
		delete(s.gone, id)
	}
}

// Remove deletes a rule; it reports whether it existed.
func (s *Set) Remove(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.rules {
		if r.ID == id {
			s.rules = append(s.rules[:i], s.rules[i+1:]...)
			s.forget(id)
			return true
		}
	}
	return false
}

// Clear removes every rule and resets the provisioning counters.
func (s *Set) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.rules {
		s.forget(r.ID)
	}
	s.rules = nil
	s.throttle = 0
	s.refuseCSR = 0
	s.rejects = nil
}

// Rules returns a copy of the installed rules.
func (s *Set) Rules() []Rule {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Rule, 0, len(s.rules))
	for _, r := range s.rules {
		out = append(out, *r)
	}
	return out
}

// Match returns the action of the first rule matching a message and
// consumes one use of a counted rule. ok is false when no rule matches.
func (s *Set) Match(dir Direction, clientID, topic string) (Action, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.rules {
		if r.Direction != dir || (r.ClientID != "" && r.ClientID != clientID) || !mqtttopic.Match(r.Topic, topic) {
			continue
		}
		a := Action{Drop: r.Drop, Delay: r.Delay, RuleID: r.ID}
		if a.Drop {
			a.Delay = 0
		}
		if r.Count > 0 {
			r.Remaining--
			if r.Remaining <= 0 {
				s.rules = append(s.rules[:i], s.rules[i+1:]...)
				s.forget(r.ID)
			}
		}
		return a, true
	}
	return Action{}, false
}

// ThrottleProvisioning makes the next n provisioning requests fail with a
// Throttling error.
func (s *Set) ThrottleProvisioning(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttle = max(n, 0)
}

// TakeThrottle consumes one throttling; it reports whether the current
// request must be throttled.
func (s *Set) TakeThrottle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.throttle > 0 {
		s.throttle--
		return true
	}
	return false
}

// RefuseCSRs makes the next n CreateCertificateFromCsr requests fail.
func (s *Set) RefuseCSRs(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuseCSR = max(n, 0)
}

// TakeRefuseCSR consumes one CSR refusal.
func (s *Set) TakeRefuseCSR() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuseCSR > 0 {
		s.refuseCSR--
		return true
	}
	return false
}

// Pending returns the remaining provisioning throttles and CSR refusals.
func (s *Set) Pending() (throttle, refuseCSR int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttle, s.refuseCSR
}

// Rejection makes the service behind an API topic (provisioning)
// answer the next Count requests matching Topic with this error on the
// request topic's /rejected, as AWS answers a failed request, without
// acting on them.
type Rejection struct {
	// Topic is an MQTT topic filter the request topic must match.
	Topic        string `json:"topic"`
	StatusCode   int    `json:"statusCode"`
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
	// Count is how many requests are rejected (at least 1).
	Count int `json:"count"`
}

// RejectRequests installs a rejection; rejections are taken in the order
// they were installed.
func (s *Set) RejectRequests(r Rejection) error {
	if err := mqtttopic.ValidateFilter(r.Topic); err != nil {
		return fmt.Errorf("fault rejection: topic: %w", err)
	}
	if r.Count < 1 {
		return fmt.Errorf("fault rejection: count %d, want at least 1", r.Count)
	}
	if r.StatusCode < 400 || r.StatusCode > 599 || r.ErrorCode == "" {
		return fmt.Errorf("fault rejection: want an error status (4xx/5xx) and an error code, got %d %q", r.StatusCode, r.ErrorCode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejects = append(s.rejects, &r)
	return nil
}

// TakeRejection consumes one use of the first rejection matching topic;
// ok is false when none does.
func (s *Set) TakeRejection(topic string) (Rejection, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.rejects {
		if !mqtttopic.Match(r.Topic, topic) {
			continue
		}
		out := *r
		r.Count--
		if r.Count <= 0 {
			s.rejects = append(s.rejects[:i], s.rejects[i+1:]...)
		}
		out.Count = 1
		return out, true
	}
	return Rejection{}, false
}
