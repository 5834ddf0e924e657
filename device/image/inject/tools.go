package inject

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Tools are the host programs the injector runs. Debian 12 packages:
// e2fsprogs (debugfs, e2fsck) and mtools (mcopy, mtype).
type Tools struct {
	Debugfs string
	E2fsck  string
	Mcopy   string
	Mtype   string
}

// FindTools looks the programs up in PATH and, because debugfs and e2fsck
// live in /usr/sbin which a non-root PATH often lacks, in /usr/sbin and /sbin.
// The error names every missing program and the package that provides it.
func FindTools() (Tools, error) {
	var missing []string
	find := func(name, pkg string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
			p := filepath.Join(dir, name)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				return p
			}
		}
		missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", name, pkg))
		return ""
	}
	t := Tools{
		Debugfs: find("debugfs", "e2fsprogs"),
		E2fsck:  find("e2fsck", "e2fsprogs"),
		Mcopy:   find("mcopy", "mtools"),
		Mtype:   find("mtype", "mtools"),
	}
	if len(missing) > 0 {
		return Tools{}, fmt.Errorf("missing tools: %s", strings.Join(missing, ", "))
	}
	return t, nil
}

// run executes a tool and returns its standard output. The command's
// standard error is returned in the error when it fails; callers never pass
// secret material on the command line or read it back into an error.
func run(ctx context.Context, dir string, env []string, name string, args ...string) (stdout, stderr []byte, err error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("%s: %w", filepath.Base(name), ctx.Err())
		}
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return out.Bytes(), errb.Bytes(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
		}
		return nil, nil, fmt.Errorf("%s: %w", filepath.Base(name), err)
	}
	return out.Bytes(), errb.Bytes(), nil
}
