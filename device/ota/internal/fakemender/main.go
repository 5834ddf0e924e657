// Command fakemender is a stand-in for the mender client in tests. Install
// it (copy or link) as "mender-update" (client 4 dialect) or "mender"
// (client 3, or 1.x legacy flags when the scenario's version starts with
// "1."), next to a scenario.json. It prints realistic progress and log
// lines, exits with mender's exit codes, records every call in calls.log
// and models an A/B partition pair in partitions.json:
//
//   - install sets a pending partition (or fails as the scenario says; a
//     kill mid-install leaves an "update in progress" that blocks the next
//     install until a rollback, like mender 4);
//   - commit makes the pending partition active, or fails when the
//     scenario says the device booted the old partition;
//   - rollback drops the pending partition;
//   - commit and rollback exit 2 when no update is in progress;
//   - show-artifact prints the committed artifact's name (the install
//     URL's file name without .mender; "rpi-initial" at first).
//
// With hangAfterCommit, commit takes effect (partitions.json written),
// then writes commit.done (holding its pid) and blocks until killed: a
// test kills the agent right after a commit that took effect. With
// hangBeforeCommit, commit writes commit.started (its pid) and blocks
// before it changes anything.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Scenario drives the fake. Its zero value is a mender 3 client whose
// installs succeed.
type Scenario struct {
	// Version printed by --version ("4.0.2", "3.5.0", "1.7.0").
	Version string `json:"version"`
	// ArtifactSizeMiB is the artifact size (default 16). Mender 3 prints
	// one progress line per MiB.
	ArtifactSizeMiB int `json:"artifactSizeMiB"`
	// InstallFailures makes the first N installs fail mid-download.
	InstallFailures int `json:"installFailures"`
	// FailAtPercent is where a failing install stops (default 40).
	FailAtPercent int `json:"failAtPercent"`
	// HangAtPercent > 0 makes installs block at that percentage until
	// killed, after creating install.hanging next to the binary.
	HangAtPercent int `json:"hangAtPercent"`
	// BootedOld: the device came back on the old partition, so commit
	// fails.
	BootedOld bool `json:"bootedOld"`
	// RollbackFails makes rollback exit 1.
	RollbackFails bool `json:"rollbackFails"`
	// HangAfterCommit and HangBeforeCommit: see the package comment.
	HangAfterCommit  bool `json:"hangAfterCommit"`
	HangBeforeCommit bool `json:"hangBeforeCommit"`
}

// Partitions is the persisted device model.
type Partitions struct {
	Active  string `json:"active"`
	Pending string `json:"pending,omitempty"`
	// InProgress: an install started and neither finished nor was rolled
	// back.
	InProgress bool `json:"inProgress,omitempty"`
	// ActiveArtifact and PendingArtifact name the artifacts on the
	// partitions (show-artifact prints ActiveArtifact).
	ActiveArtifact  string `json:"activeArtifact,omitempty"`
	PendingArtifact string `json:"pendingArtifact,omitempty"`
	Installs        int    `json:"installs"`
	Commits         int    `json:"commits"`
	Rollbacks       int    `json:"rollbacks"`
}

// Call is one line of calls.log.
type Call struct {
	Prog string   `json:"prog"`
	Args []string `json:"args"`
}

type fake struct {
	dir     string
	prog    string
	dialect string // "4", "3", "legacy"
	sc      Scenario
	parts   Partitions
}

func main() {
	os.Exit(run())
}

func run() int {
	f := &fake{dir: filepath.Dir(os.Args[0]), prog: filepath.Base(os.Args[0])}
	args := os.Args[1:]
	if err := f.record(args); err != nil {
		fmt.Fprintln(os.Stderr, "fakemender:", err)
		return 70
	}
	if err := f.load(); err != nil {
		fmt.Fprintln(os.Stderr, "fakemender:", err)
		return 70
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "Need an action")
		return 1
	}
	if args[0] == "--version" || args[0] == "-version" || args[0] == "-v" {
		if f.dialect == "4" && args[0] == "-version" {
			fmt.Fprintln(os.Stderr, "Could not fulfill request: Unrecognized option '-version'")
			return 1
		}
		f.printVersion()
		return 0
	}
	op, url, ok := f.parse(args)
	if !ok {
		return 1
	}
	switch op {
	case "install":
		return f.install(url)
	case "commit":
		return f.commit()
	case "rollback":
		return f.rollback()
	case "show-artifact":
		fmt.Println(f.parts.ActiveArtifact)
		return 0
	}
	return 1
}

