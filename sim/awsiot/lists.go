package awsiot

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// maxPage is AWS IoT's largest maxResults/pageSize (and its default page).
const maxPage = 250

// page returns the page of items that starts at token (the index of the
// next item, "" for the first page) and holds at most limit items (0: the
// Client's page size, else maxPage), and the token of the next page ("" on
// the last). A limit outside 1..250 or a token this Client did not hand
// out is an InvalidRequestException, as in AWS.
func page[T any](c *Client, op string, items []T, token string, limit int32, limitSet bool) ([]T, string, error) {
	if limitSet && (limit < 1 || limit > maxPage) {
		return nil, "", &types.InvalidRequestException{Message: aws.String(fmt.Sprintf("%s: maxResults %d is not within 1..%d", op, limit, maxPage))}
	}
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(items) {
			return nil, "", &types.InvalidRequestException{Message: aws.String(op + ": invalid nextToken")}
		}
		start = n
	}
	size := maxPage
	c.calls.mu.Lock()
	if c.pageSize > 0 {
		size = c.pageSize
	}
	c.calls.mu.Unlock()
	if limitSet {
		size = min(size, int(limit))
	}
	end := min(start+size, len(items))
	next := ""
	if end < len(items) {
		next = strconv.Itoa(end)
	}
	return items[start:end], next, nil
}

func optToken(s string) *string {
	if s == "" {
		return nil
	}
	return aws.String(s)
}

// ThingARN is the ARN of thing name.
func (c *Client) ThingARN(name string) string { return c.arnPrefix + "thing/" + name }

// ThingGroupARN is the ARN of thing group name.
func (c *Client) ThingGroupARN(name string) string { return c.arnPrefix + "thinggroup/" + name }

// ListThings lists things in name order, optionally those whose attribute
// AttributeName equals AttributeValue (or starts with it, with
// UsePrefixAttributeValue), in pages.
func (c *Client) ListThings(ctx context.Context, in *iot.ListThingsInput, _ ...func(*iot.Options)) (*iot.ListThingsOutput, error) {
	return serve(ctx, c, "ListThings", "", func() (*iot.ListThingsOutput, error) {
		if in.ThingTypeName != nil {
			return nil, &types.InvalidRequestException{Message: aws.String("ListThings: the local IoT Core has no thing types")}
		}
		attrName, attrValue := aws.ToString(in.AttributeName), aws.ToString(in.AttributeValue)
		if attrName == "" && attrValue != "" {
			return nil, &types.InvalidRequestException{Message: aws.String("ListThings: attributeValue needs attributeName")}
		}
		var match []types.ThingAttribute
		for _, th := range c.reg.Things() {
			if attrName != "" {
				v, ok := th.Attributes[attrName]
				if !ok || (in.UsePrefixAttributeValue && !strings.HasPrefix(v, attrValue)) || (!in.UsePrefixAttributeValue && attrValue != "" && v != attrValue) {
					continue
				}
			}
			match = append(match, types.ThingAttribute{
				ThingName: aws.String(th.Name), ThingArn: aws.String(c.ThingARN(th.Name)),
				Attributes: th.Attributes, Version: th.Version,
			})
		}
		items, next, err := page(c, "ListThings", match, aws.ToString(in.NextToken), aws.ToInt32(in.MaxResults), in.MaxResults != nil)
		if err != nil {
			return nil, err
		}
		return &iot.ListThingsOutput{Things: items, NextToken: optToken(next)}, nil
	})
}

// DescribeThing describes a thing.
func (c *Client) DescribeThing(ctx context.Context, in *iot.DescribeThingInput, _ ...func(*iot.Options)) (*iot.DescribeThingOutput, error) {
	name := aws.ToString(in.ThingName)
	return serve(ctx, c, "DescribeThing", name, func() (*iot.DescribeThingOutput, error) {
		th, err := c.reg.Thing(name)
		if err != nil {
			return nil, translate("DescribeThing", err)
		}
		return &iot.DescribeThingOutput{
			ThingName: aws.String(th.Name), ThingArn: aws.String(c.ThingARN(th.Name)), ThingId: aws.String(th.Name),
			Attributes: th.Attributes, Version: th.Version,
		}, nil
	})
}

// ListThingGroups lists thing groups in name order (NamePrefixFilter
// applies), in pages. The local IoT Core's groups have no parents.
func (c *Client) ListThingGroups(ctx context.Context, in *iot.ListThingGroupsInput, _ ...func(*iot.Options)) (*iot.ListThingGroupsOutput, error) {
	return serve(ctx, c, "ListThingGroups", "", func() (*iot.ListThingGroupsOutput, error) {
		if in.ParentGroup != nil && !c.reg.GroupExists(aws.ToString(in.ParentGroup)) {
			return nil, translate("ListThingGroups", fmt.Errorf("parent group %s: %w", aws.ToString(in.ParentGroup), registry.ErrNotFound))
		}
		var groups []types.GroupNameAndArn
		if in.ParentGroup == nil {
			for _, g := range c.reg.ThingGroups() {
				if strings.HasPrefix(g, aws.ToString(in.NamePrefixFilter)) {
					groups = append(groups, types.GroupNameAndArn{GroupName: aws.String(g), GroupArn: aws.String(c.ThingGroupARN(g))})
				}
			}
		}
		items, next, err := page(c, "ListThingGroups", groups, aws.ToString(in.NextToken), aws.ToInt32(in.MaxResults), in.MaxResults != nil)
		if err != nil {
			return nil, err
		}
		return &iot.ListThingGroupsOutput{ThingGroups: items, NextToken: optToken(next)}, nil
	})
}

