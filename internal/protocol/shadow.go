package protocol

import (
	"encoding/json"
	"strings"
)

// Device Shadow MQTT API (AWS reserved topics). A named shadow lives under
// $aws/things/<thing>/shadow/name/<shadow>/; the classic (unnamed) shadow
// under $aws/things/<thing>/shadow/.

// AgentShadowName is the named shadow the agent keeps of its own thing.
const AgentShadowName = "fleet-agent"

// Shadow operations (the last topic level of a request).
const (
	ShadowOpUpdate = "update"
	ShadowOpGet    = "get"
	ShadowOpDelete = "delete"
)

// NamedShadowPrefix is the topic prefix of thing's shadow named name
// (without a trailing slash).
func NamedShadowPrefix(thing, name string) string {
	return "$aws/things/" + thing + "/shadow/name/" + name
}

// ShadowUpdateTopic is the topic of an UpdateThingShadow request.
func ShadowUpdateTopic(thing, name string) string {
	return NamedShadowPrefix(thing, name) + "/" + ShadowOpUpdate
}

// ShadowGetTopic is the topic of a GetThingShadow request.
func ShadowGetTopic(thing, name string) string {
	return NamedShadowPrefix(thing, name) + "/" + ShadowOpGet
}

// ShadowDeleteTopic is the topic of a DeleteThingShadow request.
func ShadowDeleteTopic(thing, name string) string {
	return NamedShadowPrefix(thing, name) + "/" + ShadowOpDelete
}

// ShadowDeltaTopic receives the desired keys that differ from reported.
func ShadowDeltaTopic(thing, name string) string { return ShadowUpdateTopic(thing, name) + "/delta" }

// ShadowDocumentsTopic receives the previous and current documents of
// every accepted update.
func ShadowDocumentsTopic(thing, name string) string {
	return ShadowUpdateTopic(thing, name) + "/documents"
}

// ShadowTopic is a parsed Device Shadow topic.
type ShadowTopic struct {
	Thing string
	// Name is the shadow name; "" for the classic shadow.
	Name string
	// Op is update, get or delete.
	Op string
	// Suffix is what follows the operation: "" for a request, else
	// accepted, rejected, delta or documents.
	Suffix string
}

// ParseShadowTopic parses a Device Shadow topic (named or classic).
func ParseShadowTopic(topic string) (ShadowTopic, bool) {
	const prefix = "$aws/things/"
	if !strings.HasPrefix(topic, prefix) {
		return ShadowTopic{}, false
	}
	thing, rest, ok := strings.Cut(topic[len(prefix):], "/shadow/")
	if !ok || thing == "" || strings.Contains(thing, "/") {
		return ShadowTopic{}, false
	}
	var t ShadowTopic
	t.Thing = thing
	if after, named := strings.CutPrefix(rest, "name/"); named {
		name, r, ok := strings.Cut(after, "/")
		if !ok || name == "" {
			return ShadowTopic{}, false
		}
		t.Name, rest = name, r
	}
	op, suffix, _ := strings.Cut(rest, "/")
	switch op {
	case ShadowOpUpdate:
		switch suffix {
		case "", "accepted", "rejected", "delta", "documents":
		default:
			return ShadowTopic{}, false
		}
	case ShadowOpGet, ShadowOpDelete:
		switch suffix {
		case "", "accepted", "rejected":
		default:
			return ShadowTopic{}, false
		}
	default:
		return ShadowTopic{}, false
	}
	t.Op, t.Suffix = op, suffix
	return t, true
}

// ShadowState is the state node of shadow requests and responses.
type ShadowState struct {
	Desired  map[string]any `json:"desired,omitempty"`
	Reported map[string]any `json:"reported,omitempty"`
	Delta    map[string]any `json:"delta,omitempty"`
}

// ShadowMetadata holds the per-attribute timestamps of desired and
// reported.
type ShadowMetadata struct {
	Desired  map[string]any `json:"desired,omitempty"`
	Reported map[string]any `json:"reported,omitempty"`
}

// ShadowUpdateRequest is the payload a client publishes on .../update. A
// nil value in Desired or Reported (JSON null) deletes that key.
type ShadowUpdateRequest struct {
	State       ShadowUpdateState `json:"state"`
	ClientToken string            `json:"clientToken,omitempty"`
	// Version, when set, must equal the shadow's current version or the
	// update is rejected with 409.
	Version int64 `json:"version,omitempty"`
}

// ShadowUpdateState is the state node of an update request; a section
// set to JSON null (json.RawMessage("null")) deletes the whole section.
type ShadowUpdateState struct {
	Desired  json.RawMessage `json:"desired,omitempty"`
	Reported json.RawMessage `json:"reported,omitempty"`
}

// ShadowResponse is the payload of update/accepted and get/accepted (and,
// with only Version and Timestamp, of delete/accepted).
type ShadowResponse struct {
	State       *ShadowState    `json:"state,omitempty"`
	Metadata    *ShadowMetadata `json:"metadata,omitempty"`
	Version     int64           `json:"version"`
	Timestamp   int64           `json:"timestamp"`
	ClientToken string          `json:"clientToken,omitempty"`
}

// ShadowDelta is the payload of update/delta.
type ShadowDelta struct {
	State       map[string]any `json:"state"`
	Metadata    map[string]any `json:"metadata,omitempty"`
	Version     int64          `json:"version"`
	Timestamp   int64          `json:"timestamp"`
	ClientToken string         `json:"clientToken,omitempty"`
}

// ShadowDocument is one side of an update/documents message.
type ShadowDocument struct {
	State    ShadowState    `json:"state"`
	Metadata ShadowMetadata `json:"metadata"`
	Version  int64          `json:"version"`
}

// ShadowDocuments is the payload of update/documents. Previous is nil
// when the update created the shadow.
type ShadowDocuments struct {
	Previous    *ShadowDocument `json:"previous,omitempty"`
	Current     ShadowDocument  `json:"current"`
	Timestamp   int64           `json:"timestamp"`
	ClientToken string          `json:"clientToken,omitempty"`
}

// ShadowError is the payload of .../rejected: an HTTP status code and
// AWS's message.
type ShadowError struct {
	Code        int    `json:"code"`
	Message     string `json:"message"`
	Timestamp   int64  `json:"timestamp,omitempty"`
	ClientToken string `json:"clientToken,omitempty"`
}
