// Package shadow implements the Device Shadow service of the local IoT
// Core: AWS IoT's shadow MQTT API for named shadows
// ($aws/things/<thing>/shadow/name/<name>/update|get|delete) and the
// classic shadow ($aws/things/<thing>/shadow/update|get|delete), with
// AWS's documents, versions, metadata timestamps, delta computation and
// /rejected error codes:
//
//   - update merges desired and reported into the document (a null value
//     deletes a key, a null section deletes the section, nested objects
//     merge recursively, arrays and scalars replace); it answers on
//     update/accepted with the request's state and the metadata of the
//     keys it touched, publishes update/documents (previous and current
//     document) and, when desired still differs from reported afterwards,
//     update/delta (also after a reported-only update, as AWS does);
//   - get answers with desired, reported, the delta and all metadata;
//   - delete removes the document; the version number carries on when a
//     shadow of the same name is created again (AWS does so within 48
//     hours; here for the life of the service).
//
// Errors are answered on .../rejected as AWS documents them: 400 (invalid
// JSON, missing or non-object nodes, invalid version or clientToken,
// more than 6 levels of nesting, an unknown state node), 404 (no
// shadow), 409 (version conflict), 413 (desired or reported larger than
// 8 KB) and 415 (not UTF-8). Answers are published to the topic's
// subscribers like any message, so the broker's iot:Receive check applies.
package shadow

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"regexp"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// Limits as AWS IoT documents them for the Device Shadow service.
const (
	// MaxStateBytes is the largest desired or reported section.
	MaxStateBytes = 8 * 1024
	// MaxDepth is the deepest nesting inside desired or reported.
	MaxDepth = 6
	// MaxClientTokenBytes is the longest clientToken.
	MaxClientTokenBytes = 64
)

// AWS's error messages.
const (
	MsgInvalidJSON     = "Invalid JSON"
	MsgMissingState    = "Missing required node: state"
	MsgStateNotObject  = "State node must be an object"
	MsgDesiredObject   = "Desired node must be an object"
	MsgReportedObject  = "Reported node must be an object"
	MsgInvalidVersion  = "Invalid version"
	MsgInvalidToken    = "Invalid clientToken"
	MsgTooDeep         = "JSON contains too many levels of nesting; maximum is 6"
	MsgInvalidNode     = "State contains an invalid node"
	MsgVersionConflict = "Version conflict"
	MsgTooLarge        = "The payload exceeds the maximum size allowed"
	MsgEncoding        = "Unsupported documented encoding; supported encoding is UTF-8"
)

var shadowNameRE = regexp.MustCompile(`^[$a-zA-Z0-9:_-]{1,64}$`)

// Options configure a Service.
type Options struct {
	// Publish sends a message to the topic's subscribers.
	Publish func(topic string, payload []byte)
	Now     func() time.Time
	Logger  *slog.Logger
}

// Service is the Device Shadow service.
type Service struct {
	o   Options
	log *slog.Logger

	mu      sync.Mutex
	shadows map[key]*document
	// versions are the last versions of deleted shadows.
	versions map[key]int64
}

type key struct{ thing, name string }

type document struct {
	desired, reported         map[string]any
	desiredMeta, reportedMeta map[string]any
	version                   int64
	timestamp                 int64
}

// Document is a shadow as GetThingShadow returns it.
type Document = protocol.ShadowResponse

// Error is a rejected request: an HTTP status code and AWS's message.
type Error struct {
	Code    int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Message) }

func reject(code int, msg string) *Error { return &Error{Code: code, Message: msg} }

// New returns an empty Device Shadow service.
func New(o Options) *Service {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Publish == nil {
		o.Publish = func(string, []byte) {}
	}
	return &Service{o: o, log: o.Logger.With("component", "shadow"), shadows: map[key]*document{}, versions: map[key]int64{}}
}

// Match reports whether topic is a shadow request (update, get, delete).
func (s *Service) Match(topic string) bool {
	t, ok := protocol.ParseShadowTopic(topic)
	return ok && t.Suffix == ""
}

