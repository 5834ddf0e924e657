package controlplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/aws/smithy-go"

	"github.com/iot-fleet/iot-fleet/sim/shadow"
)

// maxPublishBytes is AWS IoT's message size limit (128 KiB).
const maxPublishBytes = 128 * 1024

// DataPlane is what the AWS IoT data-plane API (the aws-sdk-go-v2
// iotdataplane client's calls) reaches.
type DataPlane struct {
	// Publish delivers a message to the topic's subscribers at QoS 0 or 1
	// (the broker's PublishQoS). HTTP publishes are authorized by IAM in
	// AWS, not by IoT policies: the local endpoint checks no credentials.
	Publish func(topic string, payload []byte, qos byte)
	// PublishFault, when set, is asked before a valid Publish is carried
	// out: a non-nil error is the answer, in AWS's error shape (a
	// smithy.APIError keeps its code, e.g. ThrottlingException), and
	// nothing is published. Tests inject data-plane faults with it.
	PublishFault func(topic string) error
	// Shadows is the Device Shadow service the devices use over MQTT.
	Shadows *shadow.Service
	// Now returns the epoch seconds of answers' timestamps.
	Now func() int64
}

// ServeDataPlane adds the AWS IoT data-plane operations to h: Publish,
// GetThingShadow, UpdateThingShadow, DeleteThingShadow and
// ListNamedShadowsForThing, on the same endpoint as the control plane
// (their paths do not overlap).
func (h *Handler) ServeDataPlane(dp DataPlane) {
	m := h.mux
	m.HandleFunc("POST /topics/{topic...}", func(w http.ResponseWriter, r *http.Request) {
		const op = "Publish"
		topic := r.PathValue("topic")
		qos := 0
		if v := r.URL.Query().Get("qos"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 1 {
				h.writeError(w, op, invalidRequest(op, "qos %q must be 0 or 1 (AWS IoT does not support QoS 2)", v))
				return
			}
			qos = n
		}
		if r.URL.Query().Get("retain") == "true" {
			h.writeError(w, op, invalidRequest(op, "retain is not supported by the local IoT Core"))
			return
		}
		if err := checkPublishTopic(topic); err != nil {
			h.writeError(w, op, invalidRequest(op, "%v", err))
			return
		}
		payload, err := readLimited(r, maxPublishBytes)
		if err != nil {
			h.writeError(w, op, &smithy.GenericAPIError{Code: "RequestEntityTooLargeException", Message: op + ": " + err.Error()})
			return
		}
		if dp.PublishFault != nil {
			if err := dp.PublishFault(topic); err != nil {
				h.writeError(w, op, err)
				return
			}
		}
		switch {
		case dp.Shadows.Match(topic):
			// As in AWS, a publish on a shadow topic is a shadow request.
			dp.Shadows.Handle(r.Context(), topic, payload)
		case strings.HasPrefix(topic, "$aws/"):
			// Jobs, provisioning and the other reserved topics carry AWS's
			// own messages: nobody may forge them.
			h.writeError(w, op, &smithy.GenericAPIError{Code: "UnauthorizedException",
				Message: fmt.Sprintf("%s: %s is a reserved topic; the local IoT Core accepts HTTP publishes on it only for device shadows", op, topic)})
			return
		default:
			dp.Publish(topic, payload, byte(qos))
		}
		h.log.Info("data plane publish", "topic", topic, "qos", qos, "bytes", len(payload))
		h.writeJSON(w, http.StatusOK, map[string]any{})
	})
	m.HandleFunc("GET /things/{thingName}/shadow", func(w http.ResponseWriter, r *http.Request) {
		thing, name := r.PathValue("thingName"), r.URL.Query().Get("name")
		doc, ok := dp.Shadows.Get(thing, name)
		if !ok {
			h.writeError(w, "GetThingShadow", shadowNotFound(thing, name))
			return
		}
		h.writeJSON(w, http.StatusOK, doc)
	})
	m.HandleFunc("POST /things/{thingName}/shadow", func(w http.ResponseWriter, r *http.Request) {
		const op = "UpdateThingShadow"
		payload, err := readLimited(r, maxPublishBytes)
		if err != nil {
			h.writeError(w, op, &smithy.GenericAPIError{Code: "RequestEntityTooLargeException", Message: op + ": " + err.Error()})
			return
		}
		out, err := dp.Shadows.UpdateJSON(r.PathValue("thingName"), r.URL.Query().Get("name"), payload)
		if err != nil {
			h.writeError(w, op, shadowError(err))
			return
		}
		h.writeRaw(w, out)
	})
	m.HandleFunc("DELETE /things/{thingName}/shadow", func(w http.ResponseWriter, r *http.Request) {
		out, err := dp.Shadows.Delete(r.PathValue("thingName"), r.URL.Query().Get("name"))
		if err != nil {
			h.writeError(w, "DeleteThingShadow", shadowError(err))
			return
		}
		h.writeRaw(w, out)
	})
	m.HandleFunc("GET /api/things/shadow/ListNamedShadowsForThing/{thingName}", func(w http.ResponseWriter, r *http.Request) {
		const op = "ListNamedShadowsForThing"
		names := dp.Shadows.Names(r.PathValue("thingName"))
		size := 0
		if v := r.URL.Query().Get("pageSize"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100 {
				h.writeError(w, op, invalidRequest(op, "pageSize %q must be 1..100", v))
				return
			}
			size = n
		}
		start := 0
		if tok := r.URL.Query().Get("nextToken"); tok != "" {
			i := slices.Index(names, tok)
			if i < 0 {
				h.writeError(w, op, invalidRequest(op, "nextToken %q was not handed out by the local IoT Core", tok))
				return
			}
			start = i
		}
		page := names[start:]
		out := map[string]any{"timestamp": dp.Now()}
		if size > 0 && len(page) > size {
			out["nextToken"] = page[size]
			page = page[:size]
		}
		out["results"] = append([]string{}, page...)
		h.writeJSON(w, http.StatusOK, out)
	})
}

