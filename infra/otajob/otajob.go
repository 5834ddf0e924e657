// Package otajob renders the AWS IoT job that installs a mender artifact
// from the stack's artifacts bucket on devices (docs/ota.md): the job
// document with the ${aws:iot:s3-presigned-url:...} placeholder that AWS
// IoT Jobs replaces by a presigned URL, signed with the stack's presign role
// (output otaPresignRoleArn), and the artifact's SHA-256 (the device
// installs that exact file or nothing: an older signed artifact cannot be
// substituted), and the whole CreateJob request as the JSON
// `aws iot create-job --cli-input-json file://job.json` reads.
package otajob

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// Operation is the job document operation the agent runs (device/ota).
const Operation = "mender_install"

// Defaults of Params.
const (
	DefaultExpiresInSec      = 3600
	DefaultInProgressMinutes = 120
	DefaultMaxPerMinute      = 10
	DefaultTargetSelection   = "SNAPSHOT"
)

var (
	bucketRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	keyRE     = regexp.MustCompile(`^[A-Za-z0-9!_.*'()-][A-Za-z0-9!_.*'()/-]*$`)
	jobIDRE   = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)
	roleARNRE = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,64}$`)
	targetRE  = regexp.MustCompile(`^arn:aws[a-z-]*:iot:[a-z0-9-]+:[0-9]{12}:(thing|thinggroup)/[a-zA-Z0-9:_-]{1,128}$`)
	sha256RE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Error names the parameter that is wrong.
type Error struct {
	Param   string
	Problem string
}

func (e *Error) Error() string { return fmt.Sprintf("ota job: %s: %s", e.Param, e.Problem) }

// Placeholder is the presigned-URL placeholder for an object of bucket.
func Placeholder(bucket, key string) (string, error) {
	if !bucketRE.MatchString(bucket) {
		return "", &Error{"bucket", fmt.Sprintf("%q is not an S3 bucket name", bucket)}
	}
	if len(key) > 1024 || !keyRE.MatchString(key) {
		return "", &Error{"key", fmt.Sprintf("%q: use an object key of letters, digits and !_.*'()/- (not starting with /), at most 1024 characters", key)}
	}
	return "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/" + bucket + "/" + key + "}", nil
}

// Document is the job document that installs s3://bucket/key, whose
// SHA-256 is sha256 (64 hex digits, required).
func Document(bucket, key, sha256 string) ([]byte, error) {
	url, err := Placeholder(bucket, key)
	if err != nil {
		return nil, err
	}
	sum := strings.ToLower(sha256)
	if !sha256RE.MatchString(sum) {
		return nil, &Error{"sha256", fmt.Sprintf("%q: want the artifact's SHA-256 as 64 hex digits (sha256sum FILE)", sha256)}
	}
	return json.Marshal(struct {
		Operation string `json:"operation"`
		URL       string `json:"url"`
		SHA256    string `json:"sha256"`
	}{Operation, url, sum})
}

// Params describe one OTA job.
type Params struct {
	// JobID is unique per account: letters, digits, '_' and '-'.
	JobID string
	// Targets are thing or thing group ARNs.
	Targets []string
	// Bucket and Key locate the .mender artifact (stack output
	// artifactsBucket).
	Bucket, Key string
	// SHA256 is the artifact's SHA-256 (64 hex digits, required).
	SHA256 string
	// PresignRoleArn is the stack output otaPresignRoleArn.
	PresignRoleArn string
	// ExpiresInSec is the presigned URL's lifetime, 60-3600 (default
	// 3600); it must cover the download and its retries.
	ExpiresInSec int64
	// InProgressMinutes fails an execution that stays IN_PROGRESS longer
	// (default 120; it must cover download, install and reboot).
	InProgressMinutes int64
	// MaxPerMinute bounds how many devices are notified per minute
	// (default 10).
	MaxPerMinute int32
	// Continuous keeps the job open for devices added to a target group
	// later (targetSelection CONTINUOUS instead of SNAPSHOT).
	Continuous bool
	// Description is shown in the console (optional).
	Description string
}

type presignedURLConfig struct {
	RoleArn      string `json:"roleArn"`
	ExpiresInSec int64  `json:"expiresInSec"`
}

type abortCriteria struct {
	FailureType               string  `json:"failureType"`
	Action                    string  `json:"action"`
	ThresholdPercentage       float64 `json:"thresholdPercentage"`
	MinNumberOfExecutedThings int32   `json:"minNumberOfExecutedThings"`
}

// createJobInput is the CreateJob request in the AWS CLI's JSON shape.
type createJobInput struct {
	JobID                      string             `json:"jobId"`
	Targets                    []string           `json:"targets"`
	Document                   string             `json:"document"`
	Description                string             `json:"description,omitempty"`
	PresignedURLConfig         presignedURLConfig `json:"presignedUrlConfig"`
	TargetSelection            string             `json:"targetSelection"`
	JobExecutionsRolloutConfig struct {
		MaximumPerMinute int32 `json:"maximumPerMinute"`
	} `json:"jobExecutionsRolloutConfig"`
	AbortConfig struct {
		CriteriaList []abortCriteria `json:"criteriaList"`
	} `json:"abortConfig"`
	TimeoutConfig struct {
		InProgressTimeoutInMinutes int64 `json:"inProgressTimeoutInMinutes"`
	} `json:"timeoutConfig"`
}

// CreateJobInput renders the CreateJob request for
// `aws iot create-job --cli-input-json file://job.json`. The rollout
// cancels the job when 20% of at least 5 executed devices failed.
func CreateJobInput(p Params) ([]byte, error) {
	if !jobIDRE.MatchString(p.JobID) {
		return nil, &Error{"jobId", fmt.Sprintf("%q: 1-64 letters, digits, '_' or '-'", p.JobID)}
	}
	if len(p.Targets) == 0 {
		return nil, &Error{"targets", "at least one thing or thing group ARN is required"}
	}
	for i, t := range p.Targets {
		if !targetRE.MatchString(t) {
			return nil, &Error{fmt.Sprintf("targets[%d]", i), fmt.Sprintf("%q is not a thing or thing group ARN", t)}
		}
	}
	if !roleARNRE.MatchString(p.PresignRoleArn) {
		return nil, &Error{"presignRoleArn", fmt.Sprintf("%q is not an IAM role ARN (stack output otaPresignRoleArn)", p.PresignRoleArn)}
	}
	if p.ExpiresInSec == 0 {
		p.ExpiresInSec = DefaultExpiresInSec
	}
	if p.ExpiresInSec < 60 || p.ExpiresInSec > 3600 {
		return nil, &Error{"expiresInSec", fmt.Sprintf("%d: AWS IoT accepts 60-3600", p.ExpiresInSec)}
	}
	if p.InProgressMinutes == 0 {
		p.InProgressMinutes = DefaultInProgressMinutes
	}
	if p.InProgressMinutes < 1 || p.InProgressMinutes > 10080 {
		return nil, &Error{"inProgressMinutes", fmt.Sprintf("%d: AWS IoT accepts 1-10080", p.InProgressMinutes)}
	}
	if p.MaxPerMinute == 0 {
		p.MaxPerMinute = DefaultMaxPerMinute
	}
	if p.MaxPerMinute < 1 || p.MaxPerMinute > 1000 {
		return nil, &Error{"maxPerMinute", fmt.Sprintf("%d: AWS IoT accepts 1-1000", p.MaxPerMinute)}
	}
	doc, err := Document(p.Bucket, p.Key, p.SHA256)
	if err != nil {
		return nil, err
	}
	in := createJobInput{
		JobID: p.JobID, Targets: p.Targets, Document: string(doc), Description: p.Description,
		PresignedURLConfig: presignedURLConfig{RoleArn: p.PresignRoleArn, ExpiresInSec: p.ExpiresInSec},
		TargetSelection:    DefaultTargetSelection,
	}
	if p.Continuous {
		in.TargetSelection = "CONTINUOUS"
	}
	in.JobExecutionsRolloutConfig.MaximumPerMinute = p.MaxPerMinute
	in.AbortConfig.CriteriaList = []abortCriteria{{FailureType: "FAILED", Action: "CANCEL", ThresholdPercentage: 20, MinNumberOfExecutedThings: 5}}
	in.TimeoutConfig.InProgressTimeoutInMinutes = p.InProgressMinutes
	return json.MarshalIndent(in, "", "  ")
}

// FileSHA256 returns the hex SHA-256 of the artifact file at path (what
// Document wants) and its size.
func FileSHA256(path string) (sum string, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("sha256 %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
