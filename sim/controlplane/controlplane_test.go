package controlplane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

var serials = []string{"10000000a1b2c3d4", "10000000a1b2c3d5", "10000000a1b2c3d6"}

// setup starts a local IoT Core with the given registered devices, serves
// its control plane on a test server and returns a real aws-sdk-go-v2 IoT
// client for it (SigV4-signed with dummy credentials, no retries so an
// error answer is seen as the SDK surfaces it).
func setup(t *testing.T, devices int) (*core.Core, *iot.Client, string, []string) {
	t.Helper()
	c, err := core.Start(context.Background(), core.Options{AllowedSerials: serials})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	srv := httptest.NewServer(c.ControlPlaneHandler())
	t.Cleanup(srv.Close)
	client := iot.New(iot.Options{
		BaseEndpoint: aws.String(srv.URL), Region: core.Region,
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDLOCAL", "secret", ""),
		RetryMaxAttempts: 1,
	})
	var things []string
	for _, s := range serials[:devices] {
		name, _, err := c.RegisterDevice(s)
		require.NoError(t, err)
		things = append(things, name)
	}
	return c, client, srv.URL, things
}

func TestThingsAndGroups(t *testing.T) {
	c, client, _, things := setup(t, 3)
	ctx := context.Background()
	group := c.Names().ThingGroup

	// ListThings pages with maxResults and nextToken.
	var listed []string
	var pages int
	for p := iot.NewListThingsPaginator(client, &iot.ListThingsInput{MaxResults: aws.Int32(2)}); p.HasMorePages(); pages++ {
		out, err := p.NextPage(ctx)
		require.NoError(t, err)
		for _, th := range out.Things {
			listed = append(listed, aws.ToString(th.ThingName))
			assert.Equal(t, "arn:aws:iot:local-1:000000000000:thing/"+aws.ToString(th.ThingName), aws.ToString(th.ThingArn))
		}
	}
	assert.Equal(t, things, listed)
	assert.Equal(t, 2, pages)
	out, err := client.ListThings(ctx, &iot.ListThingsInput{AttributeName: aws.String("serial"), AttributeValue: aws.String(serials[1])})
	require.NoError(t, err)
	require.Len(t, out.Things, 1)
	assert.Equal(t, things[1], aws.ToString(out.Things[0].ThingName))
	assert.Equal(t, map[string]string{"serial": serials[1]}, out.Things[0].Attributes)
	_, err = client.ListThings(ctx, &iot.ListThingsInput{NextToken: aws.String("bogus")})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	_, err = client.ListThings(ctx, &iot.ListThingsInput{MaxResults: aws.Int32(251)})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)

	d, err := client.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(things[0])})
	require.NoError(t, err)
	assert.Equal(t, things[0], aws.ToString(d.ThingName))
	assert.Equal(t, serials[0], d.Attributes["serial"])
	_, err = client.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("no-such-thing")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	var nf *types.ResourceNotFoundException
	assert.ErrorAs(t, err, &nf, "the SDK surfaces its typed error")

	// Thing groups.
	groups, err := client.ListThingGroups(ctx, &iot.ListThingGroupsInput{})
	require.NoError(t, err)
	require.Len(t, groups.ThingGroups, 1)
	assert.Equal(t, group, aws.ToString(groups.ThingGroups[0].GroupName))
	assert.Nil(t, groups.NextToken)
	none, err := client.ListThingGroups(ctx, &iot.ListThingGroupsInput{NamePrefixFilter: aws.String("zzz")})
	require.NoError(t, err)
	assert.Empty(t, none.ThingGroups)
	dg, err := client.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String(group)})
	require.NoError(t, err)
	assert.Equal(t, "arn:aws:iot:local-1:000000000000:thinggroup/"+group, aws.ToString(dg.ThingGroupArn))
	_, err = client.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String("nope")})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)

	members, err := client.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{ThingGroupName: aws.String(group), MaxResults: aws.Int32(2)})
	require.NoError(t, err)
	assert.Equal(t, things[:2], members.Things)
	require.NotNil(t, members.NextToken)
	members, err = client.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{ThingGroupName: aws.String(group), NextToken: members.NextToken})
	require.NoError(t, err)
	assert.Equal(t, things[2:], members.Things)
	assert.Nil(t, members.NextToken)

	_, err = client.RemoveThingFromThingGroup(ctx, &iot.RemoveThingFromThingGroupInput{ThingGroupName: aws.String(group), ThingName: aws.String(things[0])})
	require.NoError(t, err)
	members, err = client.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{ThingGroupName: aws.String(group)})
	require.NoError(t, err)
	assert.Equal(t, things[1:], members.Things)
	_, err = client.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupArn: dg.ThingGroupArn, ThingName: aws.String(things[0])})
	require.NoError(t, err)
	members, err = client.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{ThingGroupName: aws.String(group)})
	require.NoError(t, err)
	assert.Equal(t, things, members.Things)
	_, err = client.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("nope"), ThingName: aws.String(things[0])})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	_, err = client.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingName: aws.String(things[0])})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
}

