// Package awsiot is the AWS IoT control plane of the local IoT Core: the
// methods of the aws-sdk-go-v2 *iot.Client that the Lambdas use, served
// from the simulator's registry with AWS's observable behaviour (error
// types, ARNs, idempotent detaches). A Lambda handler takes its narrow
// interface; in AWS the real client satisfies it, here a *Client does, so
// the same handler code runs against both.
package awsiot

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// Client serves IoT control-plane calls from a simulator registry. It
// records the calls and can fail chosen ones (calls.go).
type Client struct {
	reg       *registry.Registry
	arnPrefix string // arn:<partition>:iot:<region>:<account>:
	calls     calls
	pageSize  int // ListThingPrincipals page size (0: one page); under calls.mu
}

// New returns a Client over reg; partition, region and account form ARNs.
func New(reg *registry.Registry, partition, region, account string) *Client {
	return &Client{reg: reg, arnPrefix: fmt.Sprintf("arn:%s:iot:%s:%s:", partition, region, account)}
}

// CertificateARN is the ARN of certificate id.
func (c *Client) CertificateARN(id string) string { return c.arnPrefix + "cert/" + id }

// certID extracts the certificate id of a certificate ARN (or accepts a
// bare id, as some IoT APIs do).
func certID(arnOrID string) string {
	if i := strings.LastIndex(arnOrID, ":cert/"); i >= 0 {
		return arnOrID[i+len(":cert/"):]
	}
	return arnOrID
}

// translate maps simulator registry errors onto the AWS IoT error types.
func translate(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, registry.ErrNotFound):
		return fmt.Errorf("%s: %w", op, &types.ResourceNotFoundException{Message: aws.String(err.Error())})
	case errors.Is(err, registry.ErrConflict), errors.Is(err, registry.ErrInvalid):
		return fmt.Errorf("%s: %w", op, &types.InvalidRequestException{Message: aws.String(err.Error())})
	case errors.Is(err, registry.ErrAlreadyExists):
		return fmt.Errorf("%s: %w", op, &types.ResourceAlreadyExistsException{Message: aws.String(err.Error())})
	}
	return fmt.Errorf("%s: %w", op, &types.InternalFailureException{Message: aws.String(err.Error())})
}

// ListThingPrincipals lists the certificate ARNs attached to a thing, in
// pages of MaxResults or SetPageSize (NextToken is the index of the next
// principal).
func (c *Client) ListThingPrincipals(ctx context.Context, in *iot.ListThingPrincipalsInput, _ ...func(*iot.Options)) (*iot.ListThingPrincipalsOutput, error) {
	name := aws.ToString(in.ThingName)
	return serve(ctx, c, "ListThingPrincipals", name, func() (*iot.ListThingPrincipalsOutput, error) {
		th, err := c.reg.Thing(name)
		if err != nil {
			return nil, translate("ListThingPrincipals", err)
		}
		arns := make([]string, 0, len(th.Principals))
		for _, id := range th.Principals {
			arns = append(arns, c.CertificateARN(id))
		}
		items, next, err := page(c, "ListThingPrincipals", arns, aws.ToString(in.NextToken), aws.ToInt32(in.MaxResults), in.MaxResults != nil)
		if err != nil {
			return nil, err
		}
		out := &iot.ListThingPrincipalsOutput{Principals: items, NextToken: optToken(next)}
		return out, nil
	})
}

// DescribeCertificate describes a certificate.
func (c *Client) DescribeCertificate(ctx context.Context, in *iot.DescribeCertificateInput, _ ...func(*iot.Options)) (*iot.DescribeCertificateOutput, error) {
	id := aws.ToString(in.CertificateId)
	return serve(ctx, c, "DescribeCertificate", id, func() (*iot.DescribeCertificateOutput, error) {
		cert, err := c.reg.Certificate(id)
		if err != nil {
			return nil, translate("DescribeCertificate", err)
		}
		return &iot.DescribeCertificateOutput{CertificateDescription: &types.CertificateDescription{
			CertificateId:  aws.String(cert.ID),
			CertificateArn: aws.String(c.CertificateARN(cert.ID)),
			CertificatePem: aws.String(cert.PEM),
			Status:         types.CertificateStatus(cert.Status),
			CreationDate:   aws.Time(cert.CreatedAt),
			Validity:       &types.CertificateValidity{NotAfter: aws.Time(cert.NotAfter)},
		}}, nil
	})
}

// UpdateCertificate sets a certificate's status. As in AWS, a REVOKED
// certificate cannot change status again.
func (c *Client) UpdateCertificate(ctx context.Context, in *iot.UpdateCertificateInput, _ ...func(*iot.Options)) (*iot.UpdateCertificateOutput, error) {
	id := aws.ToString(in.CertificateId)
	return serve(ctx, c, "UpdateCertificate", id, func() (*iot.UpdateCertificateOutput, error) {
		if err := c.reg.SetCertificateStatus(id, registry.CertStatus(in.NewStatus)); err != nil {
			return nil, translate("UpdateCertificate", err)
		}
		return &iot.UpdateCertificateOutput{}, nil
	})
}

// DetachPolicy detaches a policy from a certificate target (ARN). Detaching
// a policy that is not attached succeeds.
func (c *Client) DetachPolicy(ctx context.Context, in *iot.DetachPolicyInput, _ ...func(*iot.Options)) (*iot.DetachPolicyOutput, error) {
	target := aws.ToString(in.Target)
	return serve(ctx, c, "DetachPolicy", target, func() (*iot.DetachPolicyOutput, error) {
		if err := c.reg.DetachPolicy(aws.ToString(in.PolicyName), certID(target)); err != nil {
			return nil, translate("DetachPolicy", err)
		}
		return &iot.DetachPolicyOutput{}, nil
	})
}

