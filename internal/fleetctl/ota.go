package fleetctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/spf13/cobra"

	"github.com/iot-fleet/iot-fleet/infra/otajob"
)

// OTASpec is a full-system update to roll out.
type OTASpec struct {
	JobID string
	// ArtifactFile is a local .mender file to upload to the artifacts
	// bucket under Key; empty: Key already is in the bucket.
	ArtifactFile string
	Key          string
	// SHA256 of the artifact: required for an artifact already in the
	// bucket (the release's sha256sum; it pins the exact release); checked
	// against ArtifactFile when both are given.
	SHA256 string
	// Targets are thing or thing group ARNs (Fleet.Targets).
	Targets     []string
	Description string
	// ExpiresInSec is the presigned URL's lifetime (60-3600, default 3600).
	ExpiresInSec int64
	// Rollout, abort and timeout (JobSpec's); MaxPerMinute and
	// InProgressMinutes default to otajob's.
	Continuous            bool
	MaxPerMinute          int32
	AbortThresholdPercent float64
	AbortMinExecuted      int32
	InProgressMinutes     int64
}

// OTAPlan is what CreateOTA did (or, dry, would do).
type OTAPlan struct {
	JobID    string   `json:"jobId"`
	JobArn   string   `json:"jobArn,omitempty"`
	Bucket   string   `json:"bucket"`
	Key      string   `json:"key"`
	SHA256   string   `json:"sha256"`
	Uploaded bool     `json:"uploaded"`
	Targets  []string `json:"targets"`
	// Document is the rendered job document (with the presigned-URL
	// placeholder AWS IoT replaces per device).
	Document string `json:"document"`
	// CreateJob is the request as `aws iot create-job --cli-input-json`
	// reads it.
	CreateJob json.RawMessage `json:"createJob"`
}

var sha256HexRE = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)

