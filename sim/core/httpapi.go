package core

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	devreg "github.com/iot-fleet/iot-fleet/internal/registry"
	"github.com/iot-fleet/iot-fleet/sim/faults"
	"github.com/iot-fleet/iot-fleet/sim/jobs"
	"github.com/iot-fleet/iot-fleet/sim/registry"
)

// FaultRuleRequest is the HTTP form of a fault rule (delay as a Go
// duration string such as "2s").
type FaultRuleRequest struct {
	Topic     string           `json:"topic"`
	ClientID  string           `json:"clientId,omitempty"`
	Direction faults.Direction `json:"direction"`
	Drop      bool             `json:"drop,omitempty"`
	Delay     string           `json:"delay,omitempty"`
	Count     int              `json:"count,omitempty"`
}

// ProvisioningFaultsRequest sets the provisioning fault counters.
type ProvisioningFaultsRequest struct {
	Throttle  int `json:"throttle"`
	RefuseCSR int `json:"refuseCsr"`
}

// ReadmitRequest re-admits a provisioned serial
// (registry.Store.ReadmitAdmitted): its next provisioning replaces its
// identity, once per token never used for the serial. It never lifts an
// emergency hold (409): only the allowlist's readmit=TOKEN line does.
type ReadmitRequest struct {
	Token string `json:"token"`
	By    string `json:"by,omitempty"`
}

// CertificateStatusRequest changes a certificate's status.
type CertificateStatusRequest struct {
	Status registry.CertStatus `json:"status"`
}