// Handle answers one MQTT request on topic.
func (s *Service) Handle(_ context.Context, topic string, payload []byte) {
	t, ok := protocol.ParseShadowTopic(topic)
	if !ok || t.Suffix != "" {
		return
	}
	var (
		out   []message
		token string
		err   error
	)
	switch t.Op {
	case protocol.ShadowOpUpdate:
		out, token, err = s.update(t.Thing, t.Name, payload)
	case protocol.ShadowOpGet:
		var doc Document
		doc, token, err = s.get(t.Thing, t.Name, payload)
		if err == nil {
			out = []message{{topic + "/accepted", mustJSON(doc)}}
		}
	case protocol.ShadowOpDelete:
		out, token, err = s.delete(t.Thing, t.Name, payload)
	}
	if err != nil {
		var re *Error
		if !errors.As(err, &re) {
			re = reject(500, "Internal service failure")
		}
		s.log.Info("shadow request rejected", "thing", t.Thing, "shadow", t.Name, "op", t.Op, "code", re.Code, "message", re.Message)
		s.o.Publish(topic+"/rejected", mustJSON(protocol.ShadowError{Code: re.Code, Message: re.Message, Timestamp: s.ts(), ClientToken: token}))
		return
	}
	for _, m := range out {
		s.o.Publish(m.topic, m.payload)
	}
}

type message struct {
	topic   string
	payload []byte
}

func (s *Service) ts() int64 { return s.o.Now().Unix() }

// Get returns thing's shadow name ("" for the classic shadow) as
// get/accepted would, and false if there is none.
func (s *Service) Get(thing, name string) (Document, bool) {
	doc, _, err := s.get(thing, name, nil)
	return doc, err == nil
}

// Update applies an update request document as if published on the
// shadow's update topic (as UpdateThingShadow does for an operator), with
// the same messages to subscribers. It returns the accepted response.
func (s *Service) Update(thing, name string, payload []byte) (Document, error) {
	out, _, err := s.update(thing, name, payload)
	if err != nil {
		return Document{}, err
	}
	for _, m := range out {
		s.o.Publish(m.topic, m.payload)
	}
	var doc Document
	if err := json.Unmarshal(out[0].payload, &doc); err != nil {
		return Document{}, fmt.Errorf("shadow: decode own answer: %w", err)
	}
	return doc, nil
}

// decodeObject parses payload as a JSON object keeping numbers exact.
func decodeObject(payload []byte) (map[string]any, *Error) {
	if !utf8.Valid(payload) {
		return nil, reject(415, MsgEncoding)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, reject(400, MsgInvalidJSON)
	}
	if dec.More() {
		return nil, reject(400, MsgInvalidJSON)
	}
	if _, err := dec.Token(); err == nil {
		return nil, reject(400, MsgInvalidJSON)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, reject(400, MsgInvalidJSON)
	}
	return obj, nil
}

// clientToken reads the optional clientToken of a request.
func clientToken(req map[string]any) (string, *Error) {
	v, ok := req["clientToken"]
	if !ok {
		return "", nil
	}
	tok, ok := v.(string)
	if !ok || len(tok) > MaxClientTokenBytes {
		return "", reject(400, MsgInvalidToken)
	}
	return tok, nil
}

func validName(name string) *Error {
	if name != "" && !shadowNameRE.MatchString(name) {
		return reject(400, "Invalid shadow name")
	}
	return nil
}

func (s *Service) notFound(thing, name string) *Error {
	if name == "" {
		return reject(404, "No shadow exists with name: '"+thing+"'")
	}
	return reject(404, "No shadow exists with name: '"+name+"'")
}

