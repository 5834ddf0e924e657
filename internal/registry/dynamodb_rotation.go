package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// removeRotation removes the attributes of a rotation in progress (the
// placeholders #rotId, #rotState, #rotAt, #rotCert, #rotNotAfter).
const removeRotation = "#rotId, #rotState, #rotAt, #rotCert, #rotNotAfter"

// ExpiringBefore implements Store with a Query of the expiry index. The
// cursor is "<certNotAfter>|<serial>" of the last record DynamoDB
// evaluated.
func (s *DynamoDB) ExpiringBefore(ctx context.Context, t time.Time, cursor string, limit int) (Page, error) {
	limit, after, err := expiryPageArgs(ctx, limit, cursor)
	if err != nil {
		return Page{}, err
	}
	in := &dynamodb.QueryInput{
		TableName:                s.tableName(),
		IndexName:                aws.String(ExpiryIndex),
		KeyConditionExpression:   aws.String("#expiry = :expiry AND #notAfter < :before"),
		ExpressionAttributeNames: names("#expiry", "#notAfter"),
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":expiry": str(ExpiryPartitionValue),
			":before": str(FormatTime(t)),
		},
		Limit:            aws.Int32(int32(min(limit, 1<<30))),
		ScanIndexForward: aws.Bool(true),
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
	// Two concurrent requesters can each lose one race; a few rounds
	// settle it.
	for range 3 {
		now := s.opts.stamp()
		op := fmt.Sprintf("registry: request rotation of %s", serial)
		d, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
			UpdateExpression:         aws.String("SET #rotId = :id, #rotState = :requested, #rotAt = :now, #updatedAt = :now"),
			ConditionExpression:      aws.String("attribute_exists(#serial) AND #state = :provisioned AND attribute_not_exists(#rotId)"),
			ExpressionAttributeNames: names("#serial", "#state", "#rotId", "#rotState", "#rotAt", "#updatedAt"),
			ExpressionAttributeValues: map[string]types.AttributeValue{
				":id":          str(rotationID),
				":requested":   str(string(RotationRequested)),
				":provisioned": str(string(StateProvisioned)),
				":now":         str(FormatTime(now)),
			},
		}, op)
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
		d, applied, err = s.update(ctx, serial, &dynamodb.UpdateItemInput{
			UpdateExpression:         aws.String("SET #rotAt = :now, #updatedAt = :now"),
			ConditionExpression:      aws.String("#state = :provisioned AND #rotId = :id AND #rotAt = :prev"),
			ExpressionAttributeNames: names("#state", "#rotId", "#rotAt", "#updatedAt"),
			ExpressionAttributeValues: map[string]types.AttributeValue{
				":id":          str(d.RotationID),
				":prev":        str(FormatTime(d.RotationRequestedAt)),
				":provisioned": str(string(StateProvisioned)),
				":now":         str(FormatTime(now)),
			},
		}, op)
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
	d, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
		UpdateExpression:         aws.String("SET #rotState = :issued, #rotCert = :cert, #rotNotAfter = :notAfter, #updatedAt = :now"),
		ConditionExpression:      aws.String("attribute_exists(#serial) AND #state = :provisioned AND #rotId = :id AND #rotState = :requested"),
		ExpressionAttributeNames: names("#serial", "#state", "#rotId", "#rotState", "#rotCert", "#rotNotAfter", "#updatedAt"),
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":id":          str(rotationID),
			":issued":      str(string(RotationIssued)),
			":requested":   str(string(RotationRequested)),
			":provisioned": str(string(StateProvisioned)),
			":cert":        str(cert.ID),
			":notAfter":    str(FormatTime(cert.NotAfter)),
			":now":         s.now(),
		},
	}, fmt.Sprintf("registry: issue rotation %s of %s", rotationID, serial))
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
	d, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
		UpdateExpression: aws.String("SET #retired = #cert, #cert = #rotCert, #notAfter = #rotNotAfter, #expiry = :expiry, " +
			"#lastRot = :id, #lastStatus = :completed, #updatedAt = :now REMOVE #key, " + removeRotation),
		ConditionExpression: aws.String("attribute_exists(#serial) AND #state = :provisioned AND #rotId = :id AND #rotState = :issued AND #rotCert = :cert"),
		ExpressionAttributeNames: names("#serial", "#state", "#cert", "#notAfter", "#expiry", "#retired", "#lastRot", "#lastStatus",
			"#updatedAt", "#key", "#rotId", "#rotState", "#rotAt", "#rotCert", "#rotNotAfter"),
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":id":          str(rotationID),
			":cert":        str(certID),
			":issued":      str(string(RotationIssued)),
			":provisioned": str(string(StateProvisioned)),
			":completed":   str(string(RotationCompleted)),
			":expiry":      str(ExpiryPartitionValue),
			":now":         s.now(),
		},
	}, fmt.Sprintf("registry: complete rotation %s of %s", rotationID, serial))
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
		update := "SET #lastRot = :id, #lastStatus = :failed, #updatedAt = :now"
		remove := " REMOVE " + removeRotation
		if d.RotationState == RotationIssued {
			update += ", #retired = #rotCert"
		} else {
			remove += ", #retired"
		}
		d, applied, err := s.update(ctx, serial, &dynamodb.UpdateItemInput{
			UpdateExpression:    aws.String(update + remove),
			ConditionExpression: aws.String("#rotId = :id AND #rotState = :rotState"),
			ExpressionAttributeNames: names("#lastRot", "#lastStatus", "#updatedAt", "#retired",
				"#rotId", "#rotState", "#rotAt", "#rotCert", "#rotNotAfter"),
			ExpressionAttributeValues: map[string]types.AttributeValue{
				":id":       str(rotationID),
				":failed":   str(string(RotationFailed)),
				":rotState": str(string(d.RotationState)),
				":now":      s.now(),
			},
		}, fmt.Sprintf("registry: fail rotation %s of %s", rotationID, serial))
		if err != nil || applied {
			return d, err
		}
	}
	return Device{}, fmt.Errorf("%w: %s: rotation record changed concurrently", ErrConflict, serial)
}
