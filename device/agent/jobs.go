package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/iot-fleet/iot-fleet/device/jobs"
	"github.com/iot-fleet/iot-fleet/device/jobs/runner"
	"github.com/iot-fleet/iot-fleet/device/store"
)

// OperationsFunc builds the registry of job operations (OTA registers
// mender_install) once the runtime (thing name, outbox, connection) is
// known. `fleet-agent check-job` must validate with operations of the same
// names so both accept the same documents.
type OperationsFunc func(rt *Runtime) (*jobs.Registry, error)

// JobsFeature builds the AWS IoT Jobs engine as an agent feature. opsFn
// may be nil (no operations, only runHandler/runCommand steps).
func JobsFeature(opsFn OperationsFunc) FeatureFactory {
	return func(rt *Runtime) (Feature, error) {
		cfg := rt.Config
		ops := jobs.NewRegistry()
		if opsFn != nil {
			var err error
			if ops, err = opsFn(rt); err != nil {
				return nil, fmt.Errorf("jobs: operations: %w", err)
			}
		}
		handlerDir := cfg.HandlerDir()
		if err := os.MkdirAll(handlerDir, 0o700); err != nil {
			return nil, fmt.Errorf("jobs: handler dir: %w", err)
		}
		r, err := runner.New(runner.Config{
			HandlerDir:   handlerDir,
			AllowedPaths: append([]string(nil), cfg.Jobs.AllowedPaths...),
			SudoPath:     cfg.Jobs.SudoPath,
			RunCommand:   cfg.Jobs.RunCommandPolicy(),
			Logger:       rt.Logger,
		})
		if err != nil {
			return nil, fmt.Errorf("jobs: %w", err)
		}
		dir, err := rt.Store.SubDir(store.JobsDir)
		if err != nil {
			return nil, err
		}
		e, err := jobs.New(jobs.Config{
			ThingName:              rt.Identity.ThingName,
			StateDir:               dir,
			Publisher:              rt.Outbox,
			Runner:                 r,
			Operations:             ops,
			RunCommand:             cfg.Jobs.RunCommandPolicy(),
			HandlerDir:             handlerDir,
			BootIDFile:             cfg.OTA.BootIDFile, // one source of the boot id for OTA and jobs
			StepTimeout:            cfg.Jobs.StepTimeout.D(),
			ProgressTimeoutMinutes: cfg.Jobs.ProgressTimeoutMinutes,
			Logger:                 rt.Logger,
		})
		if err != nil {
			return nil, err
		}
		return &jobsFeature{engine: e}, nil
	}
}

type jobsFeature struct {
	engine *jobs.Engine
	wg     sync.WaitGroup
}

func (f *jobsFeature) Name() string { return "jobs" }

// Start subscribes to the engine's topics (made again on every reconnect),
// runs the engine and tells it about every (re)connect so that it sends
// start-next or resends its pending request.
func (f *jobsFeature) Start(ctx context.Context, rt *Runtime) error {
	for _, filter := range f.engine.Subscriptions() {
		if err := rt.Conn.Subscribe(ctx, filter, 1, f.engine.HandleMessage); err != nil {
			return fmt.Errorf("jobs: subscribe %s: %w", filter, err)
		}
	}
	rt.Conn.OnConnect(func(ctx context.Context) {
		if err := f.engine.OnConnect(ctx); err != nil && ctx.Err() == nil {
			rt.Logger.Warn("jobs engine on-connect failed", "err", err)
		}
	})
	f.wg.Add(1)
	rt.Go(ctx, "jobs", func(ctx context.Context, l *Loop) error {
		defer f.wg.Done()
		probeCtx, stopProbe := context.WithCancel(ctx)
		probed := make(chan struct{})
		go func() { defer close(probed); f.probe(probeCtx, rt, l) }()
		defer func() { stopProbe(); <-probed }()
		if err := f.engine.Run(ctx); err != nil {
			return fmt.Errorf("jobs engine: %w", err)
		}
		return nil
	})
	return nil
}

// probe is the engine's heartbeat: every interval it asks the engine's
// loop for a snapshot and beats when the loop answers (a step, even an
// hour-long OTA install, runs beside the loop and does not delay it). The
// snapshot is the jobs part of the agent's status.
func (f *jobsFeature) probe(ctx context.Context, rt *Runtime, l *Loop) {
	t := time.NewTicker(min(l.Interval(), statusPeriod))
	defer t.Stop()
	shown := ""
	for {
		pctx, cancel := context.WithTimeout(ctx, l.Interval())
		snap, err := f.engine.Snapshot(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			l.Beat()
			if s := JobStatusText(snap); s != shown {
				shown = s
				rt.SetStatus("jobs", s)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// JobStatusText is a one-line description of what the jobs engine is
// doing ("" when idle), e.g. `job ota-42 step 1/1 "install" running,
// step=installing`.
func JobStatusText(s jobs.Snapshot) string {
	if s.JobID == "" {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "job %s", s.JobID)
	if s.StepCount > 0 {
		fmt.Fprintf(&b, " step %d/%d", min(s.StepIndex, s.StepCount), s.StepCount)
	}
	if s.StepName != "" {
		fmt.Fprintf(&b, " %q", s.StepName)
	}
	state := s.StepState
	if s.Phase == "finishing" {
		state = "reporting " + string(s.Status)
	}
	if state != "" {
		b.WriteString(" " + state)
	}
	// An operation's own step (OTA: downloading, installing, rebooting,
	// verifying, ...).
	if op := s.Details["step"]; op != "" {
		b.WriteString(", step=" + op)
	}
	return b.String()
}

// Stop waits for the engine to finish (its context is already canceled).
func (f *jobsFeature) Stop() { f.wg.Wait() }
