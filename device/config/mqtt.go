package config

import "time"

// MQTT tunes the connection (the "mqtt" section).
type MQTT struct {
	KeepAlive      Duration `json:"keepAlive"`
	ConnectTimeout Duration `json:"connectTimeout"`
	ReconnectMin   Duration `json:"reconnectMin"`
	ReconnectMax   Duration `json:"reconnectMax"`
}

// DefaultMQTT returns the connection defaults.
func DefaultMQTT() MQTT {
	return MQTT{
		KeepAlive:      Duration(60 * time.Second),
		ConnectTimeout: Duration(30 * time.Second),
		ReconnectMin:   Duration(time.Second),
		ReconnectMax:   Duration(2 * time.Minute),
	}
}

func (m MQTT) validate(path string, errs *Errors) {
	f := func(key string) string { return join(path, key) }
	atLeast(errs, f("keepAlive"), m.KeepAlive, time.Second)
	atLeast(errs, f("connectTimeout"), m.ConnectTimeout, 100*time.Millisecond)
	atLeast(errs, f("reconnectMin"), m.ReconnectMin, time.Millisecond)
	atLeast(errs, f("reconnectMax"), m.ReconnectMax, time.Millisecond)
	if !errs.Has(f("reconnectMax")) && m.ReconnectMax < m.ReconnectMin {
		errs.Add(f("reconnectMax"), "must not be below reconnectMin (%v)", m.ReconnectMin.D())
	}
}
