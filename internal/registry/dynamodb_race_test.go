package registry_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/internal/testenv"
)

// racingClient is the DynamoDB client of a store that loses a race: just
// before its next UpdateItem reaches DynamoDB, another writer's change
// (race) is applied. The read-modify-write methods must then refuse to
// write over it: their conditions, evaluated by DynamoDB, are what stop
// them.
type racingClient struct {
	registry.DynamoDBAPI
	mu   sync.Mutex
	race func()
}

// before arms race to run once, before the next UpdateItem.
func (c *racingClient) before(race func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.race = race
}

func (c *racingClient) UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	c.mu.Lock()
	race := c.race
	c.race = nil
	c.mu.Unlock()
	if race != nil {
		race()
	}
	return c.DynamoDBAPI.UpdateItem(ctx, in, optFns...)
}

// raceSetup returns a store whose writes lose the race armed with
// client.before, and the other writer's store on the same table.
// Each call makes a new table on the dynalite at endpoint.
func raceSetup(t *testing.T, endpoint string, tables *atomic.Int64) (s *registry.DynamoDB, other *registry.DynamoDB, client *racingClient, ctx context.Context) {
	t.Helper()
	raw := testenv.DynamoDBClient(endpoint)
	table := fmt.Sprintf("registry-%d", tables.Add(1))
	testenv.CreateRegistryTable(t, raw, table)
	now := func() time.Time { return time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC) }
	client = &racingClient{DynamoDBAPI: raw}
	s, err := registry.NewDynamoDB(client, table, registry.WithClock(now))
	require.NoError(t, err)
	other, err = registry.NewDynamoDB(raw, table, registry.WithClock(now))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return s, other, client, ctx
}

func provision(t *testing.T, ctx context.Context, s registry.Store, serial, cert string) {
	t.Helper()
	require.NoError(t, s.PutAllowed(ctx, serial))
	_, err := s.RecordProvisioned(ctx, serial, "dev-"+serial, registry.Certificate{ID: cert, PublicKeySHA256: "k1"})
	require.NoError(t, err)
}

