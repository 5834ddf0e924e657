// Package protocol is the single source of the MQTT topic names and JSON
// payloads exchanged between the cloud (AWS IoT Core, the Lambdas, the local
// IoT Core simulator) and the device agent. docs/protocol.md documents the
// same names; every component imports them from here instead of retyping
// strings.
//
// Topic design follows AWS's "Designing MQTT topics for AWS IoT Core"
// guidance: AWS reserved topics start with $aws/, device data flows on
// dt/<application>/<thing-name>/<type> and commands on
// cmd/<application>/<thing-name>/<type>, with the thing name in a fixed
// position so IoT policies can pin it with ${iot:Connection.Thing.ThingName}.
package protocol

import (
	"encoding/json"
	"strings"
)

// Application is the second topic level of every project-defined topic.
const Application = "fleet"

// Fleet provisioning (AWS reserved topics, JSON payload format).
const (
	CreateCertFromCSRTopic         = "$aws/certificates/create-from-csr/json"
	CreateCertFromCSRAcceptedTopic = CreateCertFromCSRTopic + "/accepted"
	CreateCertFromCSRRejectedTopic = CreateCertFromCSRTopic + "/rejected"

	CreateKeysAndCertTopic         = "$aws/certificates/create/json"
	CreateKeysAndCertAcceptedTopic = CreateKeysAndCertTopic + "/accepted"
	CreateKeysAndCertRejectedTopic = CreateKeysAndCertTopic + "/rejected"
)

// RegisterThingTopic is the topic a device publishes its RegisterThing
// request on for the provisioning template named template.
func RegisterThingTopic(template string) string {
	return "$aws/provisioning-templates/" + template + "/provision/json"
}

// RegisterThingAcceptedTopic answers a successful RegisterThing.
func RegisterThingAcceptedTopic(template string) string {
	return RegisterThingTopic(template) + "/accepted"
}

// RegisterThingRejectedTopic answers a failed RegisterThing.
func RegisterThingRejectedTopic(template string) string {
	return RegisterThingTopic(template) + "/rejected"
}

// ClaimClientIDPrefix prefixes the MQTT client id a device uses while it is
// connected with the shared claim certificate. The claim policy only allows
// client ids with this prefix.
const ClaimClientIDPrefix = "provision-"

// ClaimClientID is the MQTT client id used with the claim certificate.
func ClaimClientID(serial string) string { return ClaimClientIDPrefix + serial }

// Provisioning template parameter names.
const (
	ParamSerialNumber  = "SerialNumber"
	ParamCertificateID = "AWS::IoT::Certificate::Id"
)

// CreateCertFromCSRRequest is the payload of CreateCertificateFromCsr.
type CreateCertFromCSRRequest struct {
	CertificateSigningRequest string `json:"certificateSigningRequest"`
}

// CreateCertResponse is the accepted payload of CreateCertificateFromCsr and
// of CreateKeysAndCertificate (the latter also carries the private key).
type CreateCertResponse struct {
	CertificateID             string `json:"certificateId"`
	CertificatePEM            string `json:"certificatePem"`
	PrivateKey                string `json:"privateKey,omitempty"`
	CertificateOwnershipToken string `json:"certificateOwnershipToken"`
}

// RegisterThingRequest is the payload of RegisterThing.
type RegisterThingRequest struct {
	CertificateOwnershipToken string            `json:"certificateOwnershipToken"`
	Parameters                map[string]string `json:"parameters"`
}

// RegisterThingResponse is the accepted payload of RegisterThing.
type RegisterThingResponse struct {
	DeviceConfiguration map[string]string `json:"deviceConfiguration"`
	ThingName           string            `json:"thingName"`
}

// ErrorResponse is the rejected payload of the fleet provisioning MQTT API.
type ErrorResponse struct {
	StatusCode   int    `json:"statusCode,omitempty"`
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
}

// JobsErrorResponse is the rejected payload of the Jobs MQTT API, which
// names its fields differently from fleet provisioning.
type JobsErrorResponse struct {
	Code        string `json:"code"`
	Message     string `json:"message"`
	ClientToken string `json:"clientToken,omitempty"`
	Timestamp   int64  `json:"timestamp,omitempty"`
	// ExecutionState is set on VersionMismatch and InvalidStateTransition.
	ExecutionState *JobExecutionState `json:"executionState,omitempty"`
}

