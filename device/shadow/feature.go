package shadow

import (
	"context"
	"log/slog"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/ota"
)

// Feature builds the shadow feature: version is the agent's version and
// level its log level (desired.logLevel sets it). The image version is
// what the OTA section's mender client reports (show-artifact), whether
// or not OTA is enabled; Unknown without one.
func Feature(version string, level *slog.LevelVar) agent.FeatureFactory {
	return func(rt *agent.Runtime) (agent.Feature, error) {
		mc := ota.MenderConfig{
			Flavor: ota.Flavor(rt.Config.OTA.MenderFlavor), UpdatePath: rt.Config.OTA.MenderUpdatePath, Path: rt.Config.OTA.MenderPath,
		}
		r, err := New(Options{
			ThingName: rt.Identity.ThingName, Conn: rt.Conn, Store: rt.Store, Config: rt.Config.Shadow,
			Version: version, Level: level, BootIDFile: rt.Config.OTA.BootIDFile,
			ImageVersion: func(ctx context.Context) (string, error) {
				m, err := ota.DetectMender(ctx, mc)
				if err != nil {
					return "", err
				}
				return m.ShowArtifact(ctx)
			},
			Logger: rt.Logger.With("feature", "shadow"),
		})
		if err != nil {
			return nil, err
		}
		return &feature{r: r}, nil
	}
}

type feature struct{ r *Reporter }

func (f *feature) Name() string { return "shadow" }

// Start subscribes and runs the reporting loop under the agent's
// supervisor.
func (f *feature) Start(ctx context.Context, rt *agent.Runtime) error {
	if err := f.r.Subscribe(ctx); err != nil {
		return err
	}
	rt.Go(ctx, "shadow", func(ctx context.Context, l *agent.Loop) error { return f.r.Run(ctx, l) })
	return nil
}

func (f *feature) Stop() { f.r.Stop() }