// HTTPHandler is the operator API of the local IoT Core (JSON):
//
//	GET    /status                          endpoints (MQTT, controlPlaneEndpoint), counts, broker drop counters
//	GET    /things, /certificates, /clients registry and connections
//	POST   /jobs                            create a job (jobs.CreateJobInput)
//	GET    /jobs, /jobs/{id}                describe jobs
//	GET    /jobs/{id}/executions            list executions
//	POST   /jobs/{id}/wait?timeout=30s      wait until all executions are terminal
//	POST   /jobs/{id}/cancel?force=true     cancel a job
//	POST   /certificates/{id}/revoke        revoke a certificate
//	POST   /certificates/{id}/status        {"status":"ACTIVE|INACTIVE|REVOKED"}
//	POST   /things/{name}/revoke            revoke every certificate of a thing
//	POST   /clients/{id}/disconnect         drop a connection
//	POST   /broker/restart                  restart the broker on the same port
//	GET    /faults, POST /faults            list / add a drop or delay rule
//	DELETE /faults, /faults/{id}            clear all / remove one
//	POST   /faults/provisioning             {"throttle":N,"refuseCsr":M}
//	GET    /devices/{serial}                the device registry's record
//	POST   /devices/{serial}/readmit        {"token":"INC-42","by":"alice"}; 409 when held out
func (c *Core) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /devices/{serial}", func(w http.ResponseWriter, r *http.Request) {
		d, err := c.devices.Get(r.Context(), r.PathValue("serial"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
	mux.HandleFunc("POST /devices/{serial}/readmit", func(w http.ResponseWriter, r *http.Request) {
		var in ReadmitRequest
		if !readJSON(w, r, &in) {
			return
		}
		if !devreg.ValidReadmitToken(in.Token) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "token must be 1 to 64 characters of [A-Za-z0-9._:-]"})
			return
		}
		by := in.By
		if by == "" {
			by = "fleet-sim operator API"
		}
		// Not a way around the allowlist: a record held out by an
		// emergency revocation is refused (409, ErrHeldOut names the
		// allowlist's readmit line).
		d, changed, err := c.devices.ReadmitAdmitted(r.Context(), r.PathValue("serial"), in.Token, by)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"changed": changed, "device": d})
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		th, rc := c.faults.Pending()
		writeJSON(w, http.StatusOK, map[string]any{
			"endpoint": c.Endpoint(), "env": c.names.Env, "thingGroup": c.names.ThingGroup, "template": c.names.TemplateName,
			"things": len(c.reg.Things()), "clients": len(c.Clients()), "jobs": len(c.jobs.Jobs()),
			"pendingThrottles": th, "pendingCsrRefusals": rc, "controlPlaneEndpoint": c.opts.ControlPlaneEndpoint,
			"broker": c.BrokerStats(),
		})
	})
	mux.HandleFunc("GET /things", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.reg.Things()) })
	mux.HandleFunc("GET /certificates", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, c.reg.Certificates())
	})
	mux.HandleFunc("GET /clients", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.Clients()) })
	mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, r *http.Request) {
		var in jobs.CreateJobInput
		if !readJSON(w, r, &in) {
			return
		}
		j, err := c.CreateJob(r.Context(), in)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, j)
	})
	mux.HandleFunc("GET /jobs", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.jobs.Jobs()) })
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		j, err := c.jobs.Job(r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, j)
	})
	mux.HandleFunc("GET /jobs/{id}/executions", func(w http.ResponseWriter, r *http.Request) {
		ex, err := c.jobs.Executions(r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ex)
	})
	mux.HandleFunc("POST /jobs/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		timeout := 30 * time.Second
		if v := r.URL.Query().Get("timeout"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("timeout %q: want a positive duration such as 30s", v)})
				return
			}
			timeout = d
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		ex, err := c.WaitForExecutions(ctx, r.PathValue("id"))
		if errors.Is(err, jobs.ErrNotFound) {
			writeError(w, err)
			return
		}
		if err != nil {
			writeJSON(w, http.StatusGatewayTimeout, map[string]any{"error": err.Error(), "executions": ex})
			return
		}
		writeJSON(w, http.StatusOK, ex)
	})
	mux.HandleFunc("POST /jobs/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
		j, err := c.jobs.CancelJob(r.PathValue("id"), force)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, j)
	})
	mux.HandleFunc("POST /certificates/{id}/revoke", func(w http.ResponseWriter, r *http.Request) {
		if err := c.Revoke(r.PathValue("id")); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"certificateId": r.PathValue("id"), "status": string(registry.CertRevoked)})
	})
	mux.HandleFunc("POST /certificates/{id}/status", func(w http.ResponseWriter, r *http.Request) {
		var in CertificateStatusRequest
		if !readJSON(w, r, &in) {
			return
		}
		if err := c.SetCertificateStatus(r.PathValue("id"), in.Status); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"certificateId": r.PathValue("id"), "status": string(in.Status)})
	})
	mux.HandleFunc("POST /things/{name}/revoke", func(w http.ResponseWriter, r *http.Request) {
		ids, err := c.RevokeThing(r.PathValue("name"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"thingName": r.PathValue("name"), "revoked": ids})
	})
	mux.HandleFunc("POST /clients/{id}/disconnect", func(w http.ResponseWriter, r *http.Request) {
		if !c.DisconnectClient(r.PathValue("id")) {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "client " + r.PathValue("id") + " is not connected"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"disconnected": r.PathValue("id")})
	})
	mux.HandleFunc("POST /broker/restart", func(w http.ResponseWriter, r *http.Request) {
		if err := c.RestartBroker(); err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"endpoint": c.Endpoint()})
	})
	mux.HandleFunc("GET /faults", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.faults.Rules()) })
	mux.HandleFunc("POST /faults", func(w http.ResponseWriter, r *http.Request) {
		var in FaultRuleRequest
		if !readJSON(w, r, &in) {
			return
		}
		rule := faults.Rule{Topic: in.Topic, ClientID: in.ClientID, Direction: in.Direction, Drop: in.Drop, Count: in.Count}
		if in.Delay != "" {
			d, err := time.ParseDuration(in.Delay)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("delay %q: %v", in.Delay, err)})
				return
			}
			rule.Delay = d
		}
		id, err := c.faults.Add(rule)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"id": id})
	})
	mux.HandleFunc("DELETE /faults", func(w http.ResponseWriter, r *http.Request) {
		c.faults.Clear()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /faults/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !c.faults.Remove(r.PathValue("id")) {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no fault rule " + r.PathValue("id")})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /faults/provisioning", func(w http.ResponseWriter, r *http.Request) {
		var in ProvisioningFaultsRequest
		if !readJSON(w, r, &in) {
			return
		}
		if in.Throttle < 0 || in.RefuseCSR < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "throttle and refuseCsr must not be negative"})
			return
		}
		c.faults.ThrottleProvisioning(in.Throttle)
		c.faults.RefuseCSRs(in.RefuseCSR)
		writeJSON(w, http.StatusOK, in)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "read body: " + err.Error()})
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "request body: " + err.Error()})
		return false
	}
	return true
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, jobs.ErrNotFound), errors.Is(err, registry.ErrNotFound), errors.Is(err, devreg.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, jobs.ErrAlreadyExists), errors.Is(err, registry.ErrAlreadyExists), errors.Is(err, registry.ErrConflict),
		errors.Is(err, devreg.ErrConflict):
		status = http.StatusConflict
	case errors.Is(err, jobs.ErrInvalid), errors.Is(err, registry.ErrInvalid):
		status = http.StatusBadRequest
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
