package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/iot-fleet/iot-fleet/device/config"
)

// FakeSSMHost is a device's SSM tooling for a local run: /bin/sh scripts
// standing in for amazon-ssm-agent, the package manager (apt-get install /
// remove) and systemctl, each appending its argv to ArgvLog (the fake
// agent's own storage).
//
// The fake `amazon-ssm-agent -register -code C -id I -region R -y` does
// what the real one does in its round trip to Systems Manager: it records
// its argv, then waits (up to 30 s) for the service's answer, which the
// caller plays with Answer after registering the code with the local
// stack (stack.SSM.Register); it then stores the managed instance id in
// its registration file as amazon-ssm-agent does. An answer that is not an
// mi- id makes the registration fail with that text on stderr.
type FakeSSMHost struct {
	Dir string
	// ArgvLog holds one line per command run: "<program> <args...>".
	ArgvLog string
	// AgentPath exists once installed; RegistrationFile once registered.
	AgentPath        string
	RegistrationFile string
	// Config is the agent's ssm section using these scripts.
	Config config.SSM

	serviceDir string
}

// NewFakeSSMHost writes the scripts into dir (created if missing).
func NewFakeSSMHost(dir string) (*FakeSSMHost, error) {
	h := &FakeSSMHost{
		Dir: dir, ArgvLog: filepath.Join(dir, "argv.log"), AgentPath: filepath.Join(dir, "bin", "amazon-ssm-agent"),
		RegistrationFile: filepath.Join(dir, "var", "registration"), serviceDir: filepath.Join(dir, "service"),
	}
	for _, d := range []string{"bin", "var", "service"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("fake ssm host: %w", err)
		}
	}
	agentBody := `echo "amazon-ssm-agent $*" >> '` + h.ArgvLog + `'
if [ "$1" = "-register" ] && [ "$2" = "-clear" ]; then rm -f '` + h.RegistrationFile + `'; exit 0; fi
if [ "$1" = "-register" ] && [ "$4" = "-id" ]; then
  answer='` + h.serviceDir + `'/"$5"
  i=0
  while [ ! -s "$answer" ]; do
    i=$((i+1))
    if [ $i -gt 600 ]; then echo "Registration failed: no answer from Systems Manager" >&2; exit 1; fi
    sleep 0.05
  done
  read -r instance < "$answer"
  case "$instance" in mi-*) ;; *) echo "Registration failed: $instance" >&2; exit 1 ;; esac
  printf '{"ManagedInstanceID":"%s","Region":"%s"}' "$instance" "$7" > '` + h.RegistrationFile + `'
  exit 0
fi
echo "unexpected arguments" >&2
exit 2
`
	pkg := filepath.Join(dir, "amazon-ssm-agent.pkg")
	install := filepath.Join(dir, "bin", "apt-get")
	systemctl := filepath.Join(dir, "bin", "systemctl")
	uninstall := filepath.Join(dir, "bin", "apt-get-remove")
	for _, s := range []struct{ path, body string }{
		{pkg, agentBody},
		{install, `echo "apt-get $*" >> '` + h.ArgvLog + `'
cp '` + pkg + `' '` + h.AgentPath + `' && chmod 755 '` + h.AgentPath + `'
`},
		{systemctl, `echo "systemctl $*" >> '` + h.ArgvLog + `'` + "\n"},
		{uninstall, `echo "apt-get-remove $*" >> '` + h.ArgvLog + `'
rm -f '` + h.AgentPath + `'
`},
	} {
		if err := os.WriteFile(s.path, []byte("#!/bin/sh\n"+s.body), 0o755); err != nil {
			return nil, fmt.Errorf("fake ssm host: %w", err)
		}
	}
	h.Config = config.SSM{
		Enabled: true, AgentPath: h.AgentPath,
		InstallCommand:   []string{install, "install", "-y", "amazon-ssm-agent"},
		StartCommand:     []string{systemctl, "enable", "--now", "amazon-ssm-agent"},
		StopCommand:      []string{systemctl, "disable", "--now", "amazon-ssm-agent"},
		ClearCommand:     []string{h.AgentPath, "-register", "-clear"},
		UninstallCommand: []string{uninstall, "amazon-ssm-agent"},
		RegistrationFile: h.RegistrationFile, CommandTimeout: config.Duration(time.Minute),
	}
	return h, nil
}

// Argv returns the commands run so far, one "<program> <args...>" each.
func (h *FakeSSMHost) Argv() []string {
	data, err := os.ReadFile(h.ArgvLog)
	if err != nil || len(strings.TrimSpace(string(data))) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

var registerArgv = regexp.MustCompile(`^amazon-ssm-agent -register -code (\S+) -id (\S+) -region (\S+) -y$`)

// RegisterCall is one `amazon-ssm-agent -register` with an activation.
type RegisterCall struct {
	Code, ActivationID, Region string
}

// RegisterCalls returns the register calls so far, in order.
func (h *FakeSSMHost) RegisterCalls() []RegisterCall {
	var out []RegisterCall
	for _, l := range h.Argv() {
		if m := registerArgv.FindStringSubmatch(l); m != nil {
			out = append(out, RegisterCall{Code: m[1], ActivationID: m[2], Region: m[3]})
		}
	}
	return out
}

// Answer is Systems Manager's answer to the register call of activationID:
// the managed instance id (mi-...), or an error text that fails it.
func (h *FakeSSMHost) Answer(activationID, answer string) error {
	if err := os.WriteFile(filepath.Join(h.serviceDir, activationID), []byte(answer+"\n"), 0o644); err != nil {
		return fmt.Errorf("fake ssm host: %w", err)
	}
	return nil
}
