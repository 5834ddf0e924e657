// Package policy builds the AWS IoT policy documents of the fleet: the claim
// policy attached to the shared provisioning-claim certificate and the device
// policy attached to every device certificate. The Pulumi program declares
// exactly these documents and the local IoT Core enforces exactly these
// documents, so a policy mistake fails the end-to-end tests.
package policy

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/iot-fleet/iot-fleet/internal/protocol"
)

// ThingNameVar is the IoT policy variable for the connected thing's name.
const ThingNameVar = "${iot:Connection.Thing.ThingName}"

// Document is an AWS IoT policy document.
type Document struct {
	Version   string      `json:"Version"`
	Statement []Statement `json:"Statement"`
}

// Statement is one statement of a Document.
type Statement struct {
	Sid       string                       `json:"Sid,omitempty"`
	Effect    string                       `json:"Effect"`
	Action    []string                     `json:"Action"`
	Resource  []string                     `json:"Resource"`
	Condition map[string]map[string]string `json:"Condition,omitempty"`
}

// JSON renders d as a policy document string.
func (d Document) JSON() string {
	b, err := json.Marshal(d)
	if err != nil { // cannot happen: Document holds only strings
		panic(fmt.Sprintf("policy: marshal: %v", err))
	}
	return string(b)
}

// Parse reads a policy document.
func Parse(s string) (Document, error) {
	var d Document
	if err := json.Unmarshal([]byte(s), &d); err != nil {
		return Document{}, fmt.Errorf("parse policy document: %w", err)
	}
	return d, nil
}

// Params locate the policy's resources.
type Params struct {
	Partition    string // "aws"
	Region       string // e.g. "eu-west-1"
	AccountID    string // 12 digits
	TemplateName string // fleet provisioning template name
}

func (p Params) validate() error {
	var missing []string
	for name, v := range map[string]string{"Partition": p.Partition, "Region": p.Region, "AccountID": p.AccountID, "TemplateName": p.TemplateName} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("policy params: missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// ARN returns the IoT ARN of kind/name (kind is client, topic or topicfilter).
func (p Params) ARN(kind, name string) string {
	return fmt.Sprintf("arn:%s:iot:%s:%s:%s/%s", p.Partition, p.Region, p.AccountID, kind, name)
}

// Claim is the policy of the provisioning-claim certificate: connect with a
// provisioning client id, and use only CreateCertificateFromCsr and this
// template's RegisterThing. Nothing else.
func Claim(p Params) (Document, error) {
	if err := p.validate(); err != nil {
		return Document{}, err
	}
	csr := protocol.CreateCertFromCSRTopic
	reg := protocol.RegisterThingTopic(p.TemplateName)
	return Document{
		Version: "2012-10-17",
		Statement: []Statement{
			{
				Sid:      "ConnectForProvisioning",
				Effect:   "Allow",
				Action:   []string{"iot:Connect"},
				Resource: []string{p.ARN("client", protocol.ClaimClientIDPrefix+"*")},
			},
			{
				Sid:      "RequestCertificateAndRegister",
				Effect:   "Allow",
				Action:   []string{"iot:Publish"},
				Resource: []string{p.ARN("topic", csr), p.ARN("topic", reg)},
			},
			{
				Sid:      "ReceiveProvisioningAnswers",
				Effect:   "Allow",
				Action:   []string{"iot:Receive"},
				Resource: []string{p.ARN("topic", csr+"/*"), p.ARN("topic", reg+"/*")},
			},
			{
				Sid:      "SubscribeProvisioningAnswers",
				Effect:   "Allow",
				Action:   []string{"iot:Subscribe"},
				Resource: []string{p.ARN("topicfilter", csr+"/*"), p.ARN("topicfilter", reg+"/*")},
			},
		},
	}, nil
}

// Device is the policy of every device certificate. The client id must be
// the thing name the certificate is attached to, and the device may only use
// its own Jobs topics, its own cmd/ and dt/ topics and its own named shadow
// protocol.AgentShadowName (requests update, get and delete; answers on
// their accepted, rejected, delta and documents topics). Another thing's
// shadow, another shadow name of its own and the classic shadow are
// denied.
func Device(p Params) (Document, error) {
	if err := p.validate(); err != nil {
		return Document{}, err
	}
	thing := ThingNameVar
	jobs := "$aws/things/" + thing + "/jobs"
	cmd := "cmd/" + protocol.Application + "/" + thing
	dt := "dt/" + protocol.Application + "/" + thing
	shadow := protocol.NamedShadowPrefix(thing, protocol.AgentShadowName)
	return Document{
		Version: "2012-10-17",
		Statement: []Statement{
			{
				Sid:       "ConnectAsAttachedThing",
				Effect:    "Allow",
				Action:    []string{"iot:Connect"},
				Resource:  []string{p.ARN("client", thing)},
				Condition: map[string]map[string]string{"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
			},
			{
				Sid:      "JobsAndDeviceData",
				Effect:   "Allow",
				Action:   []string{"iot:Publish"},
				Resource: []string{p.ARN("topic", jobs+"/*"), p.ARN("topic", dt+"/*")},
			},
			{
				Sid:      "ReceiveJobsAndCommands",
				Effect:   "Allow",
				Action:   []string{"iot:Receive"},
				Resource: []string{p.ARN("topic", jobs+"/*"), p.ARN("topic", cmd+"/*")},
			},
			{
				Sid:      "SubscribeJobsAndCommands",
				Effect:   "Allow",
				Action:   []string{"iot:Subscribe"},
				Resource: []string{p.ARN("topicfilter", jobs+"/*"), p.ARN("topicfilter", cmd+"/*")},
			},
			{
				Sid:    "OwnShadowRequests",
				Effect: "Allow",
				Action: []string{"iot:Publish"},
				Resource: []string{
					p.ARN("topic", protocol.ShadowUpdateTopic(thing, protocol.AgentShadowName)),
					p.ARN("topic", protocol.ShadowGetTopic(thing, protocol.AgentShadowName)),
					p.ARN("topic", protocol.ShadowDeleteTopic(thing, protocol.AgentShadowName)),
				},
			},
			{
				Sid:      "ReceiveOwnShadow",
				Effect:   "Allow",
				Action:   []string{"iot:Receive"},
				Resource: []string{p.ARN("topic", shadow+"/*")},
			},
			{
				Sid:      "SubscribeOwnShadow",
				Effect:   "Allow",
				Action:   []string{"iot:Subscribe"},
				Resource: []string{p.ARN("topicfilter", shadow+"/*")},
			},
		},
	}, nil
}
