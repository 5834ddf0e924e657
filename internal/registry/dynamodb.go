package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// DynamoDBAPI is the part of the aws-sdk-go-v2 DynamoDB client the registry
// uses; *dynamodb.Client implements it.
type DynamoDBAPI interface {
	GetItem(ctx context.Context, in *dynamodb.GetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error)
	UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error)
	Scan(ctx context.Context, in *dynamodb.ScanInput, optFns ...func(*dynamodb.Options)) (*dynamodb.ScanOutput, error)
	Query(ctx context.Context, in *dynamodb.QueryInput, optFns ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error)
}

// DynamoDB is the Store backed by the registry table (partition key
// PartitionKey, type S). Every change is one conditional UpdateItem; reads
// are strongly consistent so the hook sees the sync's latest write.
type DynamoDB struct {
	client DynamoDBAPI
	table  string
	opts   options
}

var _ Store = (*DynamoDB)(nil)

// NewDynamoDB returns the registry stored in table.
func NewDynamoDB(client DynamoDBAPI, table string, opts ...Option) (*DynamoDB, error) {
	if client == nil {
		return nil, errors.New("registry: nil DynamoDB client")
	}
	if table == "" {
		return nil, errors.New("registry: empty table name")
	}
	return &DynamoDB{client: client, table: table, opts: buildOptions(opts)}, nil
}

// names maps the expression attribute placeholders an expression uses to
// the attribute names (DynamoDB rejects unused placeholders).
func names(placeholders ...string) map[string]string {
	m := make(map[string]string, len(placeholders))
	for _, p := range placeholders {
		switch p {
		case "#serial":
			m[p] = PartitionKey
		case "#state":
			m[p] = AttrState
		case "#thing":
			m[p] = AttrThingName
		case "#cert":
			m[p] = AttrCertificateID
		case "#createdAt":
			m[p] = AttrCreatedAt
		case "#updatedAt":
			m[p] = AttrUpdatedAt
		case "#notAfter":
			m[p] = AttrCertNotAfter
		case "#expiry":
			m[p] = AttrExpiryPartition
		case "#rotId":
			m[p] = AttrRotationID
		case "#rotState":
			m[p] = AttrRotationState
		case "#rotAt":
			m[p] = AttrRotationRequestedAt
		case "#rotCert":
			m[p] = AttrRotationCertID
		case "#rotNotAfter":
			m[p] = AttrRotationCertNotAfter
		case "#lastRot":
			m[p] = AttrLastRotationID
		case "#lastStatus":
			m[p] = AttrLastRotationStatus
		case "#retired":
			m[p] = AttrRetiredCertificateID
		default:
			panic("registry: unknown placeholder " + p)
		}
	}
	return m
}

func str(s string) types.AttributeValue { return &types.AttributeValueMemberS{Value: s} }

func (s *DynamoDB) key(serial string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{PartitionKey: str(serial)}
}

func (s *DynamoDB) now() types.AttributeValue {
	return str(s.opts.stamp().Format(time.RFC3339))
}

// Get implements Store.
func (s *DynamoDB) Get(ctx context.Context, serial string) (Device, error) {
	if err := check(ctx, serial); err != nil {
		return Device{}, err
	}
	out, err := s.client.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:      s.tableName(),
		Key:            s.key(serial),
		ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return Device{}, fmt.Errorf("registry: get %s: %w", serial, err)
	}
	if len(out.Item) == 0 {
		return Device{}, fmt.Errorf("%w: %s", ErrNotFound, serial)
	}
	return decode(out.Item)
}

// PutAllowed implements Store.
func (s *DynamoDB) PutAllowed(ctx context.Context, serial string) error {
	if err := check(ctx, serial); err != nil {
		return err
	}
	_, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                s.tableName(),
		Key:                      s.key(serial),
		UpdateExpression:         aws.String("SET #state = :allowed, #updatedAt = :now, #createdAt = if_not_exists(#createdAt, :now) REMOVE #cert, #thing, #notAfter, #expiry, " + removeRotation),
		ConditionExpression:      aws.String("attribute_not_exists(#serial) OR #state = :revoked"),
		ExpressionAttributeNames: names("#serial", "#state", "#updatedAt", "#createdAt", "#cert", "#thing", "#notAfter", "#expiry", "#rotId", "#rotState", "#rotAt", "#rotCert", "#rotNotAfter"),
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":allowed": str(string(StateAllowed)),
			":revoked": str(string(StateRevoked)),
			":now":     s.now(),
		},
	})
	if isConditionFailed(err) {
		// The record exists and is allowed or provisioned: already admitted.
		return nil
	}
	if err != nil {
		return fmt.Errorf("registry: put %s allowed: %w", serial, err)
	}
	return nil
}

// MarkProvisioned implements Store: RecordProvisioned with an unknown
// expiry.
func (s *DynamoDB) MarkProvisioned(ctx context.Context, serial, certificateID, thingName string) (Device, error) {
	return s.RecordProvisioned(ctx, serial, thingName, Certificate{ID: certificateID})
}

