package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/device/store"
)

// RunStateFile is the agent's live state in the state directory: written
// (atomically) by the running agent whenever it changes, read by
// `fleet-agent status`. It is not written periodically (an SD card wears).
const RunStateFile = "agent-status.json"

// Phases of RunState.
const (
	PhaseStarting     = "starting"
	PhaseProvisioning = "provisioning"
	PhaseRunning      = "running"
	PhaseRecovering   = "recovering"
	PhaseStopped      = "stopped"
	PhaseFailed       = "failed"
)

// RunState is the content of RunStateFile.
type RunState struct {
	// PID and ProcStart (the process's start time in clock ticks since
	// boot, /proc/PID/stat) identify the agent process: a reused pid has
	// another start time.
	PID       int    `json:"pid"`
	ProcStart uint64 `json:"procStart,omitempty"`
	Version   string `json:"version,omitempty"`
	Phase     string `json:"phase"`
	ThingName string `json:"thingName,omitempty"`
	// Connected is the MQTT connection's state; ConnectedAt and
	// DisconnectedAt the last changes; Connections counts connections.
	Connected      bool       `json:"connected"`
	ConnectedAt    *time.Time `json:"connectedAt,omitempty"`
	DisconnectedAt *time.Time `json:"disconnectedAt,omitempty"`
	Connections    int64      `json:"connections"`
	// Status is what each part reports (the jobs feature: current job
	// and step), as in systemd's STATUS=.
	Status map[string]string `json:"status,omitempty"`
	// Loops are the supervised loops; Overdue ones stopped beating.
	Loops []LoopHealth `json:"loops,omitempty"`
	// Error is why the agent failed (PhaseFailed).
	Error     string    `json:"error,omitempty"`
	StartedAt time.Time `json:"startedAt"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// LoopHealth is a loop's health as written to RunStateFile.
type LoopHealth struct {
	Name    string `json:"name"`
	Overdue bool   `json:"overdue,omitempty"`
}

// ReadRunState reads RunStateFile from st (found is false without one:
// the agent never ran with this state directory).
func ReadRunState(st *store.Store) (rs RunState, found bool, err error) {
	found, err = st.ReadJSON(RunStateFile, &rs)
	return rs, found, err
}

// Alive reports whether the process that wrote rs still runs.
func (rs RunState) Alive() bool {
	if rs.PID <= 0 {
		return false
	}
	start, err := procStart(rs.PID)
	return err == nil && start == rs.ProcStart
}

// procStart reads a process's start time (field 22 of /proc/PID/stat).
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	const startField = 22 - 3 // fields after ")" start at field 3
	if len(f) <= startField {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return strconv.ParseUint(f[startField], 10, 64)
}

// sameState reports whether a and b differ only in UpdatedAt.
func sameState(a, b RunState) bool {
	a.UpdatedAt, b.UpdatedAt = time.Time{}, time.Time{}
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}
