package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/iot-fleet/iot-fleet/sim/awsiot"
	"github.com/iot-fleet/iot-fleet/sim/controlplane"
	"github.com/iot-fleet/iot-fleet/sim/core"
)

// endpoint is the stack's own AWS IoT control-plane endpoint on a loopback
// port: sim/controlplane over the local IoT Core's control plane, with
// the rotation Lambda's certificate issuance. The Lambdas of the stack
// reach it with their real aws-sdk-go-v2 clients, as they reach AWS IoT.
type endpoint struct {
	url string
	srv *http.Server
	ln  net.Listener
}

func startEndpoint(c *core.Core, log *slog.Logger) (*endpoint, error) {
	h := controlplane.New(c.IoT(), awsiot.NewJobs(c.Jobs(), c.IoT()), c.Endpoint, log.With("component", "stack-control-plane"))
	h.ServeCertificateIssuance(awsiot.NewIssuer(c.IoT(), c.CA()))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("stack: control-plane endpoint: %w", err)
	}
	e := &endpoint{url: "http://" + ln.Addr().String(), ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		if err := e.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("stack control-plane endpoint stopped", "error", err)
		}
	}()
	return e, nil
}

func (e *endpoint) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return e.srv.Shutdown(ctx)
}

// newIoTClient is the Lambdas' IoT client for the endpoint: a real
// aws-sdk-go-v2 client, SigV4-signed with local credentials (the endpoint
// accepts and does not check them), with the SDK's standard retries as in
// AWS.
func newIoTClient(url string) *iot.Client {
	return iot.New(iot.Options{
		BaseEndpoint: aws.String(url), Region: core.Region,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDLOCALSTACK", "local-stack-secret", ""),
	})
}
