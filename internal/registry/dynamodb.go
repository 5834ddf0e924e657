package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
		case "#key":
			m[p] = AttrPublicKeySHA256
		case "#hist":
			m[p] = AttrCertificateHistory
		case "#tok":
			m[p] = AttrReadmitToken
		case "#by":
			m[p] = AttrReadmittedBy
		case "#at":
			m[p] = AttrReadmittedAt
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
		UpdateExpression:         aws.String("SET #state = :allowed, #updatedAt = :now, #createdAt = if_not_exists(#createdAt, :now) REMOVE #cert, #thing, #notAfter, #expiry, #key, " + removeRotation),
		ConditionExpression:      aws.String("attribute_not_exists(#serial) OR #state = :revoked"),
		ExpressionAttributeNames: names("#serial", "#state", "#updatedAt", "#createdAt", "#cert", "#thing", "#notAfter", "#expiry", "#key", "#rotId", "#rotState", "#rotAt", "#rotCert", "#rotNotAfter"),
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
	var removes []string
	nameKeys := []string{"#serial", "#state", "#cert", "#updatedAt", "#notAfter", "#expiry", "#key"}
	values := map[string]types.AttributeValue{
		":provisioned": str(string(StateProvisioned)),
		":allowed":     str(string(StateAllowed)),
		":cert":        str(cert.ID),
		":now":         s.now(),
	}
	update, removes = certificateUpdate(update, removes, cert, values)
	if thingName != "" {
		update += ", #thing = :thing"
		nameKeys = append(nameKeys, "#thing")
		values[":thing"] = str(thingName)
	}
	d, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
		UpdateExpression:          aws.String(update + removeClause(removes)),
		ConditionExpression:       aws.String("attribute_exists(#serial) AND (#state = :allowed OR (#state = :provisioned AND #cert = :cert))"),
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
	return Device{}, fmt.Errorf("%w: %s is %s with certificate %q", ErrConflict, serial, d.State, d.CertificateID)
}

// certificateUpdate adds cert's expiry (and the expiry index key) and
// public key hash to a SET clause, or the attributes to remove when they
// are unknown, with their values (placeholders #notAfter, #expiry, #key).
func certificateUpdate(update string, removes []string, cert Certificate, values map[string]types.AttributeValue) (string, []string) {
	if cert.NotAfter.IsZero() {
		removes = append(removes, "#notAfter", "#expiry")
	} else {
		update += ", #notAfter = :notAfter, #expiry = :expiry"
		values[":notAfter"] = str(FormatTime(cert.NotAfter))
		values[":expiry"] = str(ExpiryPartitionValue)
	}
	if cert.PublicKeySHA256 == "" {
		removes = append(removes, "#key")
	} else {
		update += ", #key = :key"
		values[":key"] = str(cert.PublicKeySHA256)
	}
	return update, removes
}

func removeClause(removes []string) string {
	if len(removes) == 0 {
		return ""
	}
	return " REMOVE " + strings.Join(removes, ", ")
}

// history encodes a certificate history as the table stores it: a list
// of maps with RFC 3339 times.
func history(h []RetiredCertificate) (types.AttributeValue, error) {
	av, err := attributevalue.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("registry: encode certificate history: %w", err)
	}
	return av, nil
}

// certGuard is the condition that the record's certificate id is id
// (none when id is empty), with its value.
func certGuard(id string, values map[string]types.AttributeValue) string {
	if id == "" {
		return "attribute_not_exists(#cert)"
	}
	values[":expectedCert"] = str(id)
	return "#cert = :expectedCert"
}

// retries bounds the read-modify-write rounds of a method whose
// conditional write can lose a race with another writer.
const retries = 3

// MarkRevoking implements Store.
func (s *DynamoDB) MarkRevoking(ctx context.Context, serial, expectedCertificateID string) (Device, error) {
	if err := check(ctx, serial); err != nil {
		return Device{}, err
	}
	values := map[string]types.AttributeValue{
		":allowed":     str(string(StateAllowed)),
		":provisioned": str(string(StateProvisioned)),
		":readmitted":  str(string(StateReadmitted)),
		":revoking":    str(string(StateRevoking)),
		":now":         s.now(),
	}
	cond := "attribute_exists(#serial) AND #state IN (:allowed, :provisioned, :readmitted) AND " + certGuard(expectedCertificateID, values)
	d, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
		UpdateExpression:          aws.String("SET #state = :revoking, #updatedAt = :now"),
		ConditionExpression:       aws.String(cond),
		ExpressionAttributeNames:  names("#serial", "#state", "#cert", "#updatedAt"),
		ExpressionAttributeValues: values,
	}, fmt.Sprintf("registry: mark %s revoking", serial))
	if err != nil || applied {
		return d, err
	}
	d, err = s.Get(ctx, serial)
	if err != nil {
		return Device{}, err
	}
	if d.State == StateRevoking && d.CertificateID == expectedCertificateID {
		return d, nil
	}
	return Device{}, fmt.Errorf("%w: %s is %s with certificate %q, expected %q", ErrConflict, serial, d.State, d.CertificateID, expectedCertificateID)
}

