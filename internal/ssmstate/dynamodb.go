package ssmstate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// DynamoDBAPI is the part of the DynamoDB client the store uses;
// *dynamodb.Client implements it.
type DynamoDBAPI interface {
	GetItem(ctx context.Context, in *dynamodb.GetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error)
	UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error)
	Scan(ctx context.Context, in *dynamodb.ScanInput, optFns ...func(*dynamodb.Options)) (*dynamodb.ScanOutput, error)
}

// DynamoDB is the Store on the registry table. Every change is one
// conditional UpdateItem touching only the ssm* attributes; reads are
// strongly consistent.
type DynamoDB struct {
	client DynamoDBAPI
	table  string
	now    Clock
}

var _ Store = (*DynamoDB)(nil)

// NewDynamoDB returns the store on the registry table. now may be nil
// (time.Now).
func NewDynamoDB(client DynamoDBAPI, table string, now Clock) (*DynamoDB, error) {
	if client == nil {
		return nil, errors.New("ssmstate: nil DynamoDB client")
	}
	if table == "" {
		return nil, errors.New("ssmstate: empty table name")
	}
	return &DynamoDB{client: client, table: table, now: now}, nil
}

// attrNames maps every placeholder used in an expression to its attribute.
func attrNames(expr ...string) map[string]string {
	all := map[string]string{
		"#serial": registry.PartitionKey, "#st": AttrState, "#aid": AttrActivationID,
		"#exp": AttrActivationExpiry, "#iid": AttrInstanceID, "#rid": AttrRequestID, "#upd": AttrUpdatedAt,
	}
	joined := strings.Join(expr, " ")
	m := map[string]string{}
	for p, a := range all {
		if containsPlaceholder(joined, p) {
			m[p] = a
		}
	}
	return m
}

// attrValues keeps the values whose placeholder appears in the expressions
// (DynamoDB rejects unused ones).
func attrValues(vals map[string]types.AttributeValue, expr ...string) map[string]types.AttributeValue {
	joined := strings.Join(expr, " ")
	m := map[string]types.AttributeValue{}
	for p, v := range vals {
		if containsPlaceholder(joined, p) {
			m[p] = v
		}
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

func containsPlaceholder(expr, p string) bool {
	for i := strings.Index(expr, p); i >= 0; {
		end := i + len(p)
		if end == len(expr) || !isIdent(expr[end]) {
			return true
		}
		next := strings.Index(expr[end:], p)
		if next < 0 {
			return false
		}
		i = end + next
	}
	return false
}

func isIdent(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

func str(s string) types.AttributeValue { return &types.AttributeValueMemberS{Value: s} }

func (s *DynamoDB) key(serial string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{registry.PartitionKey: str(serial)}
}

var projection = strings.Join([]string{"#serial", "#st", "#aid", "#exp", "#iid", "#rid", "#upd"}, ", ")

// Get implements Store.
func (s *DynamoDB) Get(ctx context.Context, serial string) (Record, error) {
	if err := check(ctx, serial); err != nil {
		return Record{}, err
	}
	out, err := s.client.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:                aws.String(s.table),
		Key:                      s.key(serial),
		ConsistentRead:           aws.Bool(true),
		ProjectionExpression:     aws.String(projection),
		ExpressionAttributeNames: attrNames(projection),
	})
	if err != nil {
		return Record{}, fmt.Errorf("ssmstate: get %s: %w", serial, err)
	}
	if len(out.Item) == 0 {
		return Record{}, fmt.Errorf("%w: %s", ErrNotFound, serial)
	}
	return decode(out.Item)
}

// write runs one conditional UpdateItem and returns the record after it.
// On a failed condition it reads the record to tell ErrNotFound from
// ErrConflict.
func (s *DynamoDB) write(ctx context.Context, op, serial, set, remove, cond string, vals map[string]types.AttributeValue) (Record, error) {
	if err := check(ctx, serial); err != nil {
		return Record{}, err
	}
	vals[":now"] = str(stamp(s.now).Format(time.RFC3339))
	update := "SET " + set + ", #upd = :now"
	if remove != "" {
		update += " REMOVE " + remove
	}
	cond = "attribute_exists(#serial) AND (" + cond + ")"
	out, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.table),
		Key:                       s.key(serial),
		UpdateExpression:          aws.String(update),
		ConditionExpression:       aws.String(cond),
		ExpressionAttributeNames:  attrNames(update, cond),
		ExpressionAttributeValues: attrValues(vals, update, cond),
		ReturnValues:              types.ReturnValueAllNew,
	})
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		r, gerr := s.Get(ctx, serial)
		if gerr != nil {
			return Record{}, gerr
		}
		return Record{}, conflict(serial, r, op+" refused")
	}
	if err != nil {
		return Record{}, fmt.Errorf("ssmstate: %s %s: %w", op, serial, err)
	}
	return decode(out.Attributes)
}

// Reserve implements Store.
func (s *DynamoDB) Reserve(ctx context.Context, serial, requestID string) (Record, error) {
	if err := checkID("request id", requestID); err != nil {
		return Record{}, err
	}
	return s.write(ctx, "reserve", serial,
		"#st = :activating, #rid = :rid", "#aid, #exp, #iid",
		"attribute_not_exists(#st) OR #st = :inactive",
		map[string]types.AttributeValue{
			":activating": str(string(StateActivating)), ":inactive": str(string(StateInactive)), ":rid": str(requestID),
		})
}