func (s *Service) get(thing, name string, payload []byte) (Document, string, error) {
	token := ""
	if len(bytes.TrimSpace(payload)) > 0 {
		req, rerr := decodeObject(payload)
		if rerr != nil {
			return Document{}, "", rerr
		}
		tok, rerr := clientToken(req)
		if rerr != nil {
			return Document{}, "", rerr
		}
		token = tok
	}
	if rerr := validName(name); rerr != nil {
		return Document{}, token, rerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.shadows[key{thing, name}]
	if !ok {
		return Document{}, token, s.notFound(thing, name)
	}
	st := &protocol.ShadowState{Desired: clone(d.desired), Reported: clone(d.reported), Delta: Delta(d.desired, d.reported)}
	md := &protocol.ShadowMetadata{Desired: clone(d.desiredMeta), Reported: clone(d.reportedMeta)}
	return Document{State: st, Metadata: md, Version: d.version, Timestamp: s.ts(), ClientToken: token}, token, nil
}

func (s *Service) delete(thing, name string, payload []byte) ([]message, string, error) {
	token := ""
	if len(bytes.TrimSpace(payload)) > 0 {
		req, rerr := decodeObject(payload)
		if rerr != nil {
			return nil, "", rerr
		}
		tok, rerr := clientToken(req)
		if rerr != nil {
			return nil, "", rerr
		}
		token = tok
	}
	if rerr := validName(name); rerr != nil {
		return nil, token, rerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key{thing, name}
	d, ok := s.shadows[k]
	if !ok {
		return nil, token, s.notFound(thing, name)
	}
	delete(s.shadows, k)
	s.versions[k] = d.version
	topic := shadowTopic(thing, name, protocol.ShadowOpDelete) + "/accepted"
	return []message{{topic, mustJSON(Document{Version: d.version, Timestamp: s.ts(), ClientToken: token})}}, token, nil
}

// section is a parsed desired or reported node of an update.
type section struct {
	present bool
	null    bool
	value   map[string]any
}

func parseSection(state map[string]any, name, notObject string) (section, *Error) {
	v, ok := state[name]
	if !ok {
		return section{}, nil
	}
	if v == nil {
		return section{present: true, null: true}, nil
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return section{}, reject(400, notObject)
	}
	if depth(obj) > MaxDepth {
		return section{}, reject(400, MsgTooDeep)
	}
	return section{present: true, value: obj}, nil
}

// depth is the nesting depth of v: 1 for an object of scalars.
func depth(v any) int {
	switch x := v.(type) {
	case map[string]any:
		d := 0
		for _, e := range x {
			d = max(d, depth(e))
		}
		return d + 1
	case []any:
		d := 0
		for _, e := range x {
			d = max(d, depth(e))
		}
		return d + 1
	}
	return 0
}

func (s *Service) update(thing, name string, payload []byte) ([]message, string, error) {
	req, rerr := decodeObject(payload)
	if rerr != nil {
		return nil, "", rerr
	}
	token, rerr := clientToken(req)
	if rerr != nil {
		return nil, "", rerr
	}
	if rerr := validName(name); rerr != nil {
		return nil, token, rerr
	}
	rawState, ok := req["state"]
	if !ok {
		return nil, token, reject(400, MsgMissingState)
	}
	state, ok := rawState.(map[string]any)
	if !ok {
		return nil, token, reject(400, MsgStateNotObject)
	}
	for k := range state {
		if k != "desired" && k != "reported" {
			return nil, token, reject(400, MsgInvalidNode)
		}
	}
	desired, rerr := parseSection(state, "desired", MsgDesiredObject)
	if rerr != nil {
		return nil, token, rerr
	}
	reported, rerr := parseSection(state, "reported", MsgReportedObject)
	if rerr != nil {
		return nil, token, rerr
	}
	var expected *int64
	if v, ok := req["version"]; ok {
		n, isNum := v.(json.Number)
		i, err := n.Int64()
		if !isNum || err != nil || i < 0 {
			return nil, token, reject(400, MsgInvalidVersion)
		}
		expected = &i
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	k := key{thing, name}
	prev, existed := s.shadows[k]
	current := s.versions[k]
	if existed {
		current = prev.version
	}
	if expected != nil && *expected != current {
		return nil, token, reject(409, MsgVersionConflict)
	}
	now := s.ts()
	next := &document{version: current + 1, timestamp: now}
	if existed {
		next.desired, next.reported = clone(prev.desired), clone(prev.reported)
		next.desiredMeta, next.reportedMeta = clone(prev.desiredMeta), clone(prev.reportedMeta)
	}
	touched := protocol.ShadowMetadata{}
	apply := func(sec section, doc, meta *map[string]any) map[string]any {
		switch {
		case !sec.present:
			return nil
		case sec.null:
			*doc, *meta = nil, nil
			return nil
		}
		if *doc == nil {
			*doc, *meta = map[string]any{}, map[string]any{}
		}
		merge(*doc, sec.value)
		mergeMeta(*meta, sec.value, now)
		if len(*doc) == 0 {
			*doc, *meta = nil, nil
		}
		return stamp(sec.value, now)
	}
	touched.Desired = apply(desired, &next.desired, &next.desiredMeta)
	touched.Reported = apply(reported, &next.reported, &next.reportedMeta)
	for _, sec := range []map[string]any{next.desired, next.reported} {
		if b, _ := json.Marshal(sec); len(b) > MaxStateBytes {
			return nil, token, reject(413, MsgTooLarge)
		}
	}
	s.shadows[k] = next

	base := shadowTopic(thing, name, protocol.ShadowOpUpdate)
	accepted := Document{
		State:    &protocol.ShadowState{Desired: desired.value, Reported: reported.value},
		Metadata: &touched, Version: next.version, Timestamp: now, ClientToken: token,
	}
	out := []message{{base + "/accepted", mustJSON(acceptedPayload(accepted, desired, reported))}}
	docs := protocol.ShadowDocuments{Current: snapshot(next), Timestamp: now, ClientToken: token}
	if existed {
		p := snapshot(prev)
		docs.Previous = &p
	}
	out = append(out, message{base + "/documents", mustJSON(docs)})
	// AWS publishes the delta after every accepted update that leaves
	// desired and reported different, a reported-only update included
	// (a device that reports without applying gets the delta again).
	{
		if delta := Delta(next.desired, next.reported); len(delta) > 0 {
			out = append(out, message{base + "/delta", mustJSON(protocol.ShadowDelta{
				State: delta, Metadata: project(next.desiredMeta, delta), Version: next.version, Timestamp: now, ClientToken: token,
			})})
		}
	}
	return out, token, nil
}

// acceptedPayload echoes the request's state, nulls included (AWS's
// update/accepted shows "desired": null for a deleted section).
func acceptedPayload(doc Document, desired, reported section) any {
	state := map[string]any{}
	if desired.present {
		state["desired"] = desired.value
	}
	if reported.present {
		state["reported"] = reported.value
	}
	p := map[string]any{"state": state, "version": doc.Version, "timestamp": doc.Timestamp}
	md := map[string]any{}
	if doc.Metadata.Desired != nil {
		md["desired"] = doc.Metadata.Desired
	}
	if doc.Metadata.Reported != nil {
		md["reported"] = doc.Metadata.Reported
	}
	p["metadata"] = md
	if doc.ClientToken != "" {
		p["clientToken"] = doc.ClientToken
	}
	return p
}

func snapshot(d *document) protocol.ShadowDocument {
	return protocol.ShadowDocument{
		State:    protocol.ShadowState{Desired: clone(d.desired), Reported: clone(d.reported)},
		Metadata: protocol.ShadowMetadata{Desired: clone(d.desiredMeta), Reported: clone(d.reportedMeta)},
		Version:  d.version,
	}
}

func shadowTopic(thing, name, op string) string {
	if name == "" {
		return "$aws/things/" + thing + "/shadow/" + op
	}
	return protocol.NamedShadowPrefix(thing, name) + "/" + op
}

// merge applies patch to doc: null deletes, objects merge recursively,
// everything else replaces.
func merge(doc, patch map[string]any) {
	for k, v := range patch {
		switch pv := v.(type) {
		case nil:
			delete(doc, k)
		case map[string]any:
			cur, ok := doc[k].(map[string]any)
			if !ok {
				cur = map[string]any{}
			}
			merge(cur, pv)
			doc[k] = cur
		default:
			doc[k] = clone(v)
		}
	}
}

// mergeMeta stamps the metadata of the keys patch touches.
func mergeMeta(meta, patch map[string]any, ts int64) {
	for k, v := range patch {
		switch pv := v.(type) {
		case nil:
			delete(meta, k)
		case map[string]any:
			cur, ok := meta[k].(map[string]any)
			if !ok || isLeafMeta(cur) {
				cur = map[string]any{}
			}
			mergeMeta(cur, pv, ts)
			meta[k] = cur
		default:
			meta[k] = stampValue(v, ts)
		}
	}
}

func isLeafMeta(m map[string]any) bool {
	_, ok := m["timestamp"]
	return ok && len(m) == 1
}

// stamp is the metadata of patch's keys (nulls omitted).
func stamp(patch map[string]any, ts int64) map[string]any {
	out := map[string]any{}
	mergeMeta(out, patch, ts)
	return out
}

// stampValue is the metadata of one value: {"timestamp": ts} for a
// scalar, one per element for an array (AWS's array metadata).
func stampValue(v any, ts int64) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = stampValue(e, ts)
		}
		return out
	case map[string]any:
		return stamp(x, ts)
	}
	return map[string]any{"timestamp": ts}
}

