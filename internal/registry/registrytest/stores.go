package registrytest

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// Stores runs f twice, as the sub-tests "memory" and "dynamodb": with
// in-memory stores, and with DynamoDB stores on a real dynalite server
// (one new table for each store). newStore's now may be nil for the wall
// clock.
func Stores(t *testing.T, f func(t *testing.T, newStore NewStore)) {
	t.Run("memory", func(t *testing.T) {
		f(t, func(_ *testing.T, now func() time.Time) registry.Store {
			return registry.NewMemory(registry.WithClock(now))
		})
	})
	t.Run("dynamodb", func(t *testing.T) {
		client := testenv.DynamoDBClient(testenv.StartDynalite(t))
		var n atomic.Int64
		f(t, func(t *testing.T, now func() time.Time) registry.Store {
			table := fmt.Sprintf("registry-%d", n.Add(1))
			testenv.CreateRegistryTable(t, client, table)
			s, err := registry.NewDynamoDB(client, table, registry.WithClock(now))
			require.NoError(t, err)
			return s
		})
	})
}
