package stack

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	"github.com/iot-fleet/iot-fleet/lambdas/allowlistsync"
)

// DeployedByLocal is the deployed-by metadata of an allowlist file the
// stack follows (FollowAllowlist): who re-admits with readmit=TOKEN lines.
const DeployedByLocal = "local allowlist file"

// DefaultFollowInterval is how often FollowAllowlist looks at the file.
const DefaultFollowInterval = time.Second

// DeployAllowlistFile reads the allowlist file at path and deploys it
// (DeployAllowlist). A bad file changes nothing; the error names its bad
// lines.
func (s *Stack) DeployAllowlistFile(ctx context.Context, path string) (allowlistsync.Result, error) {
	content, err := os.ReadFile(path)
	if err != nil {
		return allowlistsync.Result{}, fmt.Errorf("stack: allowlist: %w", err)
	}
	return s.deployFileContent(ctx, content)
}

func (s *Stack) deployFileContent(ctx context.Context, content []byte) (allowlistsync.Result, error) {
	return s.DeployAllowlistWithMetadata(ctx, content, map[string]string{allowlistsync.MetadataDeployedBy: DeployedByLocal})
}

// FollowOptions configure FollowAllowlist.
type FollowOptions struct {
	// Interval is how often the file's size, modification time and
	// content hash are compared with the last deployed ones; default
	// DefaultFollowInterval.
	Interval time.Duration
	// Reload deploys the file again, changed or not (e.g. SIGHUP): a
	// re-run finishes revocations an earlier one left half-done.
	Reload <-chan os.Signal
}

// fileState is what FollowAllowlist compares, and the content it read.
type fileState struct {
	size    int64
	modTime time.Time
	sum     [sha256.Size]byte
	content []byte
}

// same reports whether a and b are the same file state.
func (a fileState) same(b fileState) bool {
	return a.size == b.size && a.modTime.Equal(b.modTime) && a.sum == b.sum
}

// FollowAllowlist makes the stack follow the allowlist file at path as
// production follows the S3 object. It deploys the file now
// (DeployAllowlistFile): if that fails, nothing changed and nothing is
// followed. Then, until ctx ends or the stack closes, every change of the
// file (its size, modification time or content, looked at every
// Interval) and every Reload runs the real allowlist sync again: a new
// serial may provision, a removed serial is revoked (certificate REVOKED,
// connection closed, thing deleted), within the revocation limit
// (Options.MaxRevocationsPerSync); a bad file is logged with its line
// numbers and changes nothing. A change is deployed once two looks in a
// row find the file the same (an editor or `cat >` writing in place is
// never deployed half-written), and exactly the bytes that were looked at
// are deployed.
func (s *Stack) FollowAllowlist(ctx context.Context, path string, opts FollowOptions) (allowlistsync.Result, error) {
	interval := opts.Interval
	if interval <= 0 {
		interval = DefaultFollowInterval
	}
	last, err := stateOf(path)
	if err != nil {
		return allowlistsync.Result{}, fmt.Errorf("stack: allowlist: %w", err)
	}
	res, err := s.deployFileContent(ctx, last.content)
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.stops = append(s.stops, cancel)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		s.follow(ctx, path, last, interval, opts.Reload)
	}()
	return res, nil
}

func (s *Stack) follow(ctx context.Context, path string, last fileState, interval time.Duration, reload <-chan os.Signal) {
	log := s.log.With("allowlist", path)
	t := time.NewTicker(interval)
	defer t.Stop()
	var pending *fileState // a change seen once, deployed when seen again unchanged
	for {
		force := false
		select {
		case <-ctx.Done():
			return
		case <-reload:
			force = true
			log.Info("allowlist reload requested")
		case <-t.C:
		}
		cur, err := stateOf(path)
		if err != nil {
			if force {
				log.Error("allowlist not deployed, nothing changed", "error", err.Error())
			}
			continue
		}
		if !force {
			if cur.same(last) {
				pending = nil
				continue
			}
			if pending == nil || !pending.same(cur) {
				pending = &cur
				continue
			}
		}
		pending = nil
		last = cur
		res, err := s.deployFileContent(ctx, cur.content)
		if err != nil {
			log.Error("allowlist not deployed: the sync refused it or failed", "error", err.Error(),
				"revoked", res.Revoked, "failed", res.Failed)
			continue
		}
		log.Info("allowlist deployed", "listed", res.Listed, "added", res.Added, "readmitted", res.Readmitted,
			"revoked", res.Revoked, "resumed", res.Resumed, "held", res.Held)
	}
}

// stateOf reads path's size, modification time and content hash.
func stateOf(path string) (fileState, error) {
	st, err := os.Stat(path)
	if err != nil {
		return fileState{}, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fileState{}, err
	}
	return fileState{size: st.Size(), modTime: st.ModTime(), sum: sha256.Sum256(b), content: b}, nil
}
