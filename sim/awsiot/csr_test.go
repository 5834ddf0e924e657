package awsiot_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/lambdas/certrotate"
	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/iot-fleet/iot-fleet/sim/ca"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// The rotation Lambda runs against the simulator's control plane.
var _ certrotate.IoTAPI = (*awsiot.Issuer)(nil)

func csrPEM(t *testing.T, key any) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-x"}}, key)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func newIssuer(t *testing.T, validity time.Duration) (*awsiot.Issuer, *registry.Registry, *ca.CA) {
	t.Helper()
	authority, err := ca.New(ca.Options{DeviceCertValidity: validity})
	require.NoError(t, err)
	reg := registry.New(time.Now)
	return awsiot.NewIssuer(awsiot.New(reg, "aws", "local-1", "000000000000"), authority), reg, authority
}

func TestCreateCertificateFromCsrRegistersTheCertificate(t *testing.T) {
	ctx := context.Background()
	iss, reg, authority := newIssuer(t, 90*24*time.Hour)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	for name, key := range map[string]crypto.Signer{"ecdsa": ecKey, "rsa": rsaKey} {
		t.Run(name, func(t *testing.T) {
			out, err := iss.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{
				CertificateSigningRequest: aws.String(csrPEM(t, key)), SetAsActive: true,
			})
			require.NoError(t, err)
			id := aws.ToString(out.CertificateId)
			assert.Equal(t, "arn:aws:iot:local-1:000000000000:cert/"+id, aws.ToString(out.CertificateArn))

			block, _ := pem.Decode([]byte(aws.ToString(out.CertificatePem)))
			require.NotNil(t, block)
			leaf, err := x509.ParseCertificate(block.Bytes)
			require.NoError(t, err)
			assert.Equal(t, ca.CertificateID(block.Bytes), id)
			assert.True(t, leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()), "the CSR's key")
			_, err = leaf.Verify(x509.VerifyOptions{Roots: authority.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			require.NoError(t, err, "signed by the CA the broker trusts")
			assert.WithinDuration(t, time.Now().Add(90*24*time.Hour), leaf.NotAfter, time.Minute)

			cert, err := reg.Certificate(id)
			require.NoError(t, err)
			assert.Equal(t, registry.CertActive, cert.Status)
			assert.True(t, leaf.NotAfter.Equal(cert.NotAfter))

			desc, err := iss.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
			require.NoError(t, err)
			assert.Equal(t, types.CertificateStatusActive, desc.CertificateDescription.Status)
			assert.Equal(t, aws.ToString(out.CertificatePem), aws.ToString(desc.CertificateDescription.CertificatePem))
		})
	}
}

func TestCreateCertificateFromCsrInactiveAndRepeated(t *testing.T) {
	ctx := context.Background()
	iss, reg, _ := newIssuer(t, 0)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	csr := csrPEM(t, key)
	a, err := iss.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(csr)})
	require.NoError(t, err)
	cert, err := reg.Certificate(aws.ToString(a.CertificateId))
	require.NoError(t, err)
	assert.Equal(t, registry.CertInactive, cert.Status, "setAsActive false")

	// Each call is a new certificate, even for the same CSR (as in AWS).
	b, err := iss.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(csr), SetAsActive: true})
	require.NoError(t, err)
	assert.NotEqual(t, aws.ToString(a.CertificateId), aws.ToString(b.CertificateId))
	assert.Len(t, reg.Certificates(), 2)
}

func TestCreateCertificateFromCsrRefusesBadRequests(t *testing.T) {
	ctx := context.Background()
	iss, reg, _ := newIssuer(t, 0)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tampered := []byte(csrPEM(t, key))
	block, _ := pem.Decode(tampered)
	block.Bytes[len(block.Bytes)-3] ^= 0xff
	for name, csr := range map[string]string{
		"empty":     "",
		"not pem":   "hello",
		"weak key":  csrPEM(t, weak),
		"signature": string(pem.EncodeToMemory(block)),
		"cert type": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}})),
	} {
		_, err := iss.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(csr), SetAsActive: true})
		var invalid *types.InvalidRequestException
		require.True(t, errors.As(err, &invalid), "%s: %v", name, err)
	}
	assert.Empty(t, reg.Certificates())

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = iss.CreateCertificateFromCsr(cctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(csrPEM(t, key))})
	require.ErrorIs(t, err, context.Canceled)
}
