package agent

import (
	"log/slog"
	"sync"

	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/store"
)

// refusalDetector counts the connection attempts in a row the broker
// refused because of the device certificate (mqttconn.RefusedError). At
// the threshold it fires trigger; the agent then stops the connection and
// runs provision.Recover, which checks the certificate once more and
// re-provisions only if the broker refuses it while accepting the claim
// certificate. A network failure or an unavailable broker neither counts
// nor resets the count; a successful connection resets it.
//
// Refusals are not counted while a certificate rotation is trying its new
// certificate: the rotation falls back to the old one by itself.
type refusalDetector struct {
	threshold int
	st        *store.Store
	log       *slog.Logger
	trigger   chan struct{}

	mu    sync.Mutex
	count int
}

func newRefusalDetector(threshold int, st *store.Store, log *slog.Logger) *refusalDetector {
	return &refusalDetector{threshold: max(threshold, 1), st: st, log: log, trigger: make(chan struct{}, 1)}
}

// attempt is the mqttconn OnAttempt hook.
func (d *refusalDetector) attempt(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case err == nil:
		d.count = 0
		return
	case !mqttconn.IsRefused(err):
		return
	case rotationSwitchPending(d.st):
		d.log.Info("certificate refused while a rotation tries its new certificate; left to the rotation", "err", err)
		return
	}
	d.count++
	d.log.Warn("the broker refused the device certificate", "refusalsInARow", d.count, "recoverAt", d.threshold, "err", err)
	if d.count >= d.threshold {
		d.count = 0
		select {
		case d.trigger <- struct{}{}:
		default:
		}
	}
}

// reset forgets the refusals and a pending trigger (after a recovery).
func (d *refusalDetector) reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.count = 0
	select {
	case <-d.trigger:
	default:
	}
}

// rotationStateFile is the certificate rotation feature's state file
// (device/rotation.StateFile; that package imports this one).
const rotationStateFile = "rotation.json"

// rotationSwitchPending reports whether a certificate rotation has stored
// or switched to a new certificate that has not connected yet.
func rotationSwitchPending(st *store.Store) bool {
	var r struct {
		Step         string `json:"step"`
		NewConnected bool   `json:"newConnected"`
	}
	if found, err := st.ReadJSON(rotationStateFile, &r); err != nil || !found {
		return false
	}
	return (r.Step == "cert" || r.Step == "switched") && !r.NewConnected
}
