// Package revocation takes a device out of AWS IoT the one way the
// allowlist sync and the emergency revoke Lambda both do it. The caller
// first moves the registry record to revoking (the hook denies it from
// then on), before any AWS call; Finish then sets every certificate
// attached to the device's thing, plus the ones the registry recorded (the
// device's, a rotation's issued one, the last retired one and the
// certificate history), that is not REVOKED yet, REVOKED and detaches the
// device policy and the thing from it; the thing leaves the thing group and is
// deleted; SSM is turned off for the device (activation deleted, managed
// instance deregistered, SSM state cleared: ssmtoggle.TurnOff); only then
// does the registry record become revoked. Each step treats "not found" as
// already done, so a re-run after a partial failure (or a crash) picks up
// where the last run stopped.
package revocation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/iotcall"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

// IoTAPI is the part of the AWS IoT control plane a revocation uses.
// *iot.Client implements it. Another implementation (the local IoT Core)
// must behave like AWS IoT where a revocation depends on it:
//
//   - an unknown thing, certificate, policy or thing group is AWS IoT's
//     ResourceNotFoundException (iotcall.IsNotFound);
//   - DeleteThing of a thing that does not exist succeeds, and fails with
//     *types.InvalidRequestException while principals are still attached;
//   - detaching something that is not attached succeeds;
//   - DescribeCertificate fills CertificateDescription.CertificateArn and
//     Status; ListThingPrincipals returns certificate ARNs
//     (arn:aws:iot:<region>:<account>:cert/<id>) and pages with NextToken.
type IoTAPI interface {
	ListThingPrincipals(ctx context.Context, in *iot.ListThingPrincipalsInput, optFns ...func(*iot.Options)) (*iot.ListThingPrincipalsOutput, error)
	DescribeCertificate(ctx context.Context, in *iot.DescribeCertificateInput, optFns ...func(*iot.Options)) (*iot.DescribeCertificateOutput, error)
	UpdateCertificate(ctx context.Context, in *iot.UpdateCertificateInput, optFns ...func(*iot.Options)) (*iot.UpdateCertificateOutput, error)
	DetachPolicy(ctx context.Context, in *iot.DetachPolicyInput, optFns ...func(*iot.Options)) (*iot.DetachPolicyOutput, error)
	DetachThingPrincipal(ctx context.Context, in *iot.DetachThingPrincipalInput, optFns ...func(*iot.Options)) (*iot.DetachThingPrincipalOutput, error)
	RemoveThingFromThingGroup(ctx context.Context, in *iot.RemoveThingFromThingGroupInput, optFns ...func(*iot.Options)) (*iot.RemoveThingFromThingGroupOutput, error)
	DeleteThing(ctx context.Context, in *iot.DeleteThingInput, optFns ...func(*iot.Options)) (*iot.DeleteThingOutput, error)
}

// Registry is the part of the device registry Finish uses.
type Registry interface {
	MarkRevoked(ctx context.Context, serial, expectedCertificateID string) error
}

// DeleteAttempts bounds DeleteThing retries while AWS IoT still sees the
// just-detached principals (detaching propagates asynchronously).
const DeleteAttempts = 4

// Revoker finishes revocations. Its fields are required unless noted.
type Revoker struct {
	IoT      IoTAPI
	Registry Registry
	// SSM and SSMState turn SSM off for a revoked device.
	SSM      ssmtoggle.OffAPI
	SSMState ssmstate.Store
	// ThingGroup is the group devices are removed from, DevicePolicy the
	// policy detached from their certificates.
	ThingGroup   string
	DevicePolicy string
	// ThingNamePrefix makes the thing name of a serial whose record has
	// none (thing name = prefix + serial).
	ThingNamePrefix string
	// CallTimeout bounds each AWS call, RetryDelay is the first pause
	// before DeleteThing is retried.
	CallTimeout time.Duration
	RetryDelay  time.Duration
	Logger      *slog.Logger
}

// ThingName is the thing name of d.
func (r *Revoker) ThingName(d registry.Device) string {
	if d.ThingName != "" {
		return d.ThingName
	}
	return r.ThingNamePrefix + d.Serial
}

// Finish takes a device in state revoking out of AWS IoT, turns SSM off
// for it, then marks it revoked.
func (r *Revoker) Finish(ctx context.Context, d registry.Device) error {
	_, err := r.FinishReport(ctx, d)
	return err
}

// FinishReport is Finish that also returns the ids of the certificates it
// found not REVOKED and set REVOKED. It is idempotent and trusts no
// earlier run: on a record that is already revoked it checks every
// certificate again (one re-activated behind the registry's back is
// revoked again), detaches, deletes and turns off what is left, and
// leaves the record revoked.
func (r *Revoker) FinishReport(ctx context.Context, d registry.Device) (revoked []string, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	thing := r.ThingName(d)
	recorded := []string{d.CertificateID, d.RotationCertID, d.RetiredCertificateID}
	for _, h := range d.CertificateHistory {
		recorded = append(recorded, h.CertificateID)
	}
	certs, err := r.certificates(ctx, thing, recorded...)
	if err != nil {
		return nil, err
	}
	for _, c := range certs {
		changed, err := r.revokeCertificate(ctx, thing, c)
		if err != nil {
			return revoked, err
		}
		if changed {
			revoked = append(revoked, c)
		}
	}
	return revoked, r.finishThing(ctx, d, thing)
}