func TestDynamoDBRaces(t *testing.T) {
	endpoint := testenv.StartDynalite(t)
	var tables atomic.Int64
	setup := func(t *testing.T) (*registry.DynamoDB, *registry.DynamoDB, *racingClient, context.Context) {
		return raceSetup(t, endpoint, &tables)
	}
	sameKey := registry.RetiredCertificate{CertificateID: "c1", Reason: registry.RetiredSameKey}

	// The revocation names the certificate the sync revoked: a
	// certificate that replaced it meanwhile is not marked revoked.
	t.Run("MarkRevokedAfterCertificateReplaced", func(t *testing.T) {
		s, other, client, ctx := setup(t)
		provision(t, ctx, s, "a1", "c1")
		client.before(func() {
			_, err := other.ReplaceCertificate(ctx, "a1", "", registry.Certificate{ID: "c2", PublicKeySHA256: "k1"}, sameKey)
			require.NoError(t, err)
		})
		err := s.MarkRevoked(ctx, "a1", "c1")
		require.ErrorIs(t, err, registry.ErrConflict)
		require.ErrorContains(t, err, `has certificate "c2", expected "c1"`)
		d, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		require.Equal(t, registry.StateProvisioned, d.State)
		require.Equal(t, "c2", d.CertificateID)
	})

	// Two replacements of the same certificate: the second one finds the
	// record changed and is refused; the first one's history survives.
	t.Run("ReplaceCertificateTwice", func(t *testing.T) {
		s, other, client, ctx := setup(t)
		provision(t, ctx, s, "a1", "c1")
		client.before(func() {
			_, err := other.ReplaceCertificate(ctx, "a1", "", registry.Certificate{ID: "c2", PublicKeySHA256: "k1"}, sameKey)
			require.NoError(t, err)
		})
		_, err := s.ReplaceCertificate(ctx, "a1", "", registry.Certificate{ID: "c3", PublicKeySHA256: "k1"}, sameKey)
		require.ErrorIs(t, err, registry.ErrConflict)
		d, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		require.Equal(t, "c2", d.CertificateID)
		require.Len(t, d.CertificateHistory, 1)
		require.Equal(t, "c1", d.CertificateHistory[0].CertificateID)
	})

	// A re-admission with the same token made meanwhile is acted on once.
	t.Run("ReadmitSameTokenTwice", func(t *testing.T) {
		s, other, client, ctx := setup(t)
		provision(t, ctx, s, "a1", "c1")
		client.before(func() {
			_, changed, err := other.Readmit(ctx, "a1", "T-1", "alice")
			require.NoError(t, err)
			require.True(t, changed)
		})
		d, changed, err := s.Readmit(ctx, "a1", "T-1", "bob")
		require.NoError(t, err)
		require.False(t, changed)
		require.Equal(t, registry.StateReadmitted, d.State)
		require.Equal(t, "alice", d.ReadmittedBy)
	})

	// A token used meanwhile (re-admitted and provisioned with it, then
	// with another token, so that only the set still names it) is not
	// acted on again: the condition NOT contains(readmitTokens) stops it.
	t.Run("ReadmitTokenUsedMeanwhile", func(t *testing.T) {
		s, other, client, ctx := setup(t)
		provision(t, ctx, s, "a1", "c1")
		client.before(func() {
			for i, token := range []string{"T1", "T2"} {
				_, changed, err := other.Readmit(ctx, "a1", token, "alice")
				require.NoError(t, err)
				require.True(t, changed)
				_, err = other.ReplaceCertificate(ctx, "a1", "", registry.Certificate{ID: fmt.Sprintf("c%d", i+2)},
					registry.RetiredCertificate{CertificateID: fmt.Sprintf("c%d", i+1), Reason: registry.RetiredReadmitted})
				require.NoError(t, err)
			}
		})
		d, changed, err := s.Readmit(ctx, "a1", "T1", "revert")
		require.NoError(t, err)
		require.False(t, changed)
		require.Equal(t, registry.StateProvisioned, d.State)
		require.Equal(t, "T2", d.ReadmitToken)
		require.Equal(t, []string{"T1", "T2"}, d.ReadmitTokens)
	})

	// A device revoked in an emergency while the operator API re-admits
	// it stays held out.
	t.Run("ReadmitAdmittedHeldMeanwhile", func(t *testing.T) {
		s, other, client, ctx := setup(t)
		provision(t, ctx, s, "a1", "c1")
		client.before(func() {
			_, err := other.MarkEmergencyRevoking(ctx, "a1", "c1", registry.Revocation{Reason: "stolen", By: "alice"})
			require.NoError(t, err)
		})
		_, _, err := s.ReadmitAdmitted(ctx, "a1", "T1", "ops")
		require.ErrorIs(t, err, registry.ErrHeldOut)
		d, err := other.Get(ctx, "a1")
		require.NoError(t, err)
		require.True(t, d.HeldOut())
		require.Equal(t, registry.StateRevoking, d.State)
		require.Empty(t, d.ReadmitTokens)
	})

	// A certificate issued for the rotation while it is being failed is
	// recorded as the one to retire, not forgotten.
	t.Run("FailRotationAfterIssue", func(t *testing.T) {
		s, other, client, ctx := setup(t)
		provision(t, ctx, s, "a1", "c1")
		_, err := s.RequestRotation(ctx, "a1", "r1", time.Hour)
		require.NoError(t, err)
		client.before(func() {
			_, err := other.IssueRotation(ctx, "a1", "r1", registry.Certificate{ID: "rc", NotAfter: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)})
			require.NoError(t, err)
		})
		d, err := s.FailRotation(ctx, "a1", "r1")
		require.NoError(t, err)
		require.Equal(t, "rc", d.RetiredCertificateID)
		require.Equal(t, registry.RotationFailed, d.LastRotationStatus)
		require.Equal(t, "c1", d.CertificateID)
		require.Empty(t, d.RotationID)
	})

	// A device revoked while its rotation is being asked again gets no
	// rotation.
	t.Run("RequestRotationAfterRevoking", func(t *testing.T) {
		s, other, client, ctx := setup(t)
		provision(t, ctx, s, "a1", "c1")
		client.before(func() {
			_, err := other.MarkRevoking(ctx, "a1", "c1")
			require.NoError(t, err)
		})
		_, err := s.RequestRotation(ctx, "a1", "r1", time.Hour)
		require.ErrorIs(t, err, registry.ErrConflict)
		d, err := s.Get(ctx, "a1")
		require.NoError(t, err)
		require.Equal(t, registry.StateRevoking, d.State)
		require.Empty(t, d.RotationID)
	})
}
