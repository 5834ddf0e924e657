// Command ota-job renders the AWS IoT job that installs a mender artifact
// (docs/ota.md), from the stack outputs:
//
//	go run ./infra/cmd/ota-job -job-id rpi-2024-06-dev-1 \
//	  -bucket "$(pulumi stack output artifactsBucket)" -key rpi-2024.06.mender \
//	  -artifact rpi-2024.06.mender \
//	  -role-arn "$(pulumi stack output otaPresignRoleArn)" \
//	  -target "$(aws iot describe-thing-group --thing-group-name "$(pulumi stack output thingGroup)" --query thingGroupArn --output text)" \
//	  > job.json
//	aws iot create-job --cli-input-json file://job.json
//
// -artifact FILE (the signed .mender file that was uploaded) puts its
// SHA-256 into the document; -sha256 HEX gives it directly. With -document
// it prints only the job document (for --document or an S3 document
// source).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/iot-fleet/iot-fleet/infra/otajob"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// targets collects repeated -target flags.
type targets []string

func (t *targets) String() string     { return strings.Join(*t, ",") }
func (t *targets) Set(v string) error { *t = append(*t, v); return nil }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ota-job", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var p otajob.Params
	var tg targets
	documentOnly := fs.Bool("document", false, "print only the job document")
	fs.StringVar(&p.JobID, "job-id", "", "job id (letters, digits, _ and -)")
	fs.StringVar(&p.Bucket, "bucket", "", "artifacts bucket (stack output artifactsBucket)")
	fs.StringVar(&p.Key, "key", "", "object key of the .mender artifact")
	artifact := fs.String("artifact", "", "the .mender file uploaded as -key: its SHA-256 goes into the document")
	fs.StringVar(&p.SHA256, "sha256", "", "the artifact's SHA-256 (64 hex digits), instead of -artifact")
	fs.StringVar(&p.PresignRoleArn, "role-arn", "", "presign role ARN (stack output otaPresignRoleArn)")
	fs.Var(&tg, "target", "thing or thing group ARN (repeatable)")
	fs.Int64Var(&p.ExpiresInSec, "expires", otajob.DefaultExpiresInSec, "presigned URL lifetime in seconds (60-3600)")
	fs.Int64Var(&p.InProgressMinutes, "in-progress-minutes", otajob.DefaultInProgressMinutes, "fail executions IN_PROGRESS longer than this")
	maxPerMinute := fs.Int("max-per-minute", otajob.DefaultMaxPerMinute, "devices notified per minute")
	fs.BoolVar(&p.Continuous, "continuous", false, "also target devices added to the group later")
	fs.StringVar(&p.Description, "description", "", "job description")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ota-job: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	p.Targets = tg
	if *maxPerMinute < 1 || *maxPerMinute > 1000 {
		fmt.Fprintf(stderr, "ota-job: -max-per-minute: %d: AWS IoT accepts 1-1000\n", *maxPerMinute)
		return 2
	}
	p.MaxPerMinute = int32(*maxPerMinute)
	if *artifact != "" {
		sum, _, err := otajob.FileSHA256(*artifact)
		if err != nil {
			fmt.Fprintf(stderr, "ota-job: -artifact: %v\n", err)
			return 1
		}
		if p.SHA256 != "" && !strings.EqualFold(p.SHA256, sum) {
			fmt.Fprintf(stderr, "ota-job: -sha256 %s is not the SHA-256 of -artifact %s (%s)\n", p.SHA256, *artifact, sum)
			return 1
		}
		p.SHA256 = sum
	}
	var out []byte
	var err error
	if *documentOnly {
		out, err = otajob.Document(p.Bucket, p.Key, p.SHA256)
	} else {
		out, err = otajob.CreateJobInput(p)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ota-job: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", out)
	return 0
}