// Topic limits of AWS IoT (docs.aws.amazon.com/general/latest/gr/iot-core.html,
// "Topic size" and "Maximum number of slashes in topic"): a topic is at
// most 256 bytes (UTF-8) and has at most 7 forward slashes, not counting
// the 3 of a Basic Ingest prefix ($aws/rules/<rule-name>/).
const (
	maxTopicBytes   = 256
	maxTopicSlashes = 7
)

// basicIngestPrefix starts a Basic Ingest topic: AWS hands the message to
// the rule named, without the broker.
const basicIngestPrefix = "$aws/rules/"

// errBasicIngest answers a Basic Ingest publish: the local IoT Core does
// not serve it (docs/local-iot-core.md, data plane).
var errBasicIngest = errors.New("the local IoT Core does not serve Basic Ingest")

// checkPublishTopic applies AWS IoT's topic rules to a publish: not
// empty, no wildcards, at most 256 bytes, at most 7 slashes (beyond the 3
// of a Basic Ingest prefix). A Basic Ingest topic ($aws/rules/<rule>/...),
// which AWS routes to the rule named, is refused with errBasicIngest.
func checkPublishTopic(topic string) error {
	switch {
	case topic == "":
		return errors.New("topic is required")
	case strings.ContainsAny(topic, "+#"):
		return fmt.Errorf("topic %q has wildcards (+, #): publish to one topic", topic)
	case len(topic) > maxTopicBytes:
		return fmt.Errorf("topic is %d bytes, at most %d", len(topic), maxTopicBytes)
	}
	slashes := strings.Count(topic, "/")
	ingest := len(topic) >= len(basicIngestPrefix) && strings.EqualFold(topic[:len(basicIngestPrefix)], basicIngestPrefix)
	if ingest {
		slashes = max(0, slashes-3)
	}
	if slashes > maxTopicSlashes {
		return fmt.Errorf("topic %q has %d forward slashes, at most %d", topic, slashes, maxTopicSlashes)
	}
	if ingest {
		rule, _, _ := strings.Cut(topic[len(basicIngestPrefix):], "/")
		return fmt.Errorf("%w: topic %q would go straight to the topic rule %q; publish to a topic the rule's SQL selects instead (the local rules engine sees HTTP publishes too)",
			errBasicIngest, topic, rule)
	}
	return nil
}

func readLimited(r *http.Request, limit int) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if len(data) > limit {
		return nil, fmt.Errorf("payload larger than %d bytes", limit)
	}
	return data, nil
}

func invalidRequest(op, format string, args ...any) error {
	return &smithy.GenericAPIError{Code: "InvalidRequestException", Message: op + ": " + fmt.Sprintf(format, args...)}
}

func shadowNotFound(thing, name string) error {
	if name == "" {
		name = thing
	}
	return &smithy.GenericAPIError{Code: "ResourceNotFoundException", Message: "No shadow exists with name: '" + name + "'"}
}

// shadowCodes maps the Device Shadow service's error codes onto the data
// plane's exceptions.
var shadowCodes = map[int]string{
	400: "InvalidRequestException",
	401: "UnauthorizedException",
	403: "UnauthorizedException",
	404: "ResourceNotFoundException",
	409: "ConflictException",
	413: "RequestEntityTooLargeException",
	415: "UnsupportedDocumentEncodingException",
	429: "ThrottlingException",
}

func shadowError(err error) error {
	var se *shadow.Error
	if !errors.As(err, &se) {
		return err
	}
	code, ok := shadowCodes[se.Code]
	if !ok {
		code = "InternalFailureException"
	}
	return &smithy.GenericAPIError{Code: code, Message: se.Message}
}

// writeRaw answers 200 with a JSON document as is.
func (h *Handler) writeRaw(w http.ResponseWriter, body []byte) {
	if !json.Valid(body) {
		h.writeError(w, "", &smithy.GenericAPIError{Code: "InternalFailureException", Message: "invalid answer document"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}