// SetActivation implements Store.
func (s *DynamoDB) SetActivation(ctx context.Context, serial, requestID, activationID string, expiry time.Time) (Record, error) {
	if err := checkID("request id", requestID); err != nil {
		return Record{}, err
	}
	if err := checkID("activation id", activationID); err != nil {
		return Record{}, err
	}
	return s.write(ctx, "set activation", serial,
		"#aid = :aid, #exp = :exp", "",
		"#st = :activating AND #rid = :rid",
		map[string]types.AttributeValue{
			":activating": str(string(StateActivating)), ":rid": str(requestID), ":aid": str(activationID),
			":exp": str(expiry.UTC().Truncate(time.Second).Format(time.RFC3339)),
		})
}

// MarkActive implements Store.
func (s *DynamoDB) MarkActive(ctx context.Context, serial, activationID, instanceID string) (Record, error) {
	if err := checkID("activation id", activationID); err != nil {
		return Record{}, err
	}
	if err := checkID("instance id", instanceID); err != nil {
		return Record{}, err
	}
	return s.write(ctx, "mark active", serial,
		"#st = :active, #iid = :iid", "",
		"#aid = :aid AND (#st = :activating OR (#st = :active AND #iid = :iid))",
		map[string]types.AttributeValue{
			":active": str(string(StateActive)), ":activating": str(string(StateActivating)),
			":aid": str(activationID), ":iid": str(instanceID),
		})
}

// BeginDeactivation implements Store.
func (s *DynamoDB) BeginDeactivation(ctx context.Context, serial, requestID string) (Record, error) {
	if err := checkID("request id", requestID); err != nil {
		return Record{}, err
	}
	return s.write(ctx, "begin deactivation", serial,
		"#st = :deactivating, #rid = :rid", "",
		"attribute_exists(#serial)",
		map[string]types.AttributeValue{":deactivating": str(string(StateDeactivating)), ":rid": str(requestID)})
}

// Clear implements Store.
func (s *DynamoDB) Clear(ctx context.Context, serial string, guard Guard) error {
	cond := "attribute_exists(#serial)"
	vals := map[string]types.AttributeValue{":inactive": str(string(StateInactive))}
	if guard.RequestID != "" {
		cond += " AND #rid = :grid"
		vals[":grid"] = str(guard.RequestID)
	}
	if guard.ActivationID != "" {
		cond += " AND #aid = :gaid"
		vals[":gaid"] = str(guard.ActivationID)
	}
	if guard.State != "" {
		if guard.State == StateInactive {
			cond += " AND (attribute_not_exists(#st) OR #st = :inactive)"
		} else {
			cond += " AND #st = :gst"
			vals[":gst"] = str(string(guard.State))
		}
	}
	_, err := s.write(ctx, "clear", serial, "#st = :inactive", "#aid, #exp, #iid, #rid", cond, vals)
	return err
}

// ScanPending implements Store. The cursor is the serial of the last item
// DynamoDB examined.
func (s *DynamoDB) ScanPending(ctx context.Context, cursor string, limit int) (Page, error) {
	if err := ctx.Err(); err != nil {
		return Page{}, err
	}
	if limit <= 0 {
		limit = DefaultPageSize
	}
	filter := "#st IN (:activating, :deactivating)"
	in := &dynamodb.ScanInput{
		TableName:                aws.String(s.table),
		Limit:                    aws.Int32(int32(min(limit, 1<<30))),
		ConsistentRead:           aws.Bool(true),
		FilterExpression:         aws.String(filter),
		ProjectionExpression:     aws.String(projection),
		ExpressionAttributeNames: attrNames(filter, projection),
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":activating": str(string(StateActivating)), ":deactivating": str(string(StateDeactivating)),
		},
	}
	if cursor != "" {
		in.ExclusiveStartKey = s.key(cursor)
	}
	out, err := s.client.Scan(ctx, in)
	if err != nil {
		return Page{}, fmt.Errorf("ssmstate: scan %s: %w", s.table, err)
	}
	page := Page{Records: make([]Record, 0, len(out.Items))}
	for _, item := range out.Items {
		r, err := decode(item)
		if err != nil {
			return Page{}, err
		}
		page.Records = append(page.Records, r)
	}
	if len(out.LastEvaluatedKey) > 0 {
		k, ok := out.LastEvaluatedKey[registry.PartitionKey].(*types.AttributeValueMemberS)
		if !ok || k.Value == "" {
			return Page{}, fmt.Errorf("ssmstate: scan %s: unexpected LastEvaluatedKey", s.table)
		}
		page.Next = k.Value
	}
	return page, nil
}

func decode(item map[string]types.AttributeValue) (Record, error) {
	get := func(name string) string {
		if v, ok := item[name].(*types.AttributeValueMemberS); ok {
			return v.Value
		}
		return ""
	}
	r := Record{
		Serial:       get(registry.PartitionKey),
		State:        State(get(AttrState)),
		RequestID:    get(AttrRequestID),
		ActivationID: get(AttrActivationID),
		InstanceID:   get(AttrInstanceID),
	}
	if r.Serial == "" {
		return Record{}, errors.New("ssmstate: decode record: no serial")
	}
	if r.State == "" {
		r.State = StateInactive
	}
	if !r.State.Valid() {
		return Record{}, fmt.Errorf("ssmstate: record %s: unknown %s %q", r.Serial, AttrState, r.State)
	}
	for _, f := range []struct {
		name string
		dst  *time.Time
	}{{AttrActivationExpiry, &r.ActivationExpiry}, {AttrUpdatedAt, &r.UpdatedAt}} {
		if v := get(f.name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return Record{}, fmt.Errorf("ssmstate: record %s: %s: %w", r.Serial, f.name, err)
			}
			*f.dst = t.UTC()
		}
	}
	return r, nil
}