// CreateOTA uploads the artifact (if a file is given), renders the job
// with infra/otajob (presigned-URL placeholder, the artifact's SHA-256,
// presign role, rollout, abort and timeout) and creates it. With dry it
// checks and renders but uploads and creates nothing.
func (f *Fleet) CreateOTA(ctx context.Context, spec OTASpec, dry bool) (OTAPlan, error) {
	bucket, err := f.Outputs.String(OutArtifactsBucket)
	if err != nil {
		return OTAPlan{}, err
	}
	role, err := f.Outputs.String(OutPresignRoleArn)
	if err != nil {
		return OTAPlan{}, err
	}
	sum := strings.ToLower(spec.SHA256)
	if sum != "" && !sha256HexRE.MatchString(sum) {
		return OTAPlan{}, withCode(ExitInvalid, fmt.Errorf("--sha256 %q: want the artifact's SHA-256 as 64 hex digits (sha256sum FILE)", spec.SHA256))
	}
	key := spec.Key
	switch {
	case spec.ArtifactFile != "":
		got, _, err := otajob.FileSHA256(spec.ArtifactFile)
		if err != nil {
			return OTAPlan{}, fmt.Errorf("artifact: %w", err)
		}
		if sum != "" && sum != got {
			return OTAPlan{}, withCode(ExitInvalid, fmt.Errorf("%s has SHA-256 %s, not the --sha256 %s given: not the release you meant; nothing was uploaded", spec.ArtifactFile, got, sum))
		}
		sum = got
		if key == "" {
			key = filepath.Base(spec.ArtifactFile)
		}
	case key == "":
		return OTAPlan{}, usagef("give --artifact FILE (uploaded) or --key KEY (already in the artifacts bucket) with --sha256")
	case sum == "":
		return OTAPlan{}, usagef("--key %s: --sha256 is required for an artifact already in the bucket (the release's sha256sum: it pins the exact artifact devices install)", key)
	}
	if !strings.HasSuffix(key, ".mender") {
		return OTAPlan{}, withCode(ExitInvalid, fmt.Errorf("artifact key %q: a mender artifact's name ends in .mender", key))
	}
	rendered, err := otajob.CreateJobInput(otajob.Params{
		JobID: spec.JobID, Targets: spec.Targets, Bucket: bucket, Key: key, SHA256: sum, PresignRoleArn: role,
		ExpiresInSec: spec.ExpiresInSec, InProgressMinutes: spec.InProgressMinutes, MaxPerMinute: spec.MaxPerMinute,
		Continuous: spec.Continuous, Description: spec.Description,
	})
	if err != nil {
		var oe *otajob.Error
		if errors.As(err, &oe) {
			return OTAPlan{}, withCode(ExitInvalid, err)
		}
		return OTAPlan{}, err
	}
	var in struct {
		Document           string `json:"document"`
		PresignedURLConfig struct {
			RoleArn      string `json:"roleArn"`
			ExpiresInSec int64  `json:"expiresInSec"`
		} `json:"presignedUrlConfig"`
		JobExecutionsRolloutConfig struct {
			MaximumPerMinute int32 `json:"maximumPerMinute"`
		} `json:"jobExecutionsRolloutConfig"`
		TimeoutConfig struct {
			InProgressTimeoutInMinutes int64 `json:"inProgressTimeoutInMinutes"`
		} `json:"timeoutConfig"`
	}
	if err := json.Unmarshal(rendered, &in); err != nil {
		return OTAPlan{}, fmt.Errorf("rendered job: %w", err)
	}
	job := JobSpec{
		JobID: spec.JobID, Document: []byte(in.Document), Targets: spec.Targets, Description: spec.Description, Continuous: spec.Continuous,
		MaxPerMinute: in.JobExecutionsRolloutConfig.MaximumPerMinute, InProgressMinutes: in.TimeoutConfig.InProgressTimeoutInMinutes,
		AbortThresholdPercent: spec.AbortThresholdPercent, AbortMinExecuted: spec.AbortMinExecuted,
		Presign: &types.PresignedUrlConfig{RoleArn: aws.String(in.PresignedURLConfig.RoleArn), ExpiresInSec: aws.Int64(in.PresignedURLConfig.ExpiresInSec)},
	}
	if _, err := job.input(); err != nil {
		return OTAPlan{}, err
	}
	plan := OTAPlan{JobID: spec.JobID, Bucket: bucket, Key: key, SHA256: sum, Targets: spec.Targets, Document: in.Document,
		CreateJob: withAbort(rendered, spec.AbortThresholdPercent, spec.AbortMinExecuted)}
	if dry {
		return plan, nil
	}
	if spec.ArtifactFile != "" {
		if err := f.upload(ctx, spec.ArtifactFile, bucket, key); err != nil {
			return plan, err
		}
		plan.Uploaded = true
	}
	if plan.JobArn, err = f.CreateJob(ctx, job); err != nil {
		return plan, err
	}
	return plan, nil
}

// withAbort sets the rendered request's abort rule to the one fleetctl
// creates (none when threshold is 0).
func withAbort(rendered []byte, threshold float64, minExecuted int32) json.RawMessage {
	var m map[string]any
	if json.Unmarshal(rendered, &m) != nil {
		return rendered
	}
	if threshold <= 0 {
		delete(m, "abortConfig")
	} else {
		m["abortConfig"] = map[string]any{"criteriaList": []map[string]any{{
			"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": threshold, "minNumberOfExecutedThings": minExecuted,
		}}}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return rendered
	}
	return b
}

func (f *Fleet) upload(ctx context.Context, path, bucket, key string) error {
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	f.progressf("uploading %s (%d bytes) to s3://%s/%s", path, st.Size(), bucket, key)
	_, err = f.S3.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: file, ContentLength: aws.Int64(st.Size()),
		ContentType: aws.String("application/octet-stream"),
	})
	if err != nil {
		return fmt.Errorf("upload s3://%s/%s: %w", bucket, key, err)
	}
	return nil
}

func newOTACommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ota",
		Short: "Full-system updates: create an OTA job, watch it",
		Long: `ota rolls a mender artifact out to devices (docs/ota.md): "ota create" uploads
(or references) the artifact in the stack's artifacts bucket and creates the
AWS IoT job that installs it; "ota status|watch JOB" shows each device's
progress (downloading, installing, rebooting, verifying, committed, or
rolled_back/failed with the reason).`,
	}
	cmd.AddCommand(newOTACreateCommand(g), newWatchCommand(g, "status", true), newWatchCommand(g, "watch", true))
	return cmd
}

