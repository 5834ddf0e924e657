// Package dynamodbapi serves a read-only view of the local stack's device
// registry table over DynamoDB's wire protocol (JSON 1.0, X-Amz-Target
// DynamoDB_20120810.GetItem and .Scan), so the real aws-sdk-go-v2
// dynamodb client and `aws dynamodb get-item|scan` read the local registry
// as they read the deployed table: internal/registry's DynamoDB store
// (registry.NewDynamoDB) Get and Scan work against it unchanged. Writes are
// refused with an AWS-shaped error: the local registry is written only by
// the stack's Lambdas. Requests may be SigV4-signed with any credentials
// (accepted, not checked).
package dynamodbapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// TargetPrefix prefixes the X-Amz-Target of DynamoDB's operations.
const TargetPrefix = "DynamoDB_20120810."

// Table is a table the handler serves read-only.
type Table interface {
	// HashKey is the partition key's attribute name (type S).
	HashKey() string
	// Item returns the item of key (false if there is none).
	Item(ctx context.Context, key string) (map[string]types.AttributeValue, bool, error)
	// Scan returns up to limit items in key order after the key start
	// ("" from the first) and whether more remain.
	Scan(ctx context.Context, start string, limit int) (items []map[string]types.AttributeValue, more bool, err error)
}

// Handler serves the tables.
type Handler struct {
	tables map[string]Table
	log    *slog.Logger
}

// New serves tables by name. log may be nil.
func New(tables map[string]Table, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{tables: tables, log: log.With("component", "dynamodb")}
}

// Owns reports whether r is a DynamoDB request (by its X-Amz-Target).
func Owns(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("X-Amz-Target"), TargetPrefix)
}

// writes are DynamoDB's writing operations, refused by name.
var writes = map[string]bool{
	"PutItem": true, "UpdateItem": true, "DeleteItem": true, "BatchWriteItem": true, "TransactWriteItems": true,
	"CreateTable": true, "DeleteTable": true, "UpdateTable": true, "ExecuteStatement": true, "BatchExecuteStatement": true,
	"ExecuteTransaction": true, "RestoreTableFromBackup": true, "ImportTable": true,
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), TargetPrefix)
	if r.Method != http.MethodPost {
		h.fail(w, op, http.StatusBadRequest, "SerializationException", "DynamoDB requests are POST /")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		h.fail(w, op, http.StatusBadRequest, "SerializationException", "read body: "+err.Error())
		return
	}
	switch {
	case op == "GetItem":
		h.getItem(w, r.Context(), body)
	case op == "Scan":
		h.scan(w, r.Context(), body)
	case writes[op]:
		h.fail(w, op, http.StatusBadRequest, "AccessDeniedException",
			fmt.Sprintf("%s: the local registry is read-only here: it is written only by the local stack's Lambdas (provisioning, allowlist sync, rotation, SSM, revoke)", op))
	default:
		h.fail(w, op, http.StatusBadRequest, "UnknownOperationException",
			fmt.Sprintf("%s is not served by the local DynamoDB endpoint (GetItem and Scan are)", op))
	}
}

type getItemInput struct {
	TableName                string                     `json:"TableName"`
	Key                      map[string]json.RawMessage `json:"Key"`
	ProjectionExpression     string                     `json:"ProjectionExpression"`
	ExpressionAttributeNames map[string]string          `json:"ExpressionAttributeNames"`
	AttributesToGet          []string                   `json:"AttributesToGet"`
}

type scanInput struct {
	TableName                string                     `json:"TableName"`
	Limit                    int                        `json:"Limit"`
	ExclusiveStartKey        map[string]json.RawMessage `json:"ExclusiveStartKey"`
	ProjectionExpression     string                     `json:"ProjectionExpression"`
	ExpressionAttributeNames map[string]string          `json:"ExpressionAttributeNames"`
	FilterExpression         string                     `json:"FilterExpression"`
	Segment                  *int                       `json:"Segment"`
	TotalSegments            *int                       `json:"TotalSegments"`
	IndexName                string                     `json:"IndexName"`
	Select                   string                     `json:"Select"`
}

func (h *Handler) table(w http.ResponseWriter, op, name string) (Table, bool) {
	t, ok := h.tables[name]
	if !ok {
		h.fail(w, op, http.StatusBadRequest, "ResourceNotFoundException", fmt.Sprintf("Requested resource not found: Table: %s not found (the local endpoint serves %s)", name, strings.Join(h.names(), ", ")))
	}
	return t, ok
}