// DescribeThingGroup describes a (static) thing group.
func (c *Client) DescribeThingGroup(ctx context.Context, in *iot.DescribeThingGroupInput, _ ...func(*iot.Options)) (*iot.DescribeThingGroupOutput, error) {
	name := aws.ToString(in.ThingGroupName)
	return serve(ctx, c, "DescribeThingGroup", name, func() (*iot.DescribeThingGroupOutput, error) {
		if !c.reg.GroupExists(name) {
			return nil, translate("DescribeThingGroup", fmt.Errorf("thing group %s: %w", name, registry.ErrNotFound))
		}
		return &iot.DescribeThingGroupOutput{
			ThingGroupName: aws.String(name), ThingGroupArn: aws.String(c.ThingGroupARN(name)), ThingGroupId: aws.String(name),
			Version: 1, Status: types.DynamicGroupStatusActive,
		}, nil
	})
}

// AddThingToThingGroup adds a thing to a group, by name or ARN.
func (c *Client) AddThingToThingGroup(ctx context.Context, in *iot.AddThingToThingGroupInput, _ ...func(*iot.Options)) (*iot.AddThingToThingGroupOutput, error) {
	thing := lastSegment(aws.ToString(in.ThingName), aws.ToString(in.ThingArn), ":thing/")
	group := lastSegment(aws.ToString(in.ThingGroupName), aws.ToString(in.ThingGroupArn), ":thinggroup/")
	return serve(ctx, c, "AddThingToThingGroup", thing, func() (*iot.AddThingToThingGroupOutput, error) {
		if thing == "" || group == "" {
			return nil, &types.InvalidRequestException{Message: aws.String("AddThingToThingGroup: a thing and a thing group (name or ARN) are required")}
		}
		if err := c.reg.AddThingToGroup(thing, group); err != nil {
			return nil, translate("AddThingToThingGroup", err)
		}
		return &iot.AddThingToThingGroupOutput{}, nil
	})
}

// lastSegment returns name, or else what follows marker in arn.
func lastSegment(name, arn, marker string) string {
	if name != "" {
		return name
	}
	if i := strings.LastIndex(arn, marker); i >= 0 {
		return arn[i+len(marker):]
	}
	return ""
}

// ListCertificates lists certificates by creation date (newest first
// unless AscendingOrder), in pages (Marker/PageSize).
func (c *Client) ListCertificates(ctx context.Context, in *iot.ListCertificatesInput, _ ...func(*iot.Options)) (*iot.ListCertificatesOutput, error) {
	return serve(ctx, c, "ListCertificates", "", func() (*iot.ListCertificatesOutput, error) {
		certs := c.reg.Certificates()
		if !in.AscendingOrder {
			for i, j := 0, len(certs)-1; i < j; i, j = i+1, j-1 {
				certs[i], certs[j] = certs[j], certs[i]
			}
		}
		all := make([]types.Certificate, 0, len(certs))
		for _, cert := range certs {
			all = append(all, types.Certificate{
				CertificateId: aws.String(cert.ID), CertificateArn: aws.String(c.CertificateARN(cert.ID)),
				Status: types.CertificateStatus(cert.Status), CreationDate: aws.Time(cert.CreatedAt),
				CertificateMode: types.CertificateModeDefault,
			})
		}
		items, next, err := page(c, "ListCertificates", all, aws.ToString(in.Marker), aws.ToInt32(in.PageSize), in.PageSize != nil)
		if err != nil {
			return nil, err
		}
		return &iot.ListCertificatesOutput{Certificates: items, NextMarker: optToken(next)}, nil
	})
}

// ListAttachedPolicies lists the policies attached to a certificate
// target (ARN), in pages (Marker/PageSize).
func (c *Client) ListAttachedPolicies(ctx context.Context, in *iot.ListAttachedPoliciesInput, _ ...func(*iot.Options)) (*iot.ListAttachedPoliciesOutput, error) {
	target := aws.ToString(in.Target)
	return serve(ctx, c, "ListAttachedPolicies", target, func() (*iot.ListAttachedPoliciesOutput, error) {
		if !strings.Contains(target, ":cert/") {
			return nil, &types.InvalidRequestException{Message: aws.String(fmt.Sprintf("ListAttachedPolicies: target %q is not a certificate ARN", target))}
		}
		cert, err := c.reg.Certificate(certID(target))
		if err != nil {
			return nil, translate("ListAttachedPolicies", err)
		}
		all := make([]types.Policy, 0, len(cert.Policies))
		for _, p := range cert.Policies {
			all = append(all, types.Policy{PolicyName: aws.String(p), PolicyArn: aws.String(c.arnPrefix + "policy/" + p)})
		}
		items, next, err := page(c, "ListAttachedPolicies", all, aws.ToString(in.Marker), aws.ToInt32(in.PageSize), in.PageSize != nil)
		if err != nil {
			return nil, err
		}
		return &iot.ListAttachedPoliciesOutput{Policies: items, NextMarker: optToken(next)}, nil
	})
}
