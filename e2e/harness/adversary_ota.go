package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/iot-fleet/iot-fleet/device/config"
)

// Reconfigure edits the agent's configuration file (validated, as
// NewAgent writes it). Call it while the agent is stopped.
func (a *Agent) Reconfigure(edit func(*config.Config)) error {
	cfg, err := config.Load(a.ConfigFile)
	if err != nil {
		return fmt.Errorf("agent %s: %w", a.Serial, err)
	}
	edit(&cfg)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("agent %s: %w", a.Serial, err)
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("agent %s: %w", a.Serial, err)
	}
	return os.WriteFile(a.ConfigFile, b, 0o600)
}

// WaitCommitTookEffect waits until the fake mender (scenario
// {"hangAfterCommit": true}) committed the update and hangs, and returns
// the pid of that hanging mender process (in its own process group: a kill
// of the agent's group does not stop it).
func (d *OTADevice) WaitCommitTookEffect(ctx context.Context) (int, error) {
	marker := filepath.Join(d.MenderDir, "commit.done")
	var pid int
	err := Poll(ctx, d.Serial+": fake mender commit", func() bool {
		b, err := os.ReadFile(marker)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	return pid, err
}