func (f *fake) record(args []string) error {
	b, err := json.Marshal(Call{Prog: f.prog, Args: args})
	if err != nil {
		return err
	}
	lf, err := os.OpenFile(filepath.Join(f.dir, "calls.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := lf.Write(append(b, '\n')); err != nil {
		lf.Close()
		return err
	}
	return lf.Close()
}

func (f *fake) load() error {
	b, err := os.ReadFile(filepath.Join(f.dir, "scenario.json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &f.sc); err != nil {
			return fmt.Errorf("scenario.json: %w", err)
		}
	}
	if f.sc.ArtifactSizeMiB <= 0 {
		f.sc.ArtifactSizeMiB = 16
	}
	if f.sc.FailAtPercent <= 0 {
		f.sc.FailAtPercent = 40
	}
	switch {
	case f.prog == "mender-update":
		f.dialect = "4"
		if f.sc.Version == "" {
			f.sc.Version = "4.0.2"
		}
	case strings.HasPrefix(f.sc.Version, "1."):
		f.dialect = "legacy"
	default:
		f.dialect = "3"
		if f.sc.Version == "" {
			f.sc.Version = "3.5.0"
		}
	}
	f.parts = Partitions{Active: "A", ActiveArtifact: "rpi-initial"}
	b, err = os.ReadFile(filepath.Join(f.dir, "partitions.json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &f.parts); err != nil {
			return fmt.Errorf("partitions.json: %w", err)
		}
	}
	return nil
}

func (f *fake) save() {
	b, _ := json.Marshal(f.parts)
	tmp := filepath.Join(f.dir, ".partitions.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "fakemender:", err)
		os.Exit(70)
	}
	if err := os.Rename(tmp, filepath.Join(f.dir, "partitions.json")); err != nil {
		fmt.Fprintln(os.Stderr, "fakemender:", err)
		os.Exit(70)
	}
}

func (f *fake) printVersion() {
	if f.dialect == "4" {
		fmt.Println(f.sc.Version)
		return
	}
	fmt.Printf("%s\truntime: go1.20.5\n", f.sc.Version)
}

// parse returns the operation and the install URL, enforcing the dialect.
func (f *fake) parse(args []string) (op, url string, ok bool) {
	a := args[0]
	legacyFlag := strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--")
	switch {
	case f.dialect == "legacy" && !legacyFlag:
		fmt.Fprintf(os.Stderr, "flag provided but not defined: %s\nUsage of mender:\n  -install string\n  -commit\n  -rollback\n", a)
		return "", "", false
	case f.dialect == "4" && legacyFlag:
		fmt.Fprintf(os.Stderr, "Could not fulfill request: Unrecognized option '%s'\n", a)
		return "", "", false
	}
	op = strings.TrimPrefix(a, "-")
	switch op {
	case "install":
		if len(args) != 2 || args[1] == "" {
			fmt.Fprintln(os.Stderr, "Need a path to an artifact")
			return "", "", false
		}
		return op, args[1], true
	case "commit", "rollback", "show-artifact":
		if len(args) != 1 {
			fmt.Fprintf(os.Stderr, "Too many arguments: %s\n", args[1])
			return "", "", false
		}
		return op, "", true
	}
	fmt.Fprintf(os.Stderr, "No such action: %s\n", a)
	return "", "", false
}

func (f *fake) logf(level, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	if f.dialect == "4" {
		fmt.Fprintf(os.Stderr, "record_id=%d severity=%s time=%q name=\"Global\" msg=%q\n",
			time.Now().UnixNano()%1000, level, time.Now().UTC().Format("2006-Jan-02 15:04:05.000000"), msg)
		return
	}
	lv := map[string]string{"info": "INFO", "error": "ERRO", "warning": "WARN"}[level]
	fmt.Fprintf(os.Stderr, "%s[0000] %s\n", lv, msg)
}

// hang writes marker (holding the pid) next to the binary and blocks until
// killed.
func (f *fake) hang(marker string) {
	_ = os.WriteFile(filepath.Join(f.dir, marker), []byte(strconv.Itoa(os.Getpid())), 0o600)
	for {
		time.Sleep(time.Hour)
	}
}

// artifactName is the install source's file name without ".mender" (a
// URL's query is ignored).
func artifactName(src string) string {
	if i := strings.IndexAny(src, "?#"); i >= 0 {
		src = src[:i]
	}
	return strings.TrimSuffix(path.Base(src), ".mender")
}

func other(p string) string {
	if p == "A" {
		return "B"
	}
	return "A"
}

func (f *fake) install(url string) int {
	if f.parts.Pending != "" || f.parts.InProgress {
		f.logf("error", "Update already in progress. Please commit or roll back first")
		return 1
	}
	f.parts.Installs++
	f.parts.InProgress = true
	f.save()
	size := int64(f.sc.ArtifactSizeMiB) << 20
	f.logf("info", "Loaded configuration file: /etc/mender/mender.conf")
	f.logf("info", "Mender running on partition: /dev/mmcblk0p%d", map[string]int{"A": 2, "B": 3}[f.parts.Active])
	if f.dialect == "4" {
		f.logf("info", "Installing artifact...")
	} else {
		f.logf("info", "Performing remote update from: [%s].", url)
		fmt.Printf("Installing Artifact of size %d...\n", size)
		f.logf("info", "opening device /dev/mmcblk0p%d for writing", map[string]int{"A": 3, "B": 2}[f.parts.Active])
	}
	failing := f.parts.Installs <= f.sc.InstallFailures
	last := -1
	for mib := 1; mib <= f.sc.ArtifactSizeMiB; mib++ {
		written := int64(mib) << 20
		pct := int(written * 100 / size)
		if failing && pct >= f.sc.FailAtPercent {
			f.logf("error", "Download connection broken: unexpected EOF")
			f.logf("error", "Streaming failed.")
			// mender cleans up after a failed download: nothing modified.
			f.parts.InProgress = false
			f.save()
			if f.dialect == "4" {
				fmt.Fprintln(os.Stderr, "\nStreaming failed.\nSystem not modified.")
			}
			return 1
		}
		if f.sc.HangAtPercent > 0 && pct >= f.sc.HangAtPercent {
			_ = os.WriteFile(filepath.Join(f.dir, "install.hanging"), []byte("1"), 0o600)
			for {
				time.Sleep(time.Hour)
			}
		}
		switch f.dialect {
		case "4":
			if pct > last {
				fmt.Fprintf(os.Stderr, "\r%d%%", pct)
				last = pct
			}
		default:
			fmt.Printf("................................ %3d%% %d KiB\n", pct, written>>10)
		}
	}
	f.parts.InProgress = false
	f.parts.Pending = other(f.parts.Active)
	f.parts.PendingArtifact = artifactName(url)
	f.save()
	if f.dialect == "4" {
		fmt.Fprintln(os.Stderr)
		fmt.Println("Installed, but not committed.\nUse 'commit' to update, or 'rollback' to roll back the update.\nAt least one payload requested a reboot of the device it updated.")
	} else {
		f.logf("info", "All bytes were successfully written to the new partition")
		f.logf("info", "Enabling partition with new image installed to be a boot candidate: %d", map[string]int{"A": 2, "B": 3}[f.parts.Pending])
		f.logf("info", "Use 'commit' to update, or 'rollback' to roll back the update.")
	}
	return 0
}

func (f *fake) noUpdate() int {
	if f.dialect == "4" {
		fmt.Println("No update in progress.")
	} else {
		f.logf("error", "No update in progress.")
	}
	return 2
}

func (f *fake) commit() int {
	if f.parts.Pending == "" && !f.parts.InProgress {
		return f.noUpdate()
	}
	if f.sc.HangBeforeCommit {
		f.hang("commit.started")
	}
	if f.sc.BootedOld || f.parts.InProgress {
		f.logf("error", "Reboot to the new update failed. Expected \"upgrade_available\" flag to be true but it was false")
		if f.dialect == "4" {
			fmt.Println("Committing failed.")
		}
		return 1
	}
	f.parts.Active, f.parts.Pending = f.parts.Pending, ""
	f.parts.ActiveArtifact, f.parts.PendingArtifact = f.parts.PendingArtifact, ""
	f.parts.Commits++
	f.save()
	if f.sc.HangAfterCommit {
		f.hang("commit.done")
	}
	if f.dialect == "4" {
		fmt.Println("Committed.")
	} else {
		f.logf("info", "Committing update")
	}
	return 0
}

func (f *fake) rollback() int {
	if f.parts.Pending == "" && !f.parts.InProgress {
		return f.noUpdate()
	}
	if f.sc.RollbackFails {
		f.logf("error", "Rollback failed: could not set boot partition")
		return 1
	}
	f.parts.Pending, f.parts.InProgress, f.parts.PendingArtifact = "", false, ""
	f.parts.Rollbacks++
	f.save()
	if f.dialect == "4" {
		fmt.Println("Rolled back.")
	} else {
		f.logf("info", "Rolling back to the previous partition")
	}
	return 0
}