func TestPrincipalsPoliciesAndDeleteThing(t *testing.T) {
	c, client, _, things := setup(t, 1)
	ctx := context.Background()
	thing := things[0]

	pr, err := client.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String(thing)})
	require.NoError(t, err)
	require.Len(t, pr.Principals, 1)
	certARN := pr.Principals[0]
	require.True(t, strings.HasPrefix(certARN, "arn:aws:iot:local-1:000000000000:cert/"), certARN)

	pol, err := client.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: aws.String(certARN)})
	require.NoError(t, err)
	require.Len(t, pol.Policies, 1)
	assert.Equal(t, c.Names().DevicePolicy, aws.ToString(pol.Policies[0].PolicyName))
	_, err = client.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: aws.String("arn:aws:iot:local-1:000000000000:cert/" + strings.Repeat("0", 64))})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	_, err = client.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: aws.String("arn:aws:iot:local-1:000000000000:thinggroup/x")})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)

	_, err = client.DetachPolicy(ctx, &iot.DetachPolicyInput{PolicyName: aws.String(c.Names().DevicePolicy), Target: aws.String(certARN)})
	require.NoError(t, err)
	pol, err = client.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: aws.String(certARN)})
	require.NoError(t, err)
	assert.Empty(t, pol.Policies)
	_, err = client.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("no-such-policy"), Target: aws.String(certARN)})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	_, err = client.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String(c.Names().DevicePolicy), Target: aws.String(certARN)})
	require.NoError(t, err)
	pol, err = client.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: aws.String(certARN)})
	require.NoError(t, err)
	require.Len(t, pol.Policies, 1)

	// A thing with a principal cannot be deleted; detached, it can; and
	// deleting it again succeeds, as in AWS.
	_, err = client.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String(thing)})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	_, err = client.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: aws.String(thing), Principal: aws.String(certARN)})
	require.NoError(t, err)
	pr, err = client.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String(thing)})
	require.NoError(t, err)
	assert.Empty(t, pr.Principals)
	_, err = client.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String(thing), Principal: aws.String(certARN)})
	require.NoError(t, err)
	pr, err = client.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String(thing)})
	require.NoError(t, err)
	assert.Equal(t, []string{certARN}, pr.Principals)
	_, err = client.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String("no-such-thing"), Principal: aws.String(certARN)})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	_, err = client.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: aws.String(thing), Principal: aws.String(certARN)})
	require.NoError(t, err)
	_, err = client.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String(thing)})
	require.NoError(t, err)
	_, err = client.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(thing)})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	_, err = client.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String(thing)})
	require.NoError(t, err)
}

func TestCertificates(t *testing.T) {
	c, client, _, _ := setup(t, 3)
	ctx := context.Background()
	want := c.Registry().Certificates() // oldest first

	var ids []string
	var pages int
	for p := iot.NewListCertificatesPaginator(client, &iot.ListCertificatesInput{PageSize: aws.Int32(2), AscendingOrder: true}); p.HasMorePages(); pages++ {
		out, err := p.NextPage(ctx)
		require.NoError(t, err)
		for _, cert := range out.Certificates {
			ids = append(ids, aws.ToString(cert.CertificateId))
			assert.Equal(t, types.CertificateStatusActive, cert.Status)
			require.NotNil(t, cert.CreationDate)
		}
	}
	var wantIDs []string
	for _, cert := range want {
		wantIDs = append(wantIDs, cert.ID)
	}
	assert.Equal(t, wantIDs, ids)
	assert.Equal(t, 2, pages)
	desc, err := client.ListCertificates(ctx, &iot.ListCertificatesInput{})
	require.NoError(t, err)
	require.Len(t, desc.Certificates, len(wantIDs))
	assert.Equal(t, wantIDs[len(wantIDs)-1], aws.ToString(desc.Certificates[0].CertificateId), "newest first by default")
	_, err = client.ListCertificates(ctx, &iot.ListCertificatesInput{Marker: aws.String("-1")})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)

	id := wantIDs[0]
	d, err := client.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	require.NoError(t, err)
	cd := d.CertificateDescription
	require.NotNil(t, cd)
	assert.Equal(t, id, aws.ToString(cd.CertificateId))
	assert.Equal(t, want[0].PEM, aws.ToString(cd.CertificatePem))
	assert.Equal(t, types.CertificateStatusActive, cd.Status)
	require.NotNil(t, cd.Validity)
	assert.WithinDuration(t, want[0].NotAfter, aws.ToTime(cd.Validity.NotAfter), time.Second)
	assert.WithinDuration(t, want[0].CreatedAt, aws.ToTime(cd.CreationDate), time.Second)
	_, err = client.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(strings.Repeat("a", 64))})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)

	_, err = client.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: types.CertificateStatusInactive})
	require.NoError(t, err)
	st, err := c.Registry().Certificate(id)
	require.NoError(t, err)
	assert.EqualValues(t, "INACTIVE", st.Status)
	_, err = client.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: types.CertificateStatusPendingActivation})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
	_, err = client.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(strings.Repeat("a", 64)), NewStatus: types.CertificateStatusRevoked})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", 404)
	_, err = client.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: types.CertificateStatusRevoked})
	require.NoError(t, err)
	_, err = client.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: types.CertificateStatusActive})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)
}