// ReplaceCertificate implements Store. It reads the record, then writes
// the new certificate and the extended history with a condition on the
// state and certificate it read.
func (s *DynamoDB) ReplaceCertificate(ctx context.Context, serial, thingName string, cert Certificate, retired RetiredCertificate) (Device, error) {
	if err := checkReplace(ctx, serial, cert, retired); err != nil {
		return Device{}, err
	}
	op := fmt.Sprintf("registry: replace certificate of %s", serial)
	for range retries {
		d, err := s.Get(ctx, serial)
		if err != nil {
			return Device{}, err
		}
		if d.State == StateProvisioned && d.CertificateID == cert.ID {
			return d, nil
		}
		if (d.State != StateProvisioned && d.State != StateReadmitted) || d.CertificateID != retired.CertificateID {
			return Device{}, fmt.Errorf("%w: %s is %s with certificate %q, not provisioned or readmitted with %q", ErrConflict, serial, d.State, d.CertificateID, retired.CertificateID)
		}
		now := s.opts.stamp()
		retired.RetiredAt = now
		hist, err := history(appendHistory(d.CertificateHistory, retired))
		if err != nil {
			return Device{}, err
		}
		values := map[string]types.AttributeValue{
			":cur":         str(string(d.State)),
			":old":         str(retired.CertificateID),
			":provisioned": str(string(StateProvisioned)),
			":cert":        str(cert.ID),
			":hist":        hist,
			":now":         str(FormatTime(now)),
		}
		nameKeys := []string{"#state", "#cert", "#hist", "#updatedAt", "#notAfter", "#expiry", "#key", "#rotId", "#rotState", "#rotAt", "#rotCert", "#rotNotAfter"}
		update, removes := certificateUpdate("SET #state = :provisioned, #cert = :cert, #hist = :hist, #updatedAt = :now", []string{removeRotation}, cert, values)
		if thingName != "" {
			update += ", #thing = :thing"
			nameKeys = append(nameKeys, "#thing")
			values[":thing"] = str(thingName)
		}
		d, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
			UpdateExpression:          aws.String(update + removeClause(removes)),
			ConditionExpression:       aws.String("#state = :cur AND #cert = :old"),
			ExpressionAttributeNames:  names(nameKeys...),
			ExpressionAttributeValues: values,
		}, op)
		if err != nil || applied {
			return d, err
		}
	}
	return Device{}, fmt.Errorf("%w: %s: record changed concurrently", ErrConflict, serial)
}

// Readmit implements Store.
func (s *DynamoDB) Readmit(ctx context.Context, serial, token, by string) (Device, bool, error) {
	if err := checkReadmit(ctx, serial, token); err != nil {
		return Device{}, false, err
	}
	op := fmt.Sprintf("registry: re-admit %s", serial)
	for range retries {
		d, err := s.Get(ctx, serial)
		if err != nil {
			return Device{}, false, err
		}
		if !d.State.Admitted() {
			return Device{}, false, fmt.Errorf("%w: %s is %s; list it on the allowlist again before re-admitting it", ErrConflict, serial, d.State)
		}
		if d.ReadmitToken == token {
			return d, false, nil
		}
		values := map[string]types.AttributeValue{
			":cur": str(string(d.State)),
			":new": str(string(readmittedState(d.State))),
			":tok": str(token),
			":now": s.now(),
		}
		update := "SET #state = :new, #tok = :tok, #at = :now, #updatedAt = :now"
		nameKeys := []string{"#state", "#tok", "#at", "#updatedAt", "#by"}
		remove := " REMOVE #by"
		if by != "" {
			update += ", #by = :by"
			values[":by"] = str(by)
			remove = ""
		}
		d, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
			UpdateExpression:          aws.String(update + remove),
			ConditionExpression:       aws.String("#state = :cur AND (attribute_not_exists(#tok) OR #tok <> :tok)"),
			ExpressionAttributeNames:  names(nameKeys...),
			ExpressionAttributeValues: values,
		}, op)
		if err != nil {
			return Device{}, false, err
		}
		if applied {
			return d, true, nil
		}
	}
	return Device{}, false, fmt.Errorf("%w: %s: record changed concurrently", ErrConflict, serial)
}

// MarkRevoked implements Store. It reads the record, then writes the
// state and the extended history with a condition on the state and
// certificate it read.
func (s *DynamoDB) MarkRevoked(ctx context.Context, serial, expectedCertificateID string) error {
	if err := check(ctx, serial); err != nil {
		return err
	}
	op := fmt.Sprintf("registry: mark %s revoked", serial)
	for range retries {
		d, err := s.Get(ctx, serial)
		if err != nil {
			return err
		}
		if d.State == StateRevoked {
			return nil
		}
		if d.CertificateID != expectedCertificateID {
			return fmt.Errorf("%w: %s has certificate %q, expected %q", ErrConflict, serial, d.CertificateID, expectedCertificateID)
		}
		now := s.opts.stamp()
		values := map[string]types.AttributeValue{
			":cur":     str(string(d.State)),
			":revoked": str(string(StateRevoked)),
			":now":     str(FormatTime(now)),
		}
		update := "SET #state = :revoked, #updatedAt = :now"
		nameKeys := []string{"#state", "#cert", "#updatedAt", "#expiry"}
		if expectedCertificateID != "" {
			hist, err := history(appendHistory(d.CertificateHistory, RetiredCertificate{CertificateID: expectedCertificateID, RetiredAt: now, Reason: RetiredRevoked}))
			if err != nil {
				return err
			}
			update += ", #hist = :hist"
			values[":hist"] = hist
			nameKeys = append(nameKeys, "#hist")
		}
		_, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
			UpdateExpression:          aws.String(update + " REMOVE #expiry"),
			ConditionExpression:       aws.String("#state = :cur AND " + certGuard(expectedCertificateID, values)),
			ExpressionAttributeNames:  names(nameKeys...),
			ExpressionAttributeValues: values,
		}, op)
		if err != nil || applied {
			return err
		}
	}
	return fmt.Errorf("%w: %s: record changed concurrently", ErrConflict, serial)
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