// Delta is AWS's delta state: the desired keys whose value differs from
// reported (missing or unequal), compared recursively through objects;
// arrays and scalars compare as whole values. nil when they agree.
func Delta(desired, reported map[string]any) map[string]any {
	var out map[string]any
	for k, dv := range desired {
		rv, ok := reported[k]
		var d any
		switch {
		case !ok:
			d = clone(dv)
		default:
			dm, dIsObj := dv.(map[string]any)
			rm, rIsObj := rv.(map[string]any)
			if dIsObj && rIsObj {
				if sub := Delta(dm, rm); len(sub) > 0 {
					d = sub
				}
			} else if !Equal(dv, rv) {
				d = clone(dv)
			}
		}
		if d != nil {
			if out == nil {
				out = map[string]any{}
			}
			out[k] = d
		}
	}
	return out
}

// project is the part of meta shaped like delta.
func project(meta, delta map[string]any) map[string]any {
	out := map[string]any{}
	for k, dv := range delta {
		mv, ok := meta[k]
		if !ok {
			continue
		}
		dm, dIsObj := dv.(map[string]any)
		mm, mIsObj := mv.(map[string]any)
		if dIsObj && mIsObj && !isLeafMeta(mm) {
			out[k] = project(mm, dm)
		} else {
			out[k] = clone(mv)
		}
	}
	return out
}