// Error codes AWS uses in ErrorResponse and JobsErrorResponse.
const (
	ErrCodeThrottling       = "Throttling"
	ErrCodeInvalidRequest   = "InvalidRequest"
	ErrCodeInvalidPayload   = "InvalidPayload"
	ErrCodeInternalError    = "InternalError"
	ErrCodeResourceNotFound = "ResourceNotFound"
	// ErrCodeInvalidToken is RegisterThing's answer to a certificate
	// ownership token it no longer accepts (expired, already used, empty).
	ErrCodeInvalidToken           = "InvalidCertificateOwnershipToken"
	ErrCodeInvalidTopic           = "InvalidTopic"
	ErrCodeInvalidJSON            = "InvalidJson"
	ErrCodeInvalidStateTransition = "InvalidStateTransition"
	ErrCodeVersionMismatch        = "VersionMismatch"
	ErrCodeTerminalStateReached   = "TerminalStateReached"
	ErrCodeRequestThrottled       = "RequestThrottled"
	ErrCodeServiceUnavailable     = "ServiceUnavailable"
	// ErrCodeAccessDenied is what fleet provisioning answers when the
	// pre-provisioning hook denied the device (statusCode 403).
	ErrCodeAccessDenied = "AccessDenied"
)

// Jobs MQTT API (AWS reserved topics).

func jobsPrefix(thing string) string { return "$aws/things/" + thing + "/jobs" }

// JobsNotifyNextTopic carries the next pending job execution of thing.
func JobsNotifyNextTopic(thing string) string { return jobsPrefix(thing) + "/notify-next" }

// JobsNotifyTopic carries the list of pending job executions of thing.
func JobsNotifyTopic(thing string) string { return jobsPrefix(thing) + "/notify" }

// JobsStartNextTopic is StartNextPendingJobExecution.
func JobsStartNextTopic(thing string) string { return jobsPrefix(thing) + "/start-next" }

// JobsGetPendingTopic is GetPendingJobExecutions.
func JobsGetPendingTopic(thing string) string { return jobsPrefix(thing) + "/get" }

// JobsDescribeTopic is DescribeJobExecution for jobID ("$next" is allowed).
func JobsDescribeTopic(thing, jobID string) string { return jobsPrefix(thing) + "/" + jobID + "/get" }

// JobsUpdateTopic is UpdateJobExecution for jobID.
func JobsUpdateTopic(thing, jobID string) string { return jobsPrefix(thing) + "/" + jobID + "/update" }

// Accepted and Rejected append the response suffixes to a request topic.
func Accepted(requestTopic string) string { return requestTopic + "/accepted" }

// Rejected is the rejected-response topic of requestTopic.
func Rejected(requestTopic string) string { return requestTopic + "/rejected" }

// Job execution statuses.
type JobStatus string

const (
	JobQueued     JobStatus = "QUEUED"
	JobInProgress JobStatus = "IN_PROGRESS"
	JobSucceeded  JobStatus = "SUCCEEDED"
	JobFailed     JobStatus = "FAILED"
	JobRejected   JobStatus = "REJECTED"
	JobTimedOut   JobStatus = "TIMED_OUT"
	JobRemoved    JobStatus = "REMOVED"
	JobCanceled   JobStatus = "CANCELED"
)

// Terminal reports whether s is a terminal job execution status.
func (s JobStatus) Terminal() bool {
	switch s {
	case JobSucceeded, JobFailed, JobRejected, JobTimedOut, JobRemoved, JobCanceled:
		return true
	}
	return false
}

// StatusDetails limits enforced by AWS IoT Jobs.
const (
	MaxStatusDetailsEntries    = 10
	MaxStatusDetailsValueBytes = 1024
)

// JobExecution is a job execution as the Jobs MQTT API returns it.
//
// JobDocument is the document's JSON text exactly as it appears in the
// response: it is never decoded into Go values on its way to the device's
// parser (device/jobs/jobdoc), which alone decides whether it is valid.
// Decoding it here would hide duplicate keys (encoding/json keeps the last),
// change its size, and make a document with an undecodable value (such as
// the number 1e999) fail the whole response, so that the device could not
// even tell which job to reject.
type JobExecution struct {
	JobID                    string            `json:"jobId"`
	ThingName                string            `json:"thingName,omitempty"`
	JobDocument              json.RawMessage   `json:"jobDocument,omitempty"`
	Status                   JobStatus         `json:"status"`
	StatusDetails            map[string]string `json:"statusDetails,omitempty"`
	QueuedAt                 int64             `json:"queuedAt,omitempty"`
	StartedAt                int64             `json:"startedAt,omitempty"`
	LastUpdatedAt            int64             `json:"lastUpdatedAt,omitempty"`
	VersionNumber            int64             `json:"versionNumber"`
	ExecutionNumber          int64             `json:"executionNumber,omitempty"`
	ApproximateSecondsBefore int64             `json:"approximateSecondsBeforeTimedOut,omitempty"`
}