func (h *Handler) names() []string {
	var out []string
	for n := range h.tables {
		out = append(out, n)
	}
	return out
}

// keyOf returns the string key of a Key or ExclusiveStartKey.
func keyOf(t Table, key map[string]json.RawMessage) (string, error) {
	if len(key) != 1 {
		return "", fmt.Errorf("the key must have exactly the attribute %s", t.HashKey())
	}
	raw, ok := key[t.HashKey()]
	if !ok {
		return "", fmt.Errorf("the provided key element does not match the schema (want %s)", t.HashKey())
	}
	var v struct{ S *string }
	if err := json.Unmarshal(raw, &v); err != nil || v.S == nil {
		return "", fmt.Errorf("key %s must be a string (S)", t.HashKey())
	}
	return *v.S, nil
}

func (h *Handler) getItem(w http.ResponseWriter, ctx context.Context, body []byte) {
	const op = "GetItem"
	var in getItemInput
	if err := json.Unmarshal(body, &in); err != nil {
		h.fail(w, op, http.StatusBadRequest, "SerializationException", err.Error())
		return
	}
	t, ok := h.table(w, op, in.TableName)
	if !ok {
		return
	}
	key, err := keyOf(t, in.Key)
	if err != nil {
		h.fail(w, op, http.StatusBadRequest, "ValidationException", err.Error())
		return
	}
	proj, err := projection(in.ProjectionExpression, in.ExpressionAttributeNames, in.AttributesToGet)
	if err != nil {
		h.fail(w, op, http.StatusBadRequest, "ValidationException", err.Error())
		return
	}
	item, found, err := t.Item(ctx, key)
	if err != nil {
		h.fail(w, op, http.StatusInternalServerError, "InternalServerError", err.Error())
		return
	}
	out := map[string]any{}
	if found {
		enc, err := encodeItem(project(item, proj))
		if err != nil {
			h.fail(w, op, http.StatusInternalServerError, "InternalServerError", err.Error())
			return
		}
		out["Item"] = enc
	}
	h.write(w, out)
}

func (h *Handler) scan(w http.ResponseWriter, ctx context.Context, body []byte) {
	const op = "Scan"
	var in scanInput
	if err := json.Unmarshal(body, &in); err != nil {
		h.fail(w, op, http.StatusBadRequest, "SerializationException", err.Error())
		return
	}
	t, ok := h.table(w, op, in.TableName)
	if !ok {
		return
	}
	switch {
	case in.FilterExpression != "", in.IndexName != "", in.Segment != nil, in.TotalSegments != nil:
		h.fail(w, op, http.StatusBadRequest, "ValidationException", "Scan: FilterExpression, IndexName and parallel scans are not supported by the local DynamoDB endpoint")
		return
	case in.Select == "COUNT":
		h.fail(w, op, http.StatusBadRequest, "ValidationException", "Scan: Select COUNT is not supported by the local DynamoDB endpoint")
		return
	case in.Limit < 0:
		h.fail(w, op, http.StatusBadRequest, "ValidationException", "Scan: Limit must be at least 1")
		return
	}
	start := ""
	if in.ExclusiveStartKey != nil {
		k, err := keyOf(t, in.ExclusiveStartKey)
		if err != nil {
			h.fail(w, op, http.StatusBadRequest, "ValidationException", "ExclusiveStartKey: "+err.Error())
			return
		}
		start = k
	}
	proj, err := projection(in.ProjectionExpression, in.ExpressionAttributeNames, nil)
	if err != nil {
		h.fail(w, op, http.StatusBadRequest, "ValidationException", err.Error())
		return
	}
	limit := in.Limit
	if limit == 0 {
		limit = 1000 // about DynamoDB's 1 MB page for registry items
	}
	items, more, err := t.Scan(ctx, start, limit)
	if err != nil {
		h.fail(w, op, http.StatusInternalServerError, "InternalServerError", err.Error())
		return
	}
	enc := make([]map[string]any, 0, len(items))
	for _, it := range items {
		e, err := encodeItem(project(it, proj))
		if err != nil {
			h.fail(w, op, http.StatusInternalServerError, "InternalServerError", err.Error())
			return
		}
		enc = append(enc, e)
	}
	out := map[string]any{"Items": enc, "Count": len(enc), "ScannedCount": len(enc)}
	if more && len(items) > 0 {
		last, ok := items[len(items)-1][t.HashKey()].(*types.AttributeValueMemberS)
		if ok {
			out["LastEvaluatedKey"] = map[string]any{t.HashKey(): map[string]string{"S": last.Value}}
		}
	}
	h.write(w, out)
}