func newOTACreateCommand(g *globalFlags) *cobra.Command {
	var (
		spec     OTASpec
		targets  targetFlags
		rollout  rolloutFlags
		watch    bool
		dry      bool
		timeout  time.Duration
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create (--artifact FILE | --key KEY --sha256 SUM) [--group G | --thing T ...]",
		Short: "Upload or reference a mender artifact and create the OTA job",
		Long: `create uploads --artifact FILE to the stack's artifacts bucket (key: --key, default
the file's name) and hashes it, or references --key KEY already in the bucket
with its --sha256 (the release's sha256sum: devices install that exact file or
nothing). It renders the job with infra/otajob: the document with AWS IoT's
presigned-URL placeholder and the SHA-256, presignedUrlConfig with the stack's
otaPresignRoleArn, the rollout rate, the abort rule and the in-progress timeout,
and creates the job for the targets (default: the stack's thing group).
--dry-run prints the CreateJob request and uploads and creates nothing.

` + exitCodesHelp + ` A bad artifact, SHA-256 or setting is 3 and creates nothing.`,
		Args: cobraArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.validate(); err != nil {
				return err
			}
			if spec.JobID == "" {
				base := spec.Key
				if base == "" {
					base = spec.ArtifactFile
				}
				base = strings.TrimSuffix(filepath.Base(base), ".mender")
				spec.JobID = "ota-" + regexp.MustCompile(`[^a-zA-Z0-9_-]+`).ReplaceAllString(base, "-")
				if len(spec.JobID) > 48 {
					spec.JobID = spec.JobID[:48]
				}
				spec.JobID += "-" + time.Now().UTC().Format("20060102-150405")
			}
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if spec.Targets, err = f.Targets(ctx, targets.groups, targets.things); err != nil {
				return err
			}
			spec.Continuous, spec.MaxPerMinute, spec.AbortThresholdPercent, spec.AbortMinExecuted, spec.InProgressMinutes =
				rollout.continuous, rollout.maxPerMinute, rollout.abortThreshold, rollout.abortMinExecuted, rollout.inProgressMinutes
			plan, err := f.CreateOTA(ctx, spec, dry)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if dry {
				if g.output == "json" {
					return writeJSON(w, plan)
				}
				_, err := fmt.Fprintf(w, "dry run: nothing uploaded or created. The CreateJob request (aws iot create-job --cli-input-json file://job.json):\n%s\n", plan.CreateJob)
				return err
			}
			if g.output == "json" {
				if err := writeJSON(w, plan); err != nil {
					return err
				}
			} else {
				verb := "referenced"
				if plan.Uploaded {
					verb = "uploaded"
				}
				fmt.Fprintf(w, "artifact s3://%s/%s (%s), sha256 %s\n", plan.Bucket, plan.Key, verb, plan.SHA256)
				if err := printCreated(w, "table", plan.JobID, plan.JobArn, plan.Targets, "ota"); err != nil {
					return err
				}
			}
			if !watch {
				return nil
			}
			if interval > 0 {
				f.Poll = interval
			}
			return watchAndReport(cmd, g, f, plan.JobID, timeout)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&spec.ArtifactFile, "artifact", "", "mender artifact file to upload to the artifacts bucket")
	fl.StringVar(&spec.Key, "key", "", "object key in the artifacts bucket (default: the artifact's file name)")
	fl.StringVar(&spec.SHA256, "sha256", "", "the artifact's SHA-256 (required with --key alone; checked against --artifact)")
	fl.StringVar(&spec.JobID, "job-id", "", "job id (default ota-<artifact>-<UTC time>)")
	fl.StringVar(&spec.Description, "description", "", "job description")
	fl.Int64Var(&spec.ExpiresInSec, "url-expires", otajob.DefaultExpiresInSec, "presigned URL lifetime in seconds, 60-3600 (must cover the download and its retries)")
	fl.BoolVar(&dry, "dry-run", false, "render and print the CreateJob request; upload and create nothing")
	fl.BoolVar(&watch, "watch", false, "watch the job until every device finished")
	fl.DurationVar(&timeout, "timeout", 2*time.Hour, "with --watch: give up watching after this long (exit 5)")
	fl.DurationVar(&interval, "interval", 5*time.Second, "with --watch: polling interval")
	targets.register(cmd)
	rollout.register(cmd, otajob.DefaultMaxPerMinute, 20, 5, otajob.DefaultInProgressMinutes)
	return cmd
}