// JobExecutionState is the short execution state in update responses.
type JobExecutionState struct {
	Status        JobStatus         `json:"status"`
	StatusDetails map[string]string `json:"statusDetails,omitempty"`
	VersionNumber int64             `json:"versionNumber"`
}

// NextJobMessage is published on notify-next, and answers start-next and
// DescribeJobExecution ($next) in its Execution field.
type NextJobMessage struct {
	Timestamp   int64         `json:"timestamp"`
	Execution   *JobExecution `json:"execution,omitempty"`
	ClientToken string        `json:"clientToken,omitempty"`
}

// StartNextRequest is StartNextPendingJobExecution.
type StartNextRequest struct {
	StatusDetails        map[string]string `json:"statusDetails,omitempty"`
	StepTimeoutInMinutes int64             `json:"stepTimeoutInMinutes,omitempty"`
	ClientToken          string            `json:"clientToken,omitempty"`
}

// UpdateJobRequest is UpdateJobExecution.
type UpdateJobRequest struct {
	Status                   JobStatus         `json:"status"`
	StatusDetails            map[string]string `json:"statusDetails,omitempty"`
	ExpectedVersion          int64             `json:"expectedVersion,omitempty"`
	StepTimeoutInMinutes     int64             `json:"stepTimeoutInMinutes,omitempty"`
	IncludeJobExecutionState bool              `json:"includeJobExecutionState,omitempty"`
	IncludeJobDocument       bool              `json:"includeJobDocument,omitempty"`
	ExecutionNumber          int64             `json:"executionNumber,omitempty"`
	ClientToken              string            `json:"clientToken,omitempty"`
}

// UpdateJobAccepted answers a successful UpdateJobExecution. JobDocument is
// raw JSON text, as in JobExecution.
type UpdateJobAccepted struct {
	ExecutionState *JobExecutionState `json:"executionState,omitempty"`
	JobDocument    json.RawMessage    `json:"jobDocument,omitempty"`
	Timestamp      int64              `json:"timestamp"`
	ClientToken    string             `json:"clientToken,omitempty"`
}

// Project-defined topics: cmd/fleet/<thing>/<type> (cloud → device) and
// dt/fleet/<thing>/<type> (device → cloud).

// CommandTopic is the topic the cloud sends command kind to thing on.
func CommandTopic(thing, kind string) string {
	return "cmd/" + Application + "/" + thing + "/" + kind
}

// DataTopic is the topic thing publishes data of kind on.
func DataTopic(thing, kind string) string {
	return "dt/" + Application + "/" + thing + "/" + kind
}

// ThingFromTopic returns the thing-name segment of a cmd/ or dt/ topic and
// the kind after it, or ok=false if topic is not a project topic.
func ThingFromTopic(topic string) (thing, kind string, ok bool) {
	parts := strings.SplitN(topic, "/", 4)
	if len(parts) != 4 || (parts[0] != "cmd" && parts[0] != "dt") || parts[1] != Application || parts[2] == "" || parts[3] == "" {
		return "", "", false
	}
	return parts[2], parts[3], true
}

// Kinds of project-defined messages (the last topic levels).
const (
	// KindOTAProgress (dt): OTA download/install progress.
	KindOTAProgress = "ota/progress"
	// KindRotateRequest (cmd): the cloud asks the device to rotate.
	KindRotateRequest = "rotate/request"
	// KindRotateCSR (dt): the device's CSR for a new certificate.
	KindRotateCSR = "rotate/csr"
	// KindRotateCert (cmd): the new certificate, or a rejection.
	KindRotateCert = "rotate/cert"
	// KindRotateConfirm (dt): the device connected with the new certificate
	// (or reports failure).
	KindRotateConfirm = "rotate/confirm"
	// KindSSM (cmd): activate or deactivate the SSM agent.
	KindSSM = "ssm"
	// KindSSMStatus (dt): the SSM agent's status on the device.
	KindSSMStatus = "ssm/status"
	// KindStatus (dt): agent status (version, uptime) published on connect.
	KindStatus = "status"
)

