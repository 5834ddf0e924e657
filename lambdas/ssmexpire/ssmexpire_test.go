package ssmexpire_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/registry/registrytest"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/lambdas/internal/lambdatest"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmexpire"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle"
	"github.com/iot-fleet/iot-fleet/lambdas/ssmtoggle/ssmfake"
)

const role = "iot-fleet-dev-ssm"

func serial(i int) string { return fmt.Sprintf("%016x", 0xc000+i) }

func TestSweepDeletesExpiredActivationsAndResetsRecords(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := registrytest.NewClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	reg := registry.NewMemory(registry.WithClock(c.Now))
	state := ssmstate.NewMemory(reg, c.Now)
	fake := ssmfake.NewSSM(c.Now)
	fake.PageSize = 2
	iotSim := lambdatest.NewSimIoT(t, "iot-fleet-dev-device", "iot-fleet-dev")
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	for i := range 5 {
		require.NoError(t, reg.PutAllowed(ctx, serial(i)))
		_, err := reg.MarkProvisioned(ctx, serial(i), fmt.Sprintf("%064x", i+1), "dev-"+serial(i))
		require.NoError(t, err)
	}
	toggle, err := ssmtoggle.New(ssmtoggle.Config{
		Registry: reg, State: state, SSM: fake, IoT: iotSim.Client, Data: iotSim.Data, ManagedInstanceRole: role,
		Region: "eu-central-1", Environment: "dev", ThingNamePrefix: "dev-", SerialPattern: regexp.MustCompile(`^[0-9a-f]{16}$`),
		ActivationTTL: time.Hour, Now: c.Now, Logger: log,
	})
	require.NoError(t, err)
	activate := func(i int) {
		resp, err := toggle.Handle(ctx, ssmtoggle.Request{DeviceID: serial(i), Action: ssmtoggle.ActionActivate})
		require.NoError(t, err)
		require.True(t, resp.Results[0].OK, resp.Results[0].Error)
	}

	// Device 0: activated, never registered → expires.
	activate(0)
	// Device 1: activated and registered → active, untouched (its used-up
	// activation is deleted).
	activate(1)
	a1 := fake.Activations()[1]
	if a1.Tags["serial"] != serial(1) {
		a1 = fake.Activations()[0]
	}
	mi, err := fake.Register(a1.ID, a1.Code)
	require.NoError(t, err)
	_, err = state.MarkActive(ctx, serial(1), a1.ID, mi)
	require.NoError(t, err)
	// Device 2: the toggle died after its reservation.
	_, err = state.Reserve(ctx, serial(2), "dead")
	require.NoError(t, err)
	// An orphan activation of this stack (the toggle died after
	// CreateActivation), one of another environment, one of another role.
	for _, in := range []*ssm.CreateActivationInput{
		{IamRole: aws.String(role), ExpirationDate: aws.Time(c.Now().Add(30 * time.Minute)), Tags: tags("dev", "dev-"+serial(3))},
		{IamRole: aws.String(role), ExpirationDate: aws.Time(c.Now().Add(30 * time.Minute)), Tags: tags("prod", "prod-"+serial(3))},
		{IamRole: aws.String("other-role"), ExpirationDate: aws.Time(c.Now().Add(30 * time.Minute)), Tags: tags("dev", "dev-"+serial(4))},
	} {
		_, err := fake.CreateActivation(ctx, in)
		require.NoError(t, err)
	}

	h, err := ssmexpire.New(ssmexpire.Config{State: state, SSM: fake, ManagedInstanceRole: role, Environment: "dev",
		ThingNamePrefix: "dev-", Now: c.Now, Logger: log})
	require.NoError(t, err)

	// Nothing expired yet: only the used-up activation goes.
	sum, err := h.Handle(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, 1, sum.ActivationsDeleted)
	assert.Zero(t, sum.RecordsReset)
	assert.Len(t, fake.Activations(), 4)

	c.Advance(time.Hour + time.Second)
	sum, err = h.Handle(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, 2, sum.ActivationsDeleted, "device 0's and the orphan")
	assert.Equal(t, 2, sum.RecordsReset, "device 0 and the dead reservation of device 2")
	var left []string
	for _, a := range fake.Activations() {
		left = append(left, a.Tags["environment"]+"/"+a.IamRole)
	}
	assert.ElementsMatch(t, []string{"prod/" + role, "dev/other-role"}, left, "other stacks' activations are untouched")

	for i, want := range []ssmstate.State{ssmstate.StateInactive, ssmstate.StateActive, ssmstate.StateInactive} {
		r, err := state.Get(ctx, serial(i))
		require.NoError(t, err)
		assert.Equal(t, want, r.State, serial(i))
	}
	assert.Len(t, fake.Instances(), 1, "the registered instance is untouched")

	// Idempotent.
	sum, err = h.Handle(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, ssmexpire.Summary{}, sum)
}

func tags(envName, thing string) []ssmtypes.Tag {
	return []ssmtypes.Tag{
		{Key: aws.String("project"), Value: aws.String("iot-fleet")},
		{Key: aws.String("environment"), Value: aws.String(envName)},
		{Key: aws.String("thingName"), Value: aws.String(thing)},
	}
}

func TestSweepReportsErrorsAndContinues(t *testing.T) {
	ctx := context.Background()
	c := registrytest.NewClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	reg := registry.NewMemory()
	state := ssmstate.NewMemory(reg, c.Now)
	fake := ssmfake.NewSSM(c.Now)
	var ids []string
	for range 2 {
		out, err := fake.CreateActivation(ctx, &ssm.CreateActivationInput{IamRole: aws.String(role),
			ExpirationDate: aws.Time(c.Now().Add(time.Minute)), Tags: tags("dev", "dev-x")})
		require.NoError(t, err)
		ids = append(ids, aws.ToString(out.ActivationId))
	}
	c.Advance(2 * time.Minute)
	fake.FailNext("DeleteActivation", ids[0], ssmfake.Throttled())
	h, err := ssmexpire.New(ssmexpire.Config{State: state, SSM: fake, ManagedInstanceRole: role, Environment: "dev", ThingNamePrefix: "dev-", Now: c.Now})
	require.NoError(t, err)
	sum, err := h.Handle(ctx, nil)
	require.Error(t, err)
	assert.Equal(t, 1, sum.ActivationsDeleted, "the other activation was still deleted")
	assert.Len(t, sum.Errors, 1)
	sum, err = h.Handle(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, 1, sum.ActivationsDeleted)
	assert.Empty(t, fake.Activations())
}