// AttachPolicy attaches a policy to a certificate target (ARN).
func (c *Client) AttachPolicy(ctx context.Context, in *iot.AttachPolicyInput, _ ...func(*iot.Options)) (*iot.AttachPolicyOutput, error) {
	target := aws.ToString(in.Target)
	return serve(ctx, c, "AttachPolicy", target, func() (*iot.AttachPolicyOutput, error) {
		if err := c.reg.AttachPolicy(aws.ToString(in.PolicyName), certID(target)); err != nil {
			return nil, translate("AttachPolicy", err)
		}
		return &iot.AttachPolicyOutput{}, nil
	})
}

// AttachThingPrincipal attaches a certificate (ARN) to a thing.
func (c *Client) AttachThingPrincipal(ctx context.Context, in *iot.AttachThingPrincipalInput, _ ...func(*iot.Options)) (*iot.AttachThingPrincipalOutput, error) {
	name := aws.ToString(in.ThingName)
	return serve(ctx, c, "AttachThingPrincipal", name, func() (*iot.AttachThingPrincipalOutput, error) {
		if err := c.reg.AttachThingPrincipal(name, certID(aws.ToString(in.Principal))); err != nil {
			return nil, translate("AttachThingPrincipal", err)
		}
		return &iot.AttachThingPrincipalOutput{}, nil
	})
}

// DetachThingPrincipal detaches a certificate (ARN) from a thing.
func (c *Client) DetachThingPrincipal(ctx context.Context, in *iot.DetachThingPrincipalInput, _ ...func(*iot.Options)) (*iot.DetachThingPrincipalOutput, error) {
	name := aws.ToString(in.ThingName)
	return serve(ctx, c, "DetachThingPrincipal", name, func() (*iot.DetachThingPrincipalOutput, error) {
		if err := c.reg.DetachThingPrincipal(name, certID(aws.ToString(in.Principal))); err != nil {
			return nil, translate("DetachThingPrincipal", err)
		}
		return &iot.DetachThingPrincipalOutput{}, nil
	})
}

// RemoveThingFromThingGroup removes a thing from a group.
func (c *Client) RemoveThingFromThingGroup(ctx context.Context, in *iot.RemoveThingFromThingGroupInput, _ ...func(*iot.Options)) (*iot.RemoveThingFromThingGroupOutput, error) {
	name := aws.ToString(in.ThingName)
	return serve(ctx, c, "RemoveThingFromThingGroup", name, func() (*iot.RemoveThingFromThingGroupOutput, error) {
		if err := c.reg.RemoveThingFromGroup(name, aws.ToString(in.ThingGroupName)); err != nil {
			return nil, translate("RemoveThingFromThingGroup", err)
		}
		return &iot.RemoveThingFromThingGroupOutput{}, nil
	})
}

// DeleteThing deletes a thing. As in AWS, deleting a thing that does not
// exist succeeds, and a thing with attached principals cannot be deleted.
func (c *Client) DeleteThing(ctx context.Context, in *iot.DeleteThingInput, _ ...func(*iot.Options)) (*iot.DeleteThingOutput, error) {
	name := aws.ToString(in.ThingName)
	return serve(ctx, c, "DeleteThing", name, func() (*iot.DeleteThingOutput, error) {
		err := c.reg.DeleteThing(name)
		if errors.Is(err, registry.ErrNotFound) {
			err = nil
		}
		if err != nil {
			return nil, translate("DeleteThing", err)
		}
		return &iot.DeleteThingOutput{}, nil
	})
}

// DeleteCertificate deletes a certificate that is not ACTIVE and has no
// attachments (ForceDelete lifts the attachment rule, as in AWS).
func (c *Client) DeleteCertificate(ctx context.Context, in *iot.DeleteCertificateInput, _ ...func(*iot.Options)) (*iot.DeleteCertificateOutput, error) {
	id := aws.ToString(in.CertificateId)
	return serve(ctx, c, "DeleteCertificate", id, func() (*iot.DeleteCertificateOutput, error) {
		if err := c.reg.DeleteCertificate(id, in.ForceDelete); err != nil {
			return nil, translate("DeleteCertificate", err)
		}
		return &iot.DeleteCertificateOutput{}, nil
	})
}

// ListThingsInThingGroup lists a group's things in name order, in pages of
// MaxResults or SetPageSize.
func (c *Client) ListThingsInThingGroup(ctx context.Context, in *iot.ListThingsInThingGroupInput, _ ...func(*iot.Options)) (*iot.ListThingsInThingGroupOutput, error) {
	group := aws.ToString(in.ThingGroupName)
	return serve(ctx, c, "ListThingsInThingGroup", group, func() (*iot.ListThingsInThingGroupOutput, error) {
		things, err := c.reg.ThingsInGroup(group)
		if err != nil {
			return nil, translate("ListThingsInThingGroup", err)
		}
		sort.Strings(things)
		items, next, err := page(c, "ListThingsInThingGroup", things, aws.ToString(in.NextToken), aws.ToInt32(in.MaxResults), in.MaxResults != nil)
		if err != nil {
			return nil, err
		}
		return &iot.ListThingsInThingGroupOutput{Things: items, NextToken: optToken(next)}, nil
	})
}
