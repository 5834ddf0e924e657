package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// removeRotation adds REMOVE of the attributes of a rotation in progress
// to u.
func removeRotation(u expression.UpdateBuilder) expression.UpdateBuilder {
	return remove(u, AttrRotationID, AttrRotationState, AttrRotationRequestedAt, AttrRotationCertID, AttrRotationCertNotAfter)
}

// ExpiringBefore implements Store with a Query of the expiry index. The
// cursor is "<certNotAfter>|<serial>" of the last record DynamoDB
// evaluated.
func (s *DynamoDB) ExpiringBefore(ctx context.Context, t time.Time, cursor string, limit int) (Page, error) {
	limit, after, err := expiryPageArgs(ctx, limit, cursor)
	if err != nil {
		return Page{}, err
	}
	keyCond := expression.Key(AttrExpiryPartition).Equal(expression.Value(ExpiryPartitionValue)).
		And(expression.Key(AttrCertNotAfter).LessThan(expression.Value(FormatTime(t))))
	expr, err := expression.NewBuilder().WithKeyCondition(keyCond).Build()
	if err != nil {
		return Page{}, fmt.Errorf("registry: query %s index %s: build expression: %w", s.table, ExpiryIndex, err)
	}
	in := &dynamodb.QueryInput{
		TableName:                 s.tableName(),
		IndexName:                 aws.String(ExpiryIndex),
		KeyConditionExpression:    expr.KeyCondition(),
		ExpressionAttributeNames:  expr.Names(),
		ExpressionAttributeValues: expr.Values(),
		Limit:                     aws.Int32(int32(min(limit, 1<<30))),
		ScanIndexForward:          aws.Bool(true),
	}
	if cursor != "" {
		in.ExclusiveStartKey = map[string]types.AttributeValue{
			PartitionKey:        str(after.serial),
			AttrExpiryPartition: str(ExpiryPartitionValue),
			AttrCertNotAfter:    str(after.notAfter),
		}
	}
	out, err := s.client.Query(ctx, in)
	if err != nil {
		return Page{}, fmt.Errorf("registry: query %s index %s: %w", s.table, ExpiryIndex, err)
	}
	devices, err := decodeAll(out.Items)
	if err != nil {
		return Page{}, err
	}
	page := Page{Devices: devices}
	if len(out.LastEvaluatedKey) > 0 {
		serial, ok1 := out.LastEvaluatedKey[PartitionKey].(*types.AttributeValueMemberS)
		notAfter, ok2 := out.LastEvaluatedKey[AttrCertNotAfter].(*types.AttributeValueMemberS)
		if !ok1 || !ok2 || serial.Value == "" || notAfter.Value == "" {
			return Page{}, fmt.Errorf("registry: query %s: unexpected LastEvaluatedKey", s.table)
		}
		page.Next = expiryKey{notAfter.Value, serial.Value}.String()
	}
	return page, nil
}

// RequestRotation implements Store.
func (s *DynamoDB) RequestRotation(ctx context.Context, serial, rotationID string, resendAfter time.Duration) (Device, error) {
	if err := checkRotation(ctx, serial, rotationID); err != nil {
		return Device{}, err
	}
	op := fmt.Sprintf("registry: request rotation of %s", serial)
	// Two concurrent requesters can each lose one race; a few rounds
	// settle it.
	for range 3 {
		now := s.opts.stamp()
		u := set(expression.UpdateBuilder{}, AttrRotationID, rotationID)
		u = set(u, AttrRotationState, RotationRequested)
		u = set(u, AttrRotationRequestedAt, FormatTime(now))
		u = set(u, AttrUpdatedAt, FormatTime(now))
		cond := expression.And(exists(), is(AttrState, StateProvisioned), expression.AttributeNotExists(expression.Name(AttrRotationID)))
		d, applied, err := s.update(ctx, serial, u, cond, op)
		if err != nil || applied {
			return d, err
		}
		d, err = s.Get(ctx, serial)
		if err != nil {
			return Device{}, err
		}
		if d.State != StateProvisioned {
			return Device{}, fmt.Errorf("%w: %s is %s", ErrConflict, serial, d.State)
		}
		if d.RotationID == "" {
			continue // finished in the meantime: start a new one
		}
		if now.Sub(d.RotationRequestedAt) < resendAfter {
			return Device{}, fmt.Errorf("%w: %s has rotation %s requested at %s", ErrRotationPending, serial, d.RotationID, FormatTime(d.RotationRequestedAt))
		}
		u = set(expression.UpdateBuilder{}, AttrRotationRequestedAt, FormatTime(now))
		u = set(u, AttrUpdatedAt, FormatTime(now))
		cond = expression.And(
			is(AttrState, StateProvisioned),
			is(AttrRotationID, d.RotationID),
			is(AttrRotationRequestedAt, FormatTime(d.RotationRequestedAt)),
		)
		d, applied, err = s.update(ctx, serial, u, cond, op)
		if err != nil || applied {
			return d, err
		}
	}
	return Device{}, fmt.Errorf("%w: %s: rotation record changed concurrently", ErrConflict, serial)
}

