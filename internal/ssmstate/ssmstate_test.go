package ssmstate_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate"
	"github.com/iot-fleet/iot-fleet/internal/ssmstate/ssmstatetest"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

func TestMemoryContract(t *testing.T) {
	ssmstatetest.Run(t, func(t *testing.T, now func() time.Time) ssmstatetest.Env {
		reg := registry.NewMemory(registry.WithClock(now))
		return ssmstatetest.Env{Store: ssmstate.NewMemory(reg, now), Registry: reg}
	})
}

func TestDynamoDBContract(t *testing.T) {
	endpoint := testenv.StartDynalite(t)
	client := testenv.DynamoDBClient(endpoint)
	var n atomic.Int64
	ssmstatetest.Run(t, func(t *testing.T, now func() time.Time) ssmstatetest.Env {
		table := fmt.Sprintf("registry-%d", n.Add(1))
		testenv.CreateRegistryTable(t, client, table)
		reg, err := registry.NewDynamoDB(client, table, registry.WithClock(now))
		require.NoError(t, err)
		s, err := ssmstate.NewDynamoDB(client, table, now)
		require.NoError(t, err)
		return ssmstatetest.Env{Store: s, Registry: reg}
	})
}

func TestNewDynamoDBRejectsBadArguments(t *testing.T) {
	_, err := ssmstate.NewDynamoDB(nil, "t", nil)
	require.Error(t, err)
	_, err = ssmstate.NewDynamoDB(testenv.DynamoDBClient("http://127.0.0.1:1"), "", nil)
	require.Error(t, err)
}
