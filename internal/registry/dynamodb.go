package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
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

func str(s string) types.AttributeValue { return &types.AttributeValueMemberS{Value: s} }

func (s *DynamoDB) key(serial string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{PartitionKey: str(serial)}
}

// now is the time of a change as the record stores it.
func (s *DynamoDB) now() string { return FormatTime(s.opts.stamp()) }

// is is the condition that attribute attr equals v.
func is(attr string, v any) expression.ConditionBuilder {
	return expression.Name(attr).Equal(expression.Value(v))
}

// exists is the condition that the record exists.
func exists() expression.ConditionBuilder {
	return expression.AttributeExists(expression.Name(PartitionKey))
}

// set adds SET attr = v to u.
func set(u expression.UpdateBuilder, attr string, v any) expression.UpdateBuilder {
	return u.Set(expression.Name(attr), expression.Value(v))
}

// remove adds REMOVE of attrs to u.
func remove(u expression.UpdateBuilder, attrs ...string) expression.UpdateBuilder {
	for _, a := range attrs {
		u = u.Remove(expression.Name(a))
	}
	return u
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
	now := s.now()
	u := set(expression.UpdateBuilder{}, AttrState, StateAllowed)
	u = set(u, AttrUpdatedAt, now)
	u = u.Set(expression.Name(AttrCreatedAt), expression.Name(AttrCreatedAt).IfNotExists(expression.Value(now)))
	u = removeRotation(remove(u, AttrCertificateID, AttrThingName, AttrCertNotAfter, AttrExpiryPartition, AttrPublicKeySHA256))
	// A revoked record is admitted again unless an emergency revocation
	// holds it out.
	cond := expression.AttributeNotExists(expression.Name(PartitionKey)).Or(
		is(AttrState, StateRevoked).And(expression.AttributeNotExists(expression.Name(AttrRevokeEmergency))))
	// A failed condition means the record exists and is allowed or
	// provisioned (already admitted), or is held out.
	_, _, err := s.update(ctx, serial, u, cond, fmt.Sprintf("registry: put %s allowed", serial))
	return err
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
	u := set(expression.UpdateBuilder{}, AttrState, StateProvisioned)
	u = set(u, AttrCertificateID, cert.ID)
	u = set(u, AttrUpdatedAt, s.now())
	u = certificateUpdate(u, cert)
	if thingName != "" {
		u = set(u, AttrThingName, thingName)
	}
	// Allowed, or provisioned with this certificate (a repeat), written
	// as "state is allowed or provisioned, and allowed or with this
	// certificate": the same condition (A or (P and C) = (A or P) and
	// (A or C)) one level of parentheses flatter. The builder wraps every
	// operand in parentheses and dynalite's backtracking parser (tests,
	// benchmarks) takes time exponential in their depth.
	cond := expression.And(exists(),
		expression.Name(AttrState).In(expression.Value(StateAllowed), expression.Value(StateProvisioned)),
		expression.Or(is(AttrState, StateAllowed), is(AttrCertificateID, cert.ID)),
	)
	d, applied, err := s.update(ctx, serial, u, cond, fmt.Sprintf("registry: mark %s provisioned", serial))
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
// public key hash to u, or removes them when they are unknown.
func certificateUpdate(u expression.UpdateBuilder, cert Certificate) expression.UpdateBuilder {
	if cert.NotAfter.IsZero() {
		u = remove(u, AttrCertNotAfter, AttrExpiryPartition)
	} else {
		u = set(u, AttrCertNotAfter, FormatTime(cert.NotAfter))
		u = set(u, AttrExpiryPartition, ExpiryPartitionValue)
	}
	if cert.PublicKeySHA256 == "" {
		return remove(u, AttrPublicKeySHA256)
	}
	return set(u, AttrPublicKeySHA256, cert.PublicKeySHA256)
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
// (none when id is empty).
func certGuard(id string) expression.ConditionBuilder {
	if id == "" {
		return expression.AttributeNotExists(expression.Name(AttrCertificateID))
	}
	return is(AttrCertificateID, id)
}

// retries bounds the read-modify-write rounds of a method whose
// conditional write can lose a race with another writer.
const retries = 3

// MarkRevoking implements Store.
func (s *DynamoDB) MarkRevoking(ctx context.Context, serial, expectedCertificateID string) (Device, error) {
	if err := check(ctx, serial); err != nil {
		return Device{}, err
	}
	u := set(expression.UpdateBuilder{}, AttrState, StateRevoking)
	u = set(u, AttrUpdatedAt, s.now())
	cond := expression.And(
		exists(),
		expression.Name(AttrState).In(expression.Value(StateAllowed), expression.Value(StateProvisioned), expression.Value(StateReadmitted)),
		certGuard(expectedCertificateID),
	)
	d, applied, err := s.update(ctx, serial, u, cond, fmt.Sprintf("registry: mark %s revoking", serial))
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

// MarkEmergencyRevoking implements Store. It reads the record, then writes
// with a condition on the state and certificate it read.
func (s *DynamoDB) MarkEmergencyRevoking(ctx context.Context, serial, expectedCertificateID string, rev Revocation) (Device, error) {
	if err := check(ctx, serial); err != nil {
		return Device{}, err
	}
	if err := rev.Valid(); err != nil {
		return Device{}, err
	}
	op := fmt.Sprintf("registry: mark %s revoking (emergency)", serial)
	for range retries {
		d, err := s.Get(ctx, serial)
		if err != nil {
			return Device{}, err
		}
		now := s.now()
		u := set(expression.UpdateBuilder{}, AttrRevokeReason, rev.Reason)
		u = set(u, AttrRevokedBy, rev.By)
		u = set(u, AttrRevokedAt, now)
		u = set(u, AttrRevokeEmergency, true)
		u = set(u, AttrUpdatedAt, now)
		switch {
		case d.State == StateRevoking || d.State == StateRevoked:
		case d.CertificateID != expectedCertificateID:
			return Device{}, fmt.Errorf("%w: %s has certificate %q, expected %q", ErrConflict, serial, d.CertificateID, expectedCertificateID)
		default:
			u = set(u, AttrState, StateRevoking)
		}
		cond := is(AttrState, d.State).And(certGuard(d.CertificateID))
		d, applied, err := s.update(ctx, serial, u, cond, op)
		if err != nil || applied {
			return d, err
		}
	}
	return Device{}, fmt.Errorf("%w: %s: record changed concurrently", ErrConflict, serial)
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
		u := set(expression.UpdateBuilder{}, AttrState, StateProvisioned)
		u = set(u, AttrCertificateID, cert.ID)
		u = set(u, AttrCertificateHistory, hist)
		u = set(u, AttrUpdatedAt, FormatTime(now))
		u = removeRotation(certificateUpdate(u, cert))
		if thingName != "" {
			u = set(u, AttrThingName, thingName)
		}
		cond := is(AttrState, d.State).And(is(AttrCertificateID, retired.CertificateID))
		d, applied, err := s.update(ctx, serial, u, cond, op)
		if err != nil || applied {
			return d, err
		}
	}
	return Device{}, fmt.Errorf("%w: %s: record changed concurrently", ErrConflict, serial)
}

// Readmit implements Store.
func (s *DynamoDB) Readmit(ctx context.Context, serial, token, by string) (Device, bool, error) {
	return s.readmit(ctx, serial, token, by, true)
}

// ReadmitAdmitted implements Store.
func (s *DynamoDB) ReadmitAdmitted(ctx context.Context, serial, token, by string) (Device, bool, error) {
	return s.readmit(ctx, serial, token, by, false)
}

// readmit is Readmit; liftHold false refuses a held-out record. The write
// is conditional on the state read, so a record held out meanwhile fails
// the condition and is read again.
func (s *DynamoDB) readmit(ctx context.Context, serial, token, by string, liftHold bool) (Device, bool, error) {
	if err := checkReadmit(ctx, serial, token); err != nil {
		return Device{}, false, err
	}
	op := fmt.Sprintf("registry: re-admit %s", serial)
	for range retries {
		d, err := s.Get(ctx, serial)
		if err != nil {
			return Device{}, false, err
		}
		if d.HeldOut() && !liftHold {
			return Device{}, false, heldOut(d)
		}
		held := d.State == StateRevoked && d.RevokeEmergency
		if !d.State.Admitted() && !held {
			return Device{}, false, fmt.Errorf("%w: %s is %s; list it on the allowlist again before re-admitting it", ErrConflict, serial, d.State)
		}
		if d.ReadmitTokenUsed(token) {
			return d, false, nil
		}
		now := s.now()
		u := set(expression.UpdateBuilder{}, AttrState, readmittedState(d.State))
		if held {
			// Out of the emergency hold: allowed, as PutAllowed makes a
			// revoked record.
			u = set(expression.UpdateBuilder{}, AttrState, StateAllowed)
			u = removeRotation(remove(u, AttrRevokeEmergency, AttrCertificateID, AttrThingName, AttrCertNotAfter, AttrExpiryPartition, AttrPublicKeySHA256))
		}
		// The set gains the token (and the last token of a record written
		// before the set existed).
		u = u.Add(expression.Name(AttrReadmitTokens), expression.Value(&types.AttributeValueMemberSS{Value: addTokens(nil, token, d.ReadmitToken)}))
		u = set(u, AttrReadmitToken, token)
		u = set(u, AttrReadmittedAt, now)
		u = set(u, AttrUpdatedAt, now)
		if by != "" {
			u = set(u, AttrReadmittedBy, by)
		} else {
			u = remove(u, AttrReadmittedBy)
		}
		// A token never used for the serial: not in the set, and not the
		// last token (records written before the set existed).
		tok := expression.Name(AttrReadmitToken)
		cond := expression.And(is(AttrState, d.State),
			expression.Not(expression.Contains(expression.Name(AttrReadmitTokens), token)),
			expression.Or(tok.AttributeNotExists(), tok.NotEqual(expression.Value(token))))
		d, applied, err := s.update(ctx, serial, u, cond, op)
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
		u := set(expression.UpdateBuilder{}, AttrState, StateRevoked)
		u = set(u, AttrUpdatedAt, FormatTime(now))
		u = remove(u, AttrExpiryPartition)
		if expectedCertificateID != "" {
			hist, err := history(appendHistory(d.CertificateHistory, RetiredCertificate{CertificateID: expectedCertificateID, RetiredAt: now, Reason: RetiredRevoked}))
			if err != nil {
				return err
			}
			u = set(u, AttrCertificateHistory, hist)
		}
		cond := is(AttrState, d.State).And(certGuard(expectedCertificateID))
		_, applied, err := s.update(ctx, serial, u, cond, op)
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
	slices.Sort(d.ReadmitTokens) // a set has no order
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

// update runs the conditional update u (condition cond) on serial's
// record and returns the record as it is after it. applied is false, with
// no error, when the condition failed; any other error is wrapped with op.
func (s *DynamoDB) update(ctx context.Context, serial string, u expression.UpdateBuilder, cond expression.ConditionBuilder, op string) (d Device, applied bool, err error) {
	expr, err := expression.NewBuilder().WithUpdate(u).WithCondition(cond).Build()
	if err != nil {
		return Device{}, false, fmt.Errorf("%s: build expression: %w", op, err)
	}
	out, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 s.tableName(),
		Key:                       s.key(serial),
		UpdateExpression:          expr.Update(),
		ConditionExpression:       expr.Condition(),
		ExpressionAttributeNames:  expr.Names(),
		ExpressionAttributeValues: expr.Values(),
		ReturnValues:              types.ReturnValueAllNew,
	})
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
