package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// RevokeRequest is the revoke Lambda's event (contracts: serial, or
// thingName instead).
type RevokeRequest struct {
	Serial    string `json:"serial,omitempty"`
	ThingName string `json:"thingName,omitempty"`
	Reason    string `json:"reason"`
	By        string `json:"by"`
}

// RevokeResponse is the revoke Lambda's answer.
type RevokeResponse struct {
	Serial         string `json:"serial"`
	ThingName      string `json:"thingName"`
	CertificateID  string `json:"certificateId"`
	State          string `json:"state"`
	AlreadyRevoked bool   `json:"alreadyRevoked"`
}

// maxReasonLen bounds a revocation reason (it is recorded in the
// registry).
const (
	maxReasonLen = 512
	maxByLen     = 128
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

// operatorName is who revokes, for the record: $FLEETCTL_OPERATOR, else
// the login name and host.
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
record becomes revoked with --reason, who (--by, default $FLEETCTL_OPERATOR or
user@host) and when. It is immediate (no allowlist deploy), and the next
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
				by = operatorName()
			}
			resp, err := f.Revoke(cmd.Context(), args[0], reason, by)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if g.output == "json" {
				return writeJSON(w, resp)
			}
			if resp.AlreadyRevoked {
				fmt.Fprintf(w, "%s was already revoked: nothing changed\n", firstNonEmpty(resp.Serial, args[0]))
			} else {
				fmt.Fprintf(w, "revoked %s: certificate revoked and detached, thing deleted, SSM off; recorded (reason %q, by %s)\n", firstNonEmpty(resp.Serial, args[0]), reason, by)
			}
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "serial:\t%s\nthing:\t%s\ncertificate:\t%s\nstate:\t%s\n", orDash(resp.Serial), orDash(resp.ThingName), orDash(resp.CertificateID), orDash(resp.State))
			if err := tw.Flush(); err != nil {
				return err
			}
			_, err = fmt.Fprintln(w, "to admit it again (a repaired or replaced board): list its serial with readmit=TOKEN in allowlist.txt and deploy")
			return err
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; recorded in the registry)")
	cmd.Flags().StringVar(&by, "by", "", "who revokes, for the record (default $FLEETCTL_OPERATOR or user@host)")
	return cmd
}
