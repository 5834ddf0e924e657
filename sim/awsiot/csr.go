package awsiot

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/iot-fleet/iot-fleet/sim/ca"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// Issuer is a Client that also issues certificates: the control plane of
// the certificate-rotation Lambda (lambdas/certrotate.IoTAPI), with
// CreateCertificateFromCsr signed by the local CA so that the broker
// accepts the certificates it issues.
type Issuer struct {
	*Client
	ca *ca.CA
}

// NewIssuer returns c issuing certificates signed by authority.
func NewIssuer(c *Client, authority *ca.CA) *Issuer { return &Issuer{Client: c, ca: authority} }

// CreateCertificateFromCsr issues a certificate for the CSR's public key
// and registers it, ACTIVE when SetAsActive is set and INACTIVE otherwise,
// with its notAfter. As in AWS, a CSR that cannot be parsed, is not signed
// by its key, or has a key AWS IoT does not accept is an
// InvalidRequestException, and every call creates a new certificate.
//
// The call is recorded and can be failed like the Client's (FailNext with
// an empty key).
func (i *Issuer) CreateCertificateFromCsr(ctx context.Context, in *iot.CreateCertificateFromCsrInput, _ ...func(*iot.Options)) (*iot.CreateCertificateFromCsrOutput, error) {
	return serve(ctx, i.Client, "CreateCertificateFromCsr", "", func() (*iot.CreateCertificateFromCsrOutput, error) {
		return i.createCertificateFromCsr(in)
	})
}

func (i *Issuer) createCertificateFromCsr(in *iot.CreateCertificateFromCsrInput) (*iot.CreateCertificateFromCsrOutput, error) {
	csr := aws.ToString(in.CertificateSigningRequest)
	if csr == "" {
		return nil, fmt.Errorf("CreateCertificateFromCsr: %w", &types.InvalidRequestException{Message: aws.String("certificateSigningRequest is required")})
	}
	iss, err := i.ca.SignCSR([]byte(csr))
	if errors.Is(err, ca.ErrInvalidCSR) {
		return nil, fmt.Errorf("CreateCertificateFromCsr: %w", &types.InvalidRequestException{Message: aws.String(err.Error())})
	}
	if err != nil {
		return nil, fmt.Errorf("CreateCertificateFromCsr: %w", &types.InternalFailureException{Message: aws.String(err.Error())})
	}
	status := registry.CertInactive
	if in.SetAsActive {
		status = registry.CertActive
	}
	if err := i.reg.RegisterCertificate(iss.ID, iss.PEM, status, iss.Cert.NotAfter); err != nil {
		return nil, translate("CreateCertificateFromCsr", err)
	}
	return &iot.CreateCertificateFromCsrOutput{
		CertificateId:  aws.String(iss.ID),
		CertificateArn: aws.String(i.CertificateARN(iss.ID)),
		CertificatePem: aws.String(iss.PEM),
	}, nil
}