// Equal compares two JSON values; numbers compare by value (1 equals
// 1.0).
func Equal(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			if f, isF := b.(float64); isF {
				y, ok = json.Number(fmt.Sprint(f)), true
			}
		}
		return ok && numEqual(x, y)
	case float64:
		return Equal(json.Number(fmt.Sprint(x)), b)
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !Equal(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !Equal(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return a == b
}

func numEqual(a, b json.Number) bool {
	x, ok1 := new(big.Rat).SetString(a.String())
	y, ok2 := new(big.Rat).SetString(b.String())
	if !ok1 || !ok2 {
		return a == b
	}
	return x.Cmp(y) == 0
}

// clone deep-copies a JSON value.
func clone[T any](v T) T {
	c, _ := cloneAny(any(v)).(T)
	return c
}

func cloneAny(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if x == nil {
			return x
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = cloneAny(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = cloneAny(e)
		}
		return out
	}
	return v
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil { // cannot happen: only JSON values
		panic(fmt.Sprintf("shadow: marshal: %v", err))
	}
	return b
}

// UpdateJSON is Update returning the accepted response exactly as it is
// published on update/accepted (as the data plane's UpdateThingShadow
// answers it).
func (s *Service) UpdateJSON(thing, name string, payload []byte) ([]byte, error) {
	out, _, err := s.update(thing, name, payload)
	if err != nil {
		return nil, err
	}
	for _, m := range out {
		s.o.Publish(m.topic, m.payload)
	}
	return out[0].payload, nil
}

// Delete deletes thing's shadow name ("" for the classic shadow) as a
// delete request would, with the same delete/accepted message, and
// returns the accepted response ({"version", "timestamp"}).
func (s *Service) Delete(thing, name string) ([]byte, error) {
	out, _, err := s.delete(thing, name, nil)
	if err != nil {
		return nil, err
	}
	for _, m := range out {
		s.o.Publish(m.topic, m.payload)
	}
	return out[0].payload, nil
}

// Names lists thing's named shadows in name order (the classic shadow is
// not a named one).
func (s *Service) Names(thing string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.shadows {
		if k.thing == thing && k.name != "" {
			out = append(out, k.name)
		}
	}
	sort.Strings(out)
	return out
}
