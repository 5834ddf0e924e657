package main

import (
	"log/slog"

	"github.com/iot-fleet/iot-fleet/device/agent"
	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/shadow"
)

// logLevel is the agent's log level, settable at run time (the shadow's
// desired.logLevel), starting at the configured one.
func logLevel(cfg config.Config) *slog.LevelVar {
	lv := new(slog.LevelVar)
	lv.Set(level(cfg.LogLevel))
	return lv
}

// shadowFeatures is the named shadow "fleet-agent" (docs/shadow.md),
// unless shadow.enabled is false.
func shadowFeatures(cfg config.Config, lv *slog.LevelVar) []agent.FeatureFactory {
	if !cfg.Shadow.Enabled {
		return nil
	}
	return []agent.FeatureFactory{shadow.Feature(version, lv)}
}