// TestUpdateCertificateRevokedDisconnectsTheDevice revokes, through the
// SDK, the certificate of a device connected over MQTT/TLS: the local IoT
// Core closes its connection and refuses it afterwards.
func TestUpdateCertificateRevokedDisconnectsTheDevice(t *testing.T) {
	c, client, _, _ := setup(t, 0)
	ctx := context.Background()
	thing, creds, err := c.RegisterDevice(serials[0])
	require.NoError(t, err)

	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(c.RootCAPEM()))
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	require.NoError(t, err)
	tlsCfg := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, ServerName: "127.0.0.1"}
	lost := make(chan error, 1)
	connect := func() paho.Client {
		opts := paho.NewClientOptions().AddBroker("tls://" + c.Endpoint()).SetClientID(thing).SetProtocolVersion(4).
			SetTLSConfig(tlsCfg).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
			SetConnectionLostHandler(func(_ paho.Client, err error) {
				select {
				case lost <- err:
				default:
				}
			})
		return paho.NewClient(opts)
	}
	dev := connect()
	tok := dev.Connect()
	require.True(t, tok.WaitTimeout(15*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { dev.Disconnect(0) })
	require.True(t, dev.IsConnectionOpen())

	_, err = client.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(creds.CertificateID), NewStatus: types.CertificateStatusRevoked})
	require.NoError(t, err)
	select {
	case <-lost:
	case <-time.After(15 * time.Second):
		t.Fatal("the revoked device's connection was not closed within 15s")
	}
	again := connect()
	tok = again.Connect()
	require.True(t, tok.WaitTimeout(15*time.Second))
	require.Error(t, tok.Error(), "a revoked certificate is refused")
	d, err := client.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(creds.CertificateID)})
	require.NoError(t, err)
	assert.Equal(t, types.CertificateStatusRevoked, d.CertificateDescription.Status)
}

func TestDescribeEndpointAndUnknownOperation(t *testing.T) {
	c, client, url, _ := setup(t, 0)
	ctx := context.Background()
	out, err := client.DescribeEndpoint(ctx, &iot.DescribeEndpointInput{EndpointType: aws.String("iot:Data-ATS")})
	require.NoError(t, err)
	host, _, _ := strings.Cut(c.Endpoint(), ":")
	assert.Equal(t, host, aws.ToString(out.EndpointAddress))
	_, err = client.DescribeEndpoint(ctx, &iot.DescribeEndpointInput{EndpointType: aws.String("iot:CredentialProvider")})
	testenv.RequireAPIError(t, err, "InvalidRequestException", 400)

	// An operation the local IoT Core does not serve (CreateThingType):
	// the SDK surfaces UnknownOperationException with a 404.
	_, err = client.CreateThingType(ctx, &iot.CreateThingTypeInput{ThingTypeName: aws.String("pi")})
	testenv.RequireAPIError(t, err, "UnknownOperationException", 404)
	assert.Contains(t, err.Error(), "does not serve POST /thing-types/pi")

	// A raw request without SigV4 is served too, with AWS's error header.
	resp, err := http.Get(url + "/no-such-path")
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, 404, resp.StatusCode)
	assert.Equal(t, "UnknownOperationException", resp.Header.Get("X-Amzn-ErrorType"))
}

// TestInjectedFaultsKeepAWSStatus: a fault injected into the in-process
// control plane reaches the SDK as AWS would send it.
func TestInjectedFaultsKeepAWSStatus(t *testing.T) {
	c, client, _, things := setup(t, 1)
	ctx := context.Background()
	c.IoT().FailNext("DescribeThing", things[0], &types.ThrottlingException{Message: aws.String("Rate exceeded")})
	_, err := client.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(things[0])})
	testenv.RequireAPIError(t, err, "ThrottlingException", 429)
	var th *types.ThrottlingException
	assert.ErrorAs(t, err, &th)
	_, err = client.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(things[0])})
	require.NoError(t, err, "the fault applied once")
}
