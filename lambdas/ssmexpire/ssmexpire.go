// Package ssmexpire is the scheduled Lambda that makes sure no SSM
// activation code stays valid and no device stays "activating" forever
// (docs/ssm.md, "Expiry"). Every run:
//
//  1. lists the activations of the stack's managed-instance role
//     (DescribeActivations, filter IamRole) and deletes those tagged for
//     this project and environment that are expired or used up, resetting
//     the device's record if it was still waiting on that activation;
//  2. scans the registry for records still activating whose activation
//     expired (deleted, record reset) or whose reservation never got an
//     activation within the grace period (record reset).
//
// Records stuck in "deactivating" are reported, not changed: finishing a
// deactivation is the toggle's job (run deactivate again).
package ssmexpire

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
)

// SSMAPI is the part of the Systems Manager client the sweep uses.
type SSMAPI interface {
	DescribeActivations(ctx context.Context, in *ssm.DescribeActivationsInput, optFns ...func(*ssm.Options)) (*ssm.DescribeActivationsOutput, error)
	DeleteActivation(ctx context.Context, in *ssm.DeleteActivationInput, optFns ...func(*ssm.Options)) (*ssm.DeleteActivationOutput, error)
}

// Config configures a Handler.
type Config struct {
	State               ssmstate.Store
	SSM                 SSMAPI
	ManagedInstanceRole string
	Environment         string
	ThingNamePrefix     string
	// ReserveGrace: see ssmtoggle.DefaultReserveGrace.
	ReserveGrace time.Duration
	Now          func() time.Time
	Logger       *slog.Logger
}

// Summary is one run's result.
type Summary struct {
	ActivationsDeleted int      `json:"activations_deleted"`
	RecordsReset       int      `json:"records_reset"`
	StuckDeactivating  []string `json:"stuck_deactivating,omitempty"`
	Errors             []string `json:"errors,omitempty"`
}

// Handler is the sweep.
type Handler struct {
	c Config
}

// New validates c.
func New(c Config) (*Handler, error) {
	if c.State == nil || c.SSM == nil || c.ManagedInstanceRole == "" || c.Environment == "" || c.ThingNamePrefix == "" {
		return nil, errors.New("ssmexpire: State, SSM, ManagedInstanceRole, Environment and ThingNamePrefix are required")
	}
	if c.ReserveGrace <= 0 {
		c.ReserveGrace = ssmtoggle.DefaultReserveGrace
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Handler{c: c}, nil
}

// Handle runs one sweep. The event (an EventBridge schedule) is not used.
// It returns an error listing what failed, after doing all it could.
func (h *Handler) Handle(ctx context.Context, _ any) (Summary, error) {
	var s Summary
	fail := func(err error) { s.Errors = append(s.Errors, err.Error()) }
	now := h.c.Now()

	var next *string
	for {
		out, err := h.c.SSM.DescribeActivations(ctx, &ssm.DescribeActivationsInput{
			Filters: []ssmtypes.DescribeActivationsFilter{{
				FilterKey: ssmtypes.DescribeActivationsFilterKeysIamRole, FilterValues: []string{h.c.ManagedInstanceRole},
			}},
			NextToken: next,
		})
		if err != nil {
			fail(fmt.Errorf("describe activations: %w", err))
			break
		}
		for _, a := range out.ActivationList {
			if err := h.sweepActivation(ctx, a, now, &s); err != nil {
				fail(err)
			}
		}
		if aws.ToString(out.NextToken) == "" {
			break
		}
		next = out.NextToken
	}

	err := ssmstate.ScanAllPending(ctx, h.c.State, func(r ssmstate.Record) error {
		if err := h.sweepRecord(ctx, r, now, &s); err != nil {
			fail(err)
		}
		return nil
	})
	if err != nil {
		fail(err)
	}
	h.c.Logger.Info("ssm expiry sweep done", "activationsDeleted", s.ActivationsDeleted, "recordsReset", s.RecordsReset,
		"stuckDeactivating", len(s.StuckDeactivating), "errors", len(s.Errors))
	if len(s.Errors) > 0 {
		return s, fmt.Errorf("ssmexpire: %d error(s): %s", len(s.Errors), strings.Join(s.Errors, "; "))
	}
	return s, nil
}

func (h *Handler) sweepActivation(ctx context.Context, a ssmtypes.Activation, now time.Time, s *Summary) error {
	tags := map[string]string{}
	for _, t := range a.Tags {
		tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	if tags[ssmtoggle.TagProject] != ssmtoggle.ProjectName || tags[ssmtoggle.TagEnvironment] != h.c.Environment {
		return nil
	}
	id := aws.ToString(a.ActivationId)
	expired := a.Expired || (a.ExpirationDate != nil && !a.ExpirationDate.After(now))
	usedUp := a.RegistrationLimit != nil && aws.ToInt32(a.RegistrationsCount) >= aws.ToInt32(a.RegistrationLimit)
	if !expired && !usedUp {
		return nil
	}
	if err := ssmtoggle.DeleteActivation(ctx, h.c.SSM, id); err != nil {
		return err
	}
	s.ActivationsDeleted++
	h.c.Logger.Info("ssm activation deleted", "activationId", id, "expired", expired, "usedUp", usedUp)
	if usedUp {
		return nil
	}
	serial, ok := strings.CutPrefix(tags[ssmtoggle.TagThingName], h.c.ThingNamePrefix)
	if !ok || serial == "" {
		return nil
	}
	return h.reset(ctx, ssmstate.Guard{ActivationID: id, State: ssmstate.StateActivating}, serial, s)
}

func (h *Handler) sweepRecord(ctx context.Context, r ssmstate.Record, now time.Time, s *Summary) error {
	switch {
	case r.State == ssmstate.StateDeactivating:
		if now.Sub(r.UpdatedAt) > h.c.ReserveGrace {
			s.StuckDeactivating = append(s.StuckDeactivating, r.Serial)
			h.c.Logger.Warn("ssm deactivation unfinished; run the toggle's deactivate again", "serial", r.Serial)
		}
		return nil
	case r.ActivationID != "" && !r.ActivationExpiry.After(now):
		if err := ssmtoggle.DeleteActivation(ctx, h.c.SSM, r.ActivationID); err != nil {
			return err
		}
		return h.reset(ctx, ssmstate.Guard{ActivationID: r.ActivationID, RequestID: r.RequestID, State: ssmstate.StateActivating}, r.Serial, s)
	case r.ActivationID == "" && now.Sub(r.UpdatedAt) > h.c.ReserveGrace:
		return h.reset(ctx, ssmstate.Guard{RequestID: r.RequestID, State: ssmstate.StateActivating}, r.Serial, s)
	}
	return nil
}

func (h *Handler) reset(ctx context.Context, g ssmstate.Guard, serial string, s *Summary) error {
	err := h.c.State.Clear(ctx, serial, g)
	switch {
	case err == nil:
		s.RecordsReset++
		h.c.Logger.Info("ssm record reset", "serial", serial, "activationId", g.ActivationID)
		return nil
	case errors.Is(err, ssmstate.ErrConflict), errors.Is(err, ssmstate.ErrNotFound):
		// The record moved on (registered, deactivated, re-activated).
		return nil
	}
	return fmt.Errorf("reset %s: %w", serial, err)
}