// projection returns the attribute names a ProjectionExpression (top-level
// names, #placeholders resolved) or AttributesToGet selects (nil: all).
func projection(expr string, names map[string]string, attrs []string) ([]string, error) {
	if expr == "" {
		return attrs, nil
	}
	var out []string
	for _, p := range strings.Split(expr, ",") {
		p = strings.TrimSpace(p)
		if strings.HasPrefix(p, "#") {
			n, ok := names[p]
			if !ok {
				return nil, fmt.Errorf("ProjectionExpression: %s is not in ExpressionAttributeNames", p)
			}
			p = n
		}
		if p == "" || strings.ContainsAny(p, ".[") {
			return nil, fmt.Errorf("ProjectionExpression %q: only top-level attribute names are supported here", expr)
		}
		out = append(out, p)
	}
	return out, nil
}

func project(item map[string]types.AttributeValue, names []string) map[string]types.AttributeValue {
	if names == nil {
		return item
	}
	out := map[string]types.AttributeValue{}
	for _, n := range names {
		if v, ok := item[n]; ok {
			out[n] = v
		}
	}
	return out
}

// encodeItem renders an item in DynamoDB's JSON ({"S": …}, {"N": …}, …).
func encodeItem(item map[string]types.AttributeValue) (map[string]any, error) {
	out := make(map[string]any, len(item))
	for k, v := range item {
		e, err := encodeValue(v)
		if err != nil {
			return nil, fmt.Errorf("attribute %s: %w", k, err)
		}
		out[k] = e
	}
	return out, nil
}

func encodeValue(v types.AttributeValue) (any, error) {
	switch v := v.(type) {
	case *types.AttributeValueMemberS:
		return map[string]string{"S": v.Value}, nil
	case *types.AttributeValueMemberN:
		return map[string]string{"N": v.Value}, nil
	case *types.AttributeValueMemberBOOL:
		return map[string]bool{"BOOL": v.Value}, nil
	case *types.AttributeValueMemberNULL:
		return map[string]bool{"NULL": true}, nil
	case *types.AttributeValueMemberB:
		return map[string][]byte{"B": v.Value}, nil
	case *types.AttributeValueMemberSS:
		return map[string][]string{"SS": v.Value}, nil
	case *types.AttributeValueMemberNS:
		return map[string][]string{"NS": v.Value}, nil
	case *types.AttributeValueMemberL:
		l := make([]any, 0, len(v.Value))
		for _, e := range v.Value {
			x, err := encodeValue(e)
			if err != nil {
				return nil, err
			}
			l = append(l, x)
		}
		return map[string]any{"L": l}, nil
	case *types.AttributeValueMemberM:
		m, err := encodeItem(v.Value)
		if err != nil {
			return nil, err
		}
		return map[string]any{"M": m}, nil
	}
	return nil, errors.New("unsupported attribute value type")
}

func (h *Handler) write(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		h.fail(w, "", http.StatusInternalServerError, "InternalServerError", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	setCRC32(w, b)
	_, _ = w.Write(b)
}

// setCRC32 sets X-Amz-Crc32, the CRC32 of the body DynamoDB sends with
// every answer and the SDKs check (a missing one makes the AWS SDK for Go
// log a checksum mismatch on every call).
func setCRC32(w http.ResponseWriter, body []byte) {
	w.Header().Set("X-Amz-Crc32", strconv.FormatUint(uint64(crc32.ChecksumIEEE(body)), 10))
}

// fail answers in DynamoDB's error shape: {"__type": "com.amazonaws.dynamodb.v20120810#Code", "message": …}.
func (h *Handler) fail(w http.ResponseWriter, op string, status int, code, msg string) {
	h.log.Info("dynamodb call failed", "op", op, "code", code, "message", msg)
	b, _ := json.Marshal(map[string]string{"__type": "com.amazonaws.dynamodb.v20120810#" + code, "message": msg})
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	w.Header().Set("X-Amzn-ErrorType", code)
	setCRC32(w, b)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