// finishThing takes thing out of the group, deletes it, turns SSM off for
// d and marks d revoked.
func (r *Revoker) finishThing(ctx context.Context, d registry.Device, thing string) error {
	if err := r.call(ctx, "RemoveThingFromThingGroup", func(ctx context.Context) error {
		_, err := r.IoT.RemoveThingFromThingGroup(ctx, &iot.RemoveThingFromThingGroupInput{
			ThingName: aws.String(thing), ThingGroupName: aws.String(r.ThingGroup),
		})
		return err
	}); err != nil {
		return err
	}
	if err := r.deleteThing(ctx, thing); err != nil {
		return err
	}
	if err := r.ssmOff(ctx, d.Serial); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, r.CallTimeout)
	defer cancel()
	if err := r.Registry.MarkRevoked(cctx, d.Serial, d.CertificateID); err != nil {
		return fmt.Errorf("mark revoked: %w", err)
	}
	return nil
}

// ssmOff turns SSM off for serial if its SSM state is not inactive: the
// activation is deleted and the managed instance deregistered, so a
// revoked device keeps no remote shell.
func (r *Revoker) ssmOff(ctx context.Context, serial string) error {
	cctx, cancel := context.WithTimeout(ctx, r.CallTimeout)
	defer cancel()
	rec, err := r.SSMState.Get(cctx, serial)
	if err != nil {
		return fmt.Errorf("ssm state: %w", err)
	}
	if rec.State == ssmstate.StateInactive {
		return nil
	}
	instances, err := ssmtoggle.TurnOff(cctx, r.SSM, r.SSMState, rec, ssmtoggle.NewRequestID(), nil)
	if err != nil {
		return fmt.Errorf("turn ssm off: %w", err)
	}
	r.Logger.InfoContext(ctx, "ssm turned off for revoked device", "serial", serial, "activationId", rec.ActivationID, "instances", instances)
	return nil
}

// certificates returns the ids of the certificates to revoke: those
// attached to thing and the ones the registry recorded — the device's, a
// rotation's issued one (provisioning or the rotation may have stopped
// before attaching it), the one the last rotation retired and those of
// the certificate history (a certificate retired earlier could have been
// re-activated since).
func (r *Revoker) certificates(ctx context.Context, thing string, recorded ...string) ([]string, error) {
	var ids []string
	seen := map[string]bool{}
	add := func(id string) {
		if id != "" && !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, id := range recorded {
		add(id)
	}
	var token *string
	for {
		var out *iot.ListThingPrincipalsOutput
		err := r.call(ctx, "ListThingPrincipals", func(ctx context.Context) error {
			var err error
			out, err = r.IoT.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String(thing), NextToken: token})
			return err
		})
		if err != nil {
			return nil, err
		}
		if out == nil { // the thing is gone
			return ids, nil
		}
		for _, p := range out.Principals {
			if id, ok := CertificateIDFromARN(p); ok {
				add(id)
			}
		}
		if aws.ToString(out.NextToken) == "" {
			return ids, nil
		}
		token = out.NextToken
	}
}

// CertificateIDFromARN returns the id of a certificate ARN
// (arn:aws:iot:<region>:<account>:cert/<id>).
func CertificateIDFromARN(arn string) (string, bool) {
	i := strings.LastIndex(arn, ":cert/")
	if i < 0 || !strings.HasPrefix(arn, "arn:") {
		return "", false
	}
	id := arn[i+len(":cert/"):]
	return id, id != "" && !strings.Contains(id, "/")
}

// revokeCertificate sets certificate id REVOKED (changed: it was not) and
// detaches the device policy and thing from it.
func (r *Revoker) revokeCertificate(ctx context.Context, thing, id string) (changed bool, err error) {
	var desc *iot.DescribeCertificateOutput
	if err := r.call(ctx, "DescribeCertificate", func(ctx context.Context) error {
		var err error
		desc, err = r.IoT.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
		return err
	}); err != nil {
		return false, err
	}
	if desc == nil || desc.CertificateDescription == nil {
		return false, nil // the certificate is gone: nothing to revoke or detach
	}
	cd := desc.CertificateDescription
	arn := aws.ToString(cd.CertificateArn)
	if arn == "" {
		return false, fmt.Errorf("DescribeCertificate %s: no certificate ARN", id)
	}
	if cd.Status != iottypes.CertificateStatusRevoked {
		if err := r.call(ctx, "UpdateCertificate", func(ctx context.Context) error {
			_, err := r.IoT.UpdateCertificate(ctx, &iot.UpdateCertificateInput{
				CertificateId: aws.String(id), NewStatus: iottypes.CertificateStatusRevoked,
			})
			return err
		}); err != nil {
			return false, err
		}
		changed = true
	}
	if err := r.call(ctx, "DetachPolicy", func(ctx context.Context) error {
		_, err := r.IoT.DetachPolicy(ctx, &iot.DetachPolicyInput{PolicyName: aws.String(r.DevicePolicy), Target: aws.String(arn)})
		return err
	}); err != nil {
		return changed, err
	}
	return changed, r.call(ctx, "DetachThingPrincipal", func(ctx context.Context) error {
		_, err := r.IoT.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: aws.String(thing), Principal: aws.String(arn)})
		return err
	})
}

// deleteThing deletes thing, retrying a few times while AWS IoT still
// reports the principals detached a moment ago.
func (r *Revoker) deleteThing(ctx context.Context, thing string) error {
	delay := r.RetryDelay
	for attempt := 1; ; attempt++ {
		err := r.call(ctx, "DeleteThing", func(ctx context.Context) error {
			_, err := r.IoT.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String(thing)})
			return err
		})
		var invalid *iottypes.InvalidRequestException
		if err == nil || !errors.As(err, &invalid) || attempt == DeleteAttempts {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("DeleteThing %s: %w (last error: %v)", thing, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// call runs one IoT call with the call timeout; not-found counts as done.
func (r *Revoker) call(ctx context.Context, op string, fn func(context.Context) error) error {
	return iotcall.Do(ctx, r.CallTimeout, op, true, fn)
}
