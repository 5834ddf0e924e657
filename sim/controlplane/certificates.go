package controlplane

import (
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/iot-fleet/iot-fleet/sim/awsiot"
)

// ServeCertificateIssuance adds the certificate calls of the rotation
// Lambda (lambdas/certrotate) to h: CreateCertificateFromCsr
// (POST /certificates?setAsActive=…, body {"certificateSigningRequest"})
// issued by iss (signed by the local CA, so the broker accepts the
// certificate) and DeleteCertificate (DELETE /certificates/{certificateId}
// ?forceDelete=…). Call it once, before serving.
func (h *Handler) ServeCertificateIssuance(iss *awsiot.Issuer) {
	h.mux.HandleFunc("POST /certificates", op(h, "CreateCertificateFromCsr", func(r *http.Request, in *iot.CreateCertificateFromCsrInput) error {
		var body struct{ CertificateSigningRequest *string }
		if err := readBody(r, &body); err != nil {
			return err
		}
		in.CertificateSigningRequest = body.CertificateSigningRequest
		var err error
		in.SetAsActive, err = boolQuery(r, "setAsActive")
		if err != nil {
			return err
		}
		return requireField("certificateSigningRequest", body.CertificateSigningRequest)
	}, iss.CreateCertificateFromCsr))
	h.mux.HandleFunc("DELETE /certificates/{certificateId}", op(h, "DeleteCertificate", func(r *http.Request, in *iot.DeleteCertificateInput) error {
		in.CertificateId = aws.String(r.PathValue("certificateId"))
		var err error
		in.ForceDelete, err = boolQuery(r, "forceDelete")
		return err
	}, iss.DeleteCertificate))
}