// IssueRotation implements Store.
func (s *DynamoDB) IssueRotation(ctx context.Context, serial, rotationID string, cert Certificate) (Device, error) {
	if err := checkRotation(ctx, serial, rotationID); err != nil {
		return Device{}, err
	}
	if err := checkCert(cert, true); err != nil {
		return Device{}, err
	}
	u := set(expression.UpdateBuilder{}, AttrRotationState, RotationIssued)
	u = set(u, AttrRotationCertID, cert.ID)
	u = set(u, AttrRotationCertNotAfter, FormatTime(cert.NotAfter))
	u = set(u, AttrUpdatedAt, s.now())
	cond := expression.And(exists(),
		is(AttrState, StateProvisioned),
		is(AttrRotationID, rotationID),
		is(AttrRotationState, RotationRequested),
	)
	d, applied, err := s.update(ctx, serial, u, cond, fmt.Sprintf("registry: issue rotation %s of %s", rotationID, serial))
	if err != nil || applied {
		return d, err
	}
	d, err = s.Get(ctx, serial)
	if err != nil {
		return Device{}, err
	}
	if d.State == StateProvisioned && d.RotationID == rotationID && d.RotationState == RotationIssued && d.RotationCertID == cert.ID {
		return d, nil
	}
	return Device{}, issueConflict(d, rotationID)
}

// CompleteRotation implements Store. certificateId, certNotAfter and
// retiredCertificateId are set from the record's own attributes in the
// same conditional write, so no reader sees a half-switched record.
func (s *DynamoDB) CompleteRotation(ctx context.Context, serial, rotationID, certID string) (Device, error) {
	if err := checkRotation(ctx, serial, rotationID); err != nil {
		return Device{}, err
	}
	if certID == "" {
		return Device{}, errors.New("registry: complete rotation: empty certificate id")
	}
	u := expression.Set(expression.Name(AttrRetiredCertificateID), expression.Name(AttrCertificateID)).
		Set(expression.Name(AttrCertificateID), expression.Name(AttrRotationCertID)).
		Set(expression.Name(AttrCertNotAfter), expression.Name(AttrRotationCertNotAfter))
	u = set(u, AttrExpiryPartition, ExpiryPartitionValue)
	u = set(u, AttrLastRotationID, rotationID)
	u = set(u, AttrLastRotationStatus, RotationCompleted)
	u = set(u, AttrUpdatedAt, s.now())
	u = removeRotation(remove(u, AttrPublicKeySHA256))
	cond := expression.And(exists(),
		is(AttrState, StateProvisioned),
		is(AttrRotationID, rotationID),
		is(AttrRotationState, RotationIssued),
		is(AttrRotationCertID, certID),
	)
	d, applied, err := s.update(ctx, serial, u, cond, fmt.Sprintf("registry: complete rotation %s of %s", rotationID, serial))
	if err != nil || applied {
		return d, err
	}
	d, err = s.Get(ctx, serial)
	if err != nil {
		return Device{}, err
	}
	if completedAlready(d, rotationID, certID) {
		return d, nil
	}
	return Device{}, completeConflict(d, rotationID, certID)
}

// FailRotation implements Store.
func (s *DynamoDB) FailRotation(ctx context.Context, serial, rotationID string) (Device, error) {
	if err := checkRotation(ctx, serial, rotationID); err != nil {
		return Device{}, err
	}
	op := fmt.Sprintf("registry: fail rotation %s of %s", rotationID, serial)
	for range 3 {
		d, err := s.Get(ctx, serial)
		if err != nil {
			return Device{}, err
		}
		if failedAlready(d, rotationID) {
			return d, nil
		}
		if d.RotationID != rotationID {
			return Device{}, fmt.Errorf("%w: %s has no rotation %s in progress (current %q)", ErrConflict, serial, rotationID, d.RotationID)
		}
		// The retired certificate is the one issued for the rotation, if
		// any; the condition pins the rotation state read above.
		u := set(expression.UpdateBuilder{}, AttrLastRotationID, rotationID)
		u = set(u, AttrLastRotationStatus, RotationFailed)
		u = set(u, AttrUpdatedAt, s.now())
		if d.RotationState == RotationIssued {
			u = u.Set(expression.Name(AttrRetiredCertificateID), expression.Name(AttrRotationCertID))
		} else {
			u = remove(u, AttrRetiredCertificateID)
		}
		u = removeRotation(u)
		cond := is(AttrRotationID, rotationID).And(is(AttrRotationState, d.RotationState))
		d, applied, err := s.update(ctx, serial, u, cond, op)
		if err != nil || applied {
			return d, err
		}
	}
	return Device{}, fmt.Errorf("%w: %s: rotation record changed concurrently", ErrConflict, serial)
}
