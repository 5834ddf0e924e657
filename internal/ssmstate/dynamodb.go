package ssmstate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
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

func str(s string) types.AttributeValue { return &types.AttributeValueMemberS{Value: s} }

func (s *DynamoDB) key(serial string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{registry.PartitionKey: str(serial)}
}

// projection reads the serial and the ssm* attributes.
func projection() expression.ProjectionBuilder {
	return expression.NamesList(expression.Name(registry.PartitionKey),
		expression.Name(AttrState), expression.Name(AttrActivationID), expression.Name(AttrActivationExpiry),
		expression.Name(AttrInstanceID), expression.Name(AttrRequestID), expression.Name(AttrUpdatedAt))
}

// is is the condition that attribute attr equals v.
func is(attr string, v string) expression.ConditionBuilder {
	return expression.Name(attr).Equal(expression.Value(v))
}

// set adds SET attr = v to u.
func set(u expression.UpdateBuilder, attr, v string) expression.UpdateBuilder {
	return u.Set(expression.Name(attr), expression.Value(v))
}

// remove adds REMOVE of attrs to u.
func remove(u expression.UpdateBuilder, attrs ...string) expression.UpdateBuilder {
	for _, a := range attrs {
		u = u.Remove(expression.Name(a))
	}
	return u
}

// exists is the condition that the record exists.
func exists() expression.ConditionBuilder {
	return expression.AttributeExists(expression.Name(registry.PartitionKey))
}

// Get implements Store.
func (s *DynamoDB) Get(ctx context.Context, serial string) (Record, error) {
	if err := check(ctx, serial); err != nil {
		return Record{}, err
	}
	expr, err := expression.NewBuilder().WithProjection(projection()).Build()
	if err != nil {
		return Record{}, fmt.Errorf("ssmstate: get %s: build expression: %w", serial, err)
	}
	out, err := s.client.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:                aws.String(s.table),
		Key:                      s.key(serial),
		ConsistentRead:           aws.Bool(true),
		ProjectionExpression:     expr.Projection(),
		ExpressionAttributeNames: expr.Names(),
	})
	if err != nil {
		return Record{}, fmt.Errorf("ssmstate: get %s: %w", serial, err)
	}
	if len(out.Item) == 0 {
		return Record{}, fmt.Errorf("%w: %s", ErrNotFound, serial)
	}
	return decode(out.Item)
}

// write runs one conditional UpdateItem (u, plus the SET of the update
// time; condition: the record exists and every one of conds) and returns
// the record after it. On a failed condition it reads the record to tell
// ErrNotFound from ErrConflict.
//
// The conditions are joined in one flat AND: the builder wraps every
// operand in parentheses, and dynalite's backtracking parser (tests)
// takes time exponential in their depth.
func (s *DynamoDB) write(ctx context.Context, op, serial string, u expression.UpdateBuilder, conds ...expression.ConditionBuilder) (Record, error) {
	if err := check(ctx, serial); err != nil {
		return Record{}, err
	}
	u = set(u, AttrUpdatedAt, stamp(s.now).Format(time.RFC3339))
	cond := exists()
	if len(conds) > 0 {
		cond = expression.And(cond, conds[0], conds[1:]...)
	}
	expr, err := expression.NewBuilder().WithUpdate(u).WithCondition(cond).Build()
	if err != nil {
		return Record{}, fmt.Errorf("ssmstate: %s %s: build expression: %w", op, serial, err)
	}
	out, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.table),
		Key:                       s.key(serial),
		UpdateExpression:          expr.Update(),
		ConditionExpression:       expr.Condition(),
		ExpressionAttributeNames:  expr.Names(),
		ExpressionAttributeValues: expr.Values(),
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
	u := set(expression.UpdateBuilder{}, AttrState, string(StateActivating))
	u = set(u, AttrRequestID, requestID)
	u = remove(u, AttrActivationID, AttrActivationExpiry, AttrInstanceID)
	return s.write(ctx, "reserve", serial, u,
		expression.AttributeNotExists(expression.Name(AttrState)).Or(is(AttrState, string(StateInactive))))
}

// SetActivation implements Store.
func (s *DynamoDB) SetActivation(ctx context.Context, serial, requestID, activationID string, expiry time.Time) (Record, error) {
	if err := checkID("request id", requestID); err != nil {
		return Record{}, err
	}
	if err := checkID("activation id", activationID); err != nil {
		return Record{}, err
	}
	u := set(expression.UpdateBuilder{}, AttrActivationID, activationID)
	u = set(u, AttrActivationExpiry, expiry.UTC().Truncate(time.Second).Format(time.RFC3339))
	return s.write(ctx, "set activation", serial, u, is(AttrState, string(StateActivating)), is(AttrRequestID, requestID))
}

// MarkActive implements Store.
func (s *DynamoDB) MarkActive(ctx context.Context, serial, activationID, instanceID string) (Record, error) {
	if err := checkID("activation id", activationID); err != nil {
		return Record{}, err
	}
	if err := checkID("instance id", instanceID); err != nil {
		return Record{}, err
	}
	u := set(expression.UpdateBuilder{}, AttrState, string(StateActive))
	u = set(u, AttrInstanceID, instanceID)
	return s.write(ctx, "mark active", serial, u,
		is(AttrActivationID, activationID),
		expression.Or(
			is(AttrState, string(StateActivating)),
			is(AttrState, string(StateActive)).And(is(AttrInstanceID, instanceID)),
		))
}

// BeginDeactivation implements Store.
func (s *DynamoDB) BeginDeactivation(ctx context.Context, serial, requestID string) (Record, error) {
	if err := checkID("request id", requestID); err != nil {
		return Record{}, err
	}
	u := set(expression.UpdateBuilder{}, AttrState, string(StateDeactivating))
	u = set(u, AttrRequestID, requestID)
	return s.write(ctx, "begin deactivation", serial, u)
}

// Clear implements Store.
func (s *DynamoDB) Clear(ctx context.Context, serial string, guard Guard) error {
	var conds []expression.ConditionBuilder
	if guard.RequestID != "" {
		conds = append(conds, is(AttrRequestID, guard.RequestID))
	}
	if guard.ActivationID != "" {
		conds = append(conds, is(AttrActivationID, guard.ActivationID))
	}
	switch guard.State {
	case "": // any state
	case StateInactive:
		conds = append(conds, expression.AttributeNotExists(expression.Name(AttrState)).Or(is(AttrState, string(StateInactive))))
	default:
		conds = append(conds, is(AttrState, string(guard.State)))
	}
	u := set(expression.UpdateBuilder{}, AttrState, string(StateInactive))
	u = remove(u, AttrActivationID, AttrActivationExpiry, AttrInstanceID, AttrRequestID)
	_, err := s.write(ctx, "clear", serial, u, conds...)
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
	filter := expression.Name(AttrState).In(expression.Value(string(StateActivating)), expression.Value(string(StateDeactivating)))
	expr, err := expression.NewBuilder().WithFilter(filter).WithProjection(projection()).Build()
	if err != nil {
		return Page{}, fmt.Errorf("ssmstate: scan %s: build expression: %w", s.table, err)
	}
	in := &dynamodb.ScanInput{
		TableName:                 aws.String(s.table),
		Limit:                     aws.Int32(int32(min(limit, 1<<30))),
		ConsistentRead:            aws.Bool(true),
		FilterExpression:          expr.Filter(),
		ProjectionExpression:      expr.Projection(),
		ExpressionAttributeNames:  expr.Names(),
		ExpressionAttributeValues: expr.Values(),
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
