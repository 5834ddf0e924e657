package config

import (
	"errors"
	"testing"
	"time"
)

func TestShadowValidation(t *testing.T) {
	cases := map[string]struct {
		edit  func(*Shadow)
		field string
	}{
		"defaults":             {func(*Shadow) {}, ""},
		"disabled ignores":     {func(s *Shadow) { s.Enabled, s.PollInterval = false, 0 }, ""},
		"poll too short":       {func(s *Shadow) { s.PollInterval = Duration(time.Millisecond) }, "shadow.pollInterval"},
		"min too short":        {func(s *Shadow) { s.MinInterval = 0 }, "shadow.minInterval"},
		"report below min":     {func(s *Shadow) { s.ReportInterval = Duration(time.Second) }, "shadow.reportInterval"},
		"report above maximum": {func(s *Shadow) { s.ReportInterval = Duration(25 * time.Hour) }, "shadow.reportInterval"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := Default()
			cfg.Endpoint = "example.iot.eu-west-1.amazonaws.com"
			cfg.Provisioning.TemplateName = "iot-fleet-dev"
			tc.edit(&cfg.Shadow)
			err := cfg.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.field)
			}
		})
	}
}
