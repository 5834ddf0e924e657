package dynamodbapi

import (
	"context"
	"encoding/json"
	"hash/crc32"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// table is a sorted in-memory table.
type table map[string]map[string]types.AttributeValue

func (table) HashKey() string { return "serial" }

func (t table) Item(_ context.Context, key string) (map[string]types.AttributeValue, bool, error) {
	it, ok := t[key]
	return it, ok, nil
}

func (t table) Scan(_ context.Context, start string, limit int) ([]map[string]types.AttributeValue, bool, error) {
	var keys []string
	for k := range t {
		if k > start {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []map[string]types.AttributeValue
	for _, k := range keys[:min(limit, len(keys))] {
		out = append(out, t[k])
	}
	return out, len(keys) > limit, nil
}

func call(t *testing.T, h http.Handler, op, body string) (int, map[string]any) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	r.Header.Set("X-Amz-Target", TargetPrefix+op)
	require.True(t, Owns(r))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	// Every answer carries the CRC32 of its body, as DynamoDB's do (the
	// SDKs check it).
	assert.Equal(t, strconv.FormatUint(uint64(crc32.ChecksumIEEE(w.Body.Bytes())), 10), w.Header().Get("X-Amz-Crc32"))
	var out map[string]any
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &out), w.Body.String())
	return w.Code, out
}

func TestGetItemScanAndRefusals(t *testing.T) {
	s := func(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
	tbl := table{
		"a": {"serial": s("a"), "state": s("allowed"), "history": &types.AttributeValueMemberL{Value: []types.AttributeValue{
			&types.AttributeValueMemberM{Value: map[string]types.AttributeValue{"n": &types.AttributeValueMemberN{Value: "1"}}}}}},
		"b": {"serial": s("b"), "state": s("provisioned")},
		"c": {"serial": s("c"), "state": s("revoked")},
	}
	h := New(map[string]Table{"reg": tbl}, nil)

	code, out := call(t, h, "GetItem", `{"TableName":"reg","Key":{"serial":{"S":"a"}}}`)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, map[string]any{"serial": map[string]any{"S": "a"}, "state": map[string]any{"S": "allowed"},
		"history": map[string]any{"L": []any{map[string]any{"M": map[string]any{"n": map[string]any{"N": "1"}}}}}}, out["Item"])
	code, out = call(t, h, "GetItem", `{"TableName":"reg","Key":{"serial":{"S":"a"}},"ProjectionExpression":"#s, serial","ExpressionAttributeNames":{"#s":"state"}}`)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, map[string]any{"serial": map[string]any{"S": "a"}, "state": map[string]any{"S": "allowed"}}, out["Item"])
	code, out = call(t, h, "GetItem", `{"TableName":"reg","Key":{"serial":{"S":"zzz"}}}`)
	require.Equal(t, http.StatusOK, code)
	assert.NotContains(t, out, "Item", "a missing item: no Item")

	// Scan pages with Limit and LastEvaluatedKey.
	code, out = call(t, h, "Scan", `{"TableName":"reg","Limit":2}`)
	require.Equal(t, http.StatusOK, code)
	assert.Len(t, out["Items"], 2)
	assert.Equal(t, map[string]any{"serial": map[string]any{"S": "b"}}, out["LastEvaluatedKey"])
	code, out = call(t, h, "Scan", `{"TableName":"reg","Limit":2,"ExclusiveStartKey":{"serial":{"S":"b"}}}`)
	require.Equal(t, http.StatusOK, code)
	assert.Len(t, out["Items"], 1)
	assert.NotContains(t, out, "LastEvaluatedKey")

	for op, body := range map[string]string{
		"PutItem":    `{"TableName":"reg","Item":{"serial":{"S":"x"}}}`,
		"Query":      `{"TableName":"reg"}`,
		"Scan":       `{"TableName":"reg","FilterExpression":"#s = :v"}`,
		"GetItem":    `{"TableName":"other","Key":{"serial":{"S":"a"}}}`,
		"DeleteItem": `{"TableName":"reg","Key":{"serial":{"S":"a"}}}`,
	} {
		code, out := call(t, h, op, body)
		assert.Equal(t, http.StatusBadRequest, code, op)
		assert.NotEmpty(t, out["message"], op)
		assert.Contains(t, out["__type"], "com.amazonaws.dynamodb.v20120810#", op)
		t.Logf("%s: %v", op, out)
	}
	code, out = call(t, h, "PutItem", `{}`)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Equal(t, "com.amazonaws.dynamodb.v20120810#AccessDeniedException", out["__type"])
}
