package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/testenv"
	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/iot-fleet/iot-fleet/sim/controlplane"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

// CreateCertificateFromCsr and DeleteCertificate, as the rotation Lambda
// calls them with the real SDK client.
func TestCertificateIssuance(t *testing.T) {
	c, err := core.Start(context.Background(), core.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	h := controlplane.New(c.IoT(), awsiot.NewJobs(c.Jobs(), c.IoT()), c.Endpoint, nil)
	h.ServeCertificateIssuance(awsiot.NewIssuer(c.IoT(), c.CA()))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	client := iot.New(iot.Options{
		BaseEndpoint: aws.String(srv.URL), Region: core.Region,
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDLOCAL", "secret", ""),
		RetryMaxAttempts: 1,
	})
	ctx := context.Background()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, key)
	require.NoError(t, err)
	csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))

	out, err := client.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(csr), SetAsActive: true})
	require.NoError(t, err)
	id := aws.ToString(out.CertificateId)
	assert.Equal(t, "arn:aws:iot:local-1:000000000000:cert/"+id, aws.ToString(out.CertificateArn))
	block, _ := pem.Decode([]byte(aws.ToString(out.CertificatePem)))
	require.NotNil(t, block)
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	assert.True(t, cert.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey), "issued for the CSR's key")
	desc, err := client.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: out.CertificateId})
	require.NoError(t, err)
	assert.Equal(t, types.CertificateStatusActive, desc.CertificateDescription.Status)

	_, err = client.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String("not a csr")})
	testenv.RequireAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)

	// An ACTIVE certificate cannot be deleted; an INACTIVE one can.
	_, err = client.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: out.CertificateId})
	require.Error(t, err)
	_, err = client.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: out.CertificateId, NewStatus: types.CertificateStatusInactive})
	require.NoError(t, err)
	_, err = client.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: out.CertificateId})
	require.NoError(t, err)
	_, err = client.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: out.CertificateId})
	testenv.RequireAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
}
