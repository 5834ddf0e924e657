package harness

import (
	"encoding/json"
	"fmt"
	neturl "net/url"
	"os"
	"path/filepath"

	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
	"github.com/iot-fleet/iot-fleet/sim/s3api"
)

// LocalAWS is the fleet's one local AWS endpoint (sim/stack's LocalAWS,
// as `fleet-sim serve` serves it: AWS IoT control and data plane, Lambda
// Invoke of the stack's real handlers, the registry table read-only over
// DynamoDB's API, S3 for the artifacts and config buckets), with its
// outputs written for operator tools (fleetctl --local OutputsDir).
type LocalAWS struct {
	// URL is the endpoint (AWS_ENDPOINT_URL).
	URL string
	// Outputs are the local stack's outputs, as fleet-sim serve writes
	// them to DIR/outputs.json; OutputsDir holds that file.
	Outputs    map[string]any
	OutputsDir string
	// ArtifactsHost is the host:port presigned artifact URLs point at
	// (an OTA device's ota.allowedHosts, with ota.allowHTTP).
	ArtifactsHost string
	// Store is the local S3.
	Store *s3api.Store
}

// ServeAWS writes the outputs of f's local AWS endpoint to
// f.Dir/aws/outputs.json and returns the endpoint. The stack serves it
// until f is closed.
func (f *Fleet) ServeAWS() (*LocalAWS, error) {
	a := f.Stack.AWS
	u, err := neturl.Parse(a.ArtifactsURL)
	if err != nil {
		return nil, fmt.Errorf("harness: artifacts URL: %w", err)
	}
	l := &LocalAWS{URL: a.URL, ArtifactsHost: u.Host, Store: a.Store, OutputsDir: filepath.Join(f.Dir, "aws")}
	if l.Outputs, err = f.Stack.Outputs(f.Dir); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	b, err := json.MarshalIndent(l.Outputs, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(l.OutputsDir, 0o700); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(l.OutputsDir, "outputs.json"), b, 0o644); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	return l, nil
}