// PreProvisioningHookRequest is the event AWS IoT fleet provisioning sends
// to the pre-provisioning hook Lambda.
type PreProvisioningHookRequest struct {
	ClaimCertificateID string            `json:"claimCertificateId"`
	CertificateID      string            `json:"certificateId"`
	CertificatePEM     string            `json:"certificatePem"`
	TemplateARN        string            `json:"templateArn"`
	ClientID           string            `json:"clientId"`
	Parameters         map[string]string `json:"parameters"`
}

// PreProvisioningHookResponse is the hook's answer.
type PreProvisioningHookResponse struct {
	AllowProvisioning  bool              `json:"allowProvisioning"`
	ParameterOverrides map[string]string `json:"parameterOverrides,omitempty"`
}

// Certificate rotation (docs/protocol.md, "Certificate rotation"). The cloud
// takes the thing name from the topic, never from these payloads.

// RotateRequest (cmd/fleet/<thing>/rotate/request) asks the device to rotate.
type RotateRequest struct {
	RotationID string `json:"rotationId"`
	// KeyAlgorithm is "ecdsa-p256" or "rsa-2048"; empty keeps the device's
	// configured algorithm.
	KeyAlgorithm string `json:"keyAlgorithm,omitempty"`
	Timestamp    int64  `json:"ts"`
}

// RotateCSR (dt/fleet/<thing>/rotate/csr) carries the CSR of a key the device
// generated for rotation RotationID.
type RotateCSR struct {
	RotationID string `json:"rotationId"`
	CSR        string `json:"csr"`
	Timestamp  int64  `json:"ts"`
}

// RotateCert (cmd/fleet/<thing>/rotate/cert) returns the new certificate, or
// an error code and message when the cloud refused the CSR.
type RotateCert struct {
	RotationID     string `json:"rotationId"`
	CertificateID  string `json:"certificateId,omitempty"`
	CertificatePEM string `json:"certificatePem,omitempty"`
	ErrorCode      string `json:"errorCode,omitempty"`
	ErrorMessage   string `json:"errorMessage,omitempty"`
	Timestamp      int64  `json:"ts"`
}

// Rotation confirmation statuses.
const (
	RotateConfirmed = "connected"
	RotateFailed    = "failed"
)

// RotateConfirm (dt/fleet/<thing>/rotate/confirm) tells the cloud the device
// connected with the new certificate (Status "connected", published over the
// new connection) or gave up and fell back to the old one (Status "failed").
type RotateConfirm struct {
	RotationID    string `json:"rotationId"`
	CertificateID string `json:"certificateId"`
	Status        string `json:"status"`
	Reason        string `json:"reason,omitempty"`
	Timestamp     int64  `json:"ts"`
}

// SSM on demand (docs/protocol.md, "AWS Systems Manager on demand").

// SSM command actions.
const (
	SSMActivate   = "activate"
	SSMDeactivate = "deactivate"
)

// SSMCommand (cmd/fleet/<thing>/ssm) activates or deactivates the SSM agent.
// The activation code is a secret: the device uses it once to register and
// never logs it or writes it to disk in clear.
type SSMCommand struct {
	RequestID      string `json:"requestId"`
	Action         string `json:"action"`
	ActivationID   string `json:"activationId,omitempty"`
	ActivationCode string `json:"activationCode,omitempty"`
	Region         string `json:"region,omitempty"`
	ExpiresAt      int64  `json:"expiresAt,omitempty"`
	Timestamp      int64  `json:"ts"`
}

// SSM agent states reported by the device.
const (
	SSMStateInstalling  = "installing"
	SSMStateRegistered  = "registered"
	SSMStateDeactivated = "deactivated"
	SSMStateFailed      = "failed"
)

// SSMStatus (dt/fleet/<thing>/ssm/status) reports the SSM agent's state.
type SSMStatus struct {
	RequestID         string `json:"requestId"`
	State             string `json:"state"`
	ManagedInstanceID string `json:"managedInstanceId,omitempty"`
	Reason            string `json:"reason,omitempty"`
	Timestamp         int64  `json:"ts"`
}
