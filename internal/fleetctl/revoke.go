package fleetctl

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/spf13/cobra"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/lambdas/revoke"
)

// RevokeRequest and RevokeResponse are the revoke Lambda's event and
// answer.
type (
	RevokeRequest  = revoke.Request
	RevokeResponse = revoke.Response
)

// The bounds of a revocation's reason and by, as the registry records
// them.
const (
	maxReasonLen = registry.MaxRevokeReason
	maxByLen     = registry.MaxRevokedBy
)

// Revoke revokes a device now through the stack's revoke Lambda: its
// certificate REVOKED, detached, its thing deleted, SSM off; recorded
// with reason and by, and not re-admitted by the next allowlist deploy
// until a readmit=TOKEN line is deployed. device is a serial or a thing
// name.
func (f *Fleet) Revoke(ctx context.Context, device, reason, by string) (RevokeResponse, error) {
	reason = strings.TrimSpace(reason)
	switch {
	case strings.TrimSpace(device) == "":
		return RevokeResponse{}, usagef("a device (serial or thing name) is required")
	case reason == "":
		return RevokeResponse{}, usagef("--reason is required: revocation is permanent and is recorded with its reason")
	case len(reason) > maxReasonLen:
		return RevokeResponse{}, usagef("--reason is %d characters; at most %d", len(reason), maxReasonLen)
	case strings.ContainsFunc(reason, func(r rune) bool { return r < ' ' || r == 0x7f }):
		return RevokeResponse{}, usagef("--reason contains control characters")
	case by == "" || len(by) > maxByLen:
		return RevokeResponse{}, usagef("--by must name who revokes, at most %d characters", maxByLen)
	}
	req := RevokeRequest{Reason: reason, By: by}
	d, err := f.findDevice(ctx, device)
	switch {
	case err == nil:
		req.Serial = d.Serial
	case errors.Is(err, errNoDevice):
		// Not in the registry by serial or thing name: the Lambda answers
		// for an unknown device.
		req.ThingName = device
	default:
		return RevokeResponse{}, err
	}
	var resp RevokeResponse
	err = f.invoke(ctx, OutRevoke, req, &resp)
	return resp, err
}

// RevokedBy is who fleetctl records as asking for a revocation when --by
// is not given: the caller's AWS identity, the ARN sts GetCallerIdentity
// answers with the credentials fleetctl uses. When STS does not answer
// (the local IoT Core has no STS), it is the OS user (operatorName) and
// note says so; by is self-declared either way (docs/security.md).
func (f *Fleet) RevokedBy(ctx context.Context) (by, note string) {
	why := "no STS client"
	if f.STS != nil {
		cctx, cancel := context.WithTimeout(ctx, stsTimeout)
		defer cancel()
		out, err := f.STS.GetCallerIdentity(cctx, &sts.GetCallerIdentityInput{})
		switch {
		case err != nil:
			why = "sts GetCallerIdentity: " + err.Error()
		case len(aws.ToString(out.Arn)) > maxByLen:
			why = fmt.Sprintf("your identity's ARN is longer than %d characters", maxByLen)
		case aws.ToString(out.Arn) == "":
			why = "sts GetCallerIdentity answered no ARN"
		default:
			return aws.ToString(out.Arn), ""
		}
	}
	by = operatorName()
	return by, fmt.Sprintf("note: your AWS identity could not be read (%s); recording by=%s, your OS user name (pass --by to name yourself)", why, by)
}

// stsTimeout bounds the identity look-up of RevokedBy.
const stsTimeout = 10 * time.Second

// operatorName is who revokes, for the record, when STS cannot say:
// $FLEETCTL_OPERATOR, else the login name and host.
func operatorName() string {
	if s := os.Getenv("FLEETCTL_OPERATOR"); s != "" {
		return s
	}
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		name += "@" + h
	}
	if len(name) > maxByLen {
		name = name[:maxByLen]
	}
	return name
}

func newRevokeCommand(g *globalFlags) *cobra.Command {
	var reason, by string
	cmd := &cobra.Command{
		Use:   "revoke DEVICE --reason R",
		Short: "Emergency: revoke a device now (certificate, thing, SSM), recorded with a reason",
		Long: `revoke invokes the stack's revoke Lambda for DEVICE (a serial or a thing name):
the registry record moves to revoking, the certificate is REVOKED (its
connection is closed) and detached, the thing deleted, SSM turned off, and the
record becomes revoked with --reason, who (--by, default the ARN of your AWS
identity from sts GetCallerIdentity; where STS does not answer, e.g. the local
IoT Core, $FLEETCTL_OPERATOR or user@host, with a note) and when. Revoking a
revoked device records the request and checks AWS IoT again (a certificate
found active is revoked and reported). It is immediate (no allowlist deploy), and the next
allowlist deploy does not re-admit the device, even if its serial is still
listed, until a readmit=TOKEN line for it is deployed (docs/admission.md).
Revocation is permanent; --reason is required.

` + exitCodesHelp,
		Args: cobraArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return usagef("--reason is required: revocation is permanent and is recorded with its reason")
			}
			f, err := g.fleet(cmd)
			if err != nil {
				return err
			}
			if by == "" {
				var note string
				if by, note = f.RevokedBy(cmd.Context()); note != "" {
					fmt.Fprintln(cmd.ErrOrStderr(), note)
				}
			}
			resp, err := f.Revoke(cmd.Context(), args[0], reason, by)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if g.output == "json" {
				return writeJSON(w, resp)
			}
			return WriteRevoke(w, cmp.Or(resp.Serial, args[0]), strings.TrimSpace(reason), by, resp)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; recorded in the registry)")
	cmd.Flags().StringVar(&by, "by", "", "who revokes, for the record (default your AWS identity's ARN; without STS $FLEETCTL_OPERATOR or user@host)")
	return cmd
}

// WriteRevoke prints the revoke Lambda's answer for a person: what
// happened to device (its serial), recorded with reason and by.
func WriteRevoke(w io.Writer, device, reason, by string, resp RevokeResponse) error {
	var b strings.Builder
	if resp.AlreadyRevoked {
		fmt.Fprintf(&b, "%s was already revoked: this request is recorded (reason %q, by %s) and holds the serial out of allowlist deploys\n", device, reason, by)
		if n := len(resp.RevokedCertificates); n > 0 {
			fmt.Fprintf(&b, "WARNING: %d certificate(s) of this revoked device were not REVOKED in AWS IoT (re-activated behind the registry's back?); revoked and detached them now: %s\n",
				n, strings.Join(resp.RevokedCertificates, ", "))
		} else {
			b.WriteString("AWS IoT checked again: every certificate of the device is REVOKED, the thing is gone, SSM is off\n")
		}
	} else {
		fmt.Fprintf(&b, "revoked %s: certificate revoked and detached, thing deleted, SSM off; recorded (reason %q, by %s)\n", device, reason, by)
	}
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "serial:\t%s\nthing:\t%s\ncertificate:\t%s\nstate:\t%s\n", orDash(resp.Serial), orDash(resp.ThingName), orDash(resp.CertificateID), orDash(resp.State))
	if err := tw.Flush(); err != nil {
		return err
	}
	b.WriteString("to admit it again (a repaired or replaced board): list its serial with readmit=TOKEN, a token never used for this serial, in allowlist.txt and deploy\n")
	_, err := io.WriteString(w, b.String())
	return err
}