// RecordProvisioned implements Store.
func (s *DynamoDB) RecordProvisioned(ctx context.Context, serial, thingName string, cert Certificate) (Device, error) {
	if err := check(ctx, serial); err != nil {
		return Device{}, err
	}
	if cert.ID == "" {
		return Device{}, fmt.Errorf("registry: mark %s provisioned: empty certificate id", serial)
	}
	update := "SET #state = :provisioned, #cert = :cert, #updatedAt = :now"
	remove := ""
	nameKeys := []string{"#serial", "#state", "#cert", "#updatedAt", "#notAfter", "#expiry"}
	values := map[string]types.AttributeValue{
		":provisioned": str(string(StateProvisioned)),
		":allowed":     str(string(StateAllowed)),
		":cert":        str(cert.ID),
		":now":         s.now(),
	}
	if cert.NotAfter.IsZero() {
		remove = " REMOVE #notAfter, #expiry"
	} else {
		update += ", #notAfter = :notAfter, #expiry = :expiry"
		values[":notAfter"] = str(FormatTime(cert.NotAfter))
		values[":expiry"] = str(ExpiryPartitionValue)
	}
	if thingName != "" {
		update += ", #thing = :thing"
		nameKeys = append(nameKeys, "#thing")
		values[":thing"] = str(thingName)
	}
	d, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
		UpdateExpression:          aws.String(update + remove),
		ConditionExpression:       aws.String("attribute_exists(#serial) AND (#state = :allowed OR #state = :provisioned)"),
		ExpressionAttributeNames:  names(nameKeys...),
		ExpressionAttributeValues: values,
	}, fmt.Sprintf("registry: mark %s provisioned", serial))
	if err != nil || applied {
		return d, err
	}
	d, err = s.Get(ctx, serial)
	if err != nil {
		return Device{}, err
	}
	return Device{}, fmt.Errorf("%w: %s is %s", ErrConflict, serial, d.State)
}

// MarkRevoked implements Store.
func (s *DynamoDB) MarkRevoked(ctx context.Context, serial, expectedCertificateID string) error {
	if err := check(ctx, serial); err != nil {
		return err
	}
	cond := "attribute_exists(#serial) AND #state <> :revoked AND "
	values := map[string]types.AttributeValue{
		":revoked": str(string(StateRevoked)),
		":now":     s.now(),
	}
	if expectedCertificateID == "" {
		cond += "attribute_not_exists(#cert)"
	} else {
		cond += "#cert = :cert"
		values[":cert"] = str(expectedCertificateID)
	}
	_, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 s.tableName(),
		Key:                       s.key(serial),
		UpdateExpression:          aws.String("SET #state = :revoked, #updatedAt = :now REMOVE #expiry"),
		ConditionExpression:       aws.String(cond),
		ExpressionAttributeNames:  names("#serial", "#state", "#cert", "#updatedAt", "#expiry"),
		ExpressionAttributeValues: values,
	})
	if isConditionFailed(err) {
		d, gerr := s.Get(ctx, serial)
		if gerr != nil {
			return gerr
		}
		if d.State == StateRevoked {
			return nil
		}
		return fmt.Errorf("%w: %s has certificate %q, expected %q", ErrConflict, serial, d.CertificateID, expectedCertificateID)
	}
	if err != nil {
		return fmt.Errorf("registry: mark %s revoked: %w", serial, err)
	}
	return nil
}

// Scan implements Store. The cursor is the serial of the last record
// DynamoDB evaluated (the table's LastEvaluatedKey).
func (s *DynamoDB) Scan(ctx context.Context, cursor string, limit int) (Page, error) {
	limit, err := pageSize(ctx, limit)
	if err != nil {
		return Page{}, err
	}
	in := &dynamodb.ScanInput{
		TableName:      s.tableName(),
		Limit:          aws.Int32(int32(min(limit, 1<<30))),
		ConsistentRead: aws.Bool(true),
	}
	if cursor != "" {
		in.ExclusiveStartKey = s.key(cursor)
	}
	out, err := s.client.Scan(ctx, in)
	if err != nil {
		return Page{}, fmt.Errorf("registry: scan %s: %w", s.table, err)
	}
	devices, err := decodeAll(out.Items)
	if err != nil {
		return Page{}, err
	}
	page := Page{Devices: devices}
	if len(out.LastEvaluatedKey) > 0 {
		k, ok := out.LastEvaluatedKey[PartitionKey].(*types.AttributeValueMemberS)
		if !ok || k.Value == "" {
			return Page{}, fmt.Errorf("registry: scan %s: unexpected LastEvaluatedKey", s.table)
		}
		page.Next = k.Value
	}
	return page, nil
}

func (s *DynamoDB) tableName() *string { return aws.String(s.table) }

func decode(item map[string]types.AttributeValue) (Device, error) {
	var d Device
	if err := attributevalue.UnmarshalMap(item, &d); err != nil {
		return Device{}, fmt.Errorf("registry: decode record: %w", err)
	}
	if d.Serial == "" {
		return Device{}, errors.New("registry: decode record: no serial")
	}
	if !d.State.Valid() {
		return Device{}, fmt.Errorf("registry: record %s: unknown state %q", d.Serial, d.State)
	}
	return d, nil
}

// decodeAll decodes the records of a Scan or Query page.
func decodeAll(items []map[string]types.AttributeValue) ([]Device, error) {
	devices := make([]Device, 0, len(items))
	for _, item := range items {
		d, err := decode(item)
		if err != nil {
			return nil, err
		}
		devices = append(devices, d)
	}
	return devices, nil
}

// update runs the conditional update in on serial's record (filling in the
// table, key and ReturnValues ALL_NEW) and returns the record as it is
// after it. applied is false, with no error, when the condition failed;
// any other error of the call is wrapped with op.
func (s *DynamoDB) update(ctx context.Context, serial string, in *dynamodb.UpdateItemInput, op string) (d Device, applied bool, err error) {
	in.TableName = s.tableName()
	in.Key = s.key(serial)
	in.ReturnValues = types.ReturnValueAllNew
	out, err := s.client.UpdateItem(ctx, in)
	if isConditionFailed(err) {
		return Device{}, false, nil
	}
	if err != nil {
		return Device{}, false, fmt.Errorf("%s: %w", op, err)
	}
	d, err = decode(out.Attributes)
	return d, err == nil, err
}

func isConditionFailed(err error) bool {
	var ccf *types.ConditionalCheckFailedException
	return errors.As(err, &ccf)
}
