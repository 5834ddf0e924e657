package inject

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Kind is the type of a file system entry.
type Kind int

// Entry kinds.
const (
	KindOther Kind = iota
	KindDir
	KindFile
	KindSymlink
)

func (k Kind) String() string {
	switch k {
	case KindDir:
		return "dir"
	case KindFile:
		return "file"
	case KindSymlink:
		return "symlink"
	}
	return "other"
}

// Entry is one thing to create in the root file system.
type Entry struct {
	Kind   Kind
	Path   string      // absolute path inside the file system
	Mode   fs.FileMode // permission bits (at most 07777); ignored for symlinks
	UID    uint32
	GID    uint32
	Source string // KindFile: the host file whose bytes are written
	Target string // KindSymlink: the link target
}

// Inode is what the root file system holds at a path.
type Inode struct {
	Kind   Kind
	Mode   fs.FileMode // permission bits
	UID    uint32
	GID    uint32
	Size   int64
	Target string // symlink target (fast symlinks, under 60 bytes)
}

// ErrNotExist is returned (wrapped) by Stat for a path that does not exist.
var ErrNotExist = errors.New("no such file or directory")

// maxSymlinkTarget keeps symlinks "fast" (target stored in the inode), the
// only kind debugfs can read back for verification.
const maxSymlinkTarget = 59

var safePath = regexp.MustCompile(`^(/[A-Za-z0-9._@+-]+)+$`)

// checkPath accepts absolute, clean paths made of characters that need no
// quoting in a debugfs request.
func checkPath(p string) error {
	if !safePath.MatchString(p) || path.Clean(p) != p {
		return fmt.Errorf("path %q: want an absolute, clean path of [A-Za-z0-9._@+-] components", p)
	}
	for _, c := range strings.Split(p[1:], "/") {
		if c == "." || c == ".." {
			return fmt.Errorf("path %q: . and .. components are not allowed", p)
		}
	}
	return nil
}

// Root is the ext4 root file system inside an image file, accessed with
// debugfs through the unix I/O manager's "?offset=" option.
type Root struct {
	image string
	part  Partition
	tools Tools
}

// NewRoot returns access to the ext4 file system in partition p of image.
func NewRoot(image string, p Partition, tools Tools) (*Root, error) {
	if strings.ContainsAny(image, "?\n") {
		return nil, fmt.Errorf("image path %q: '?' and newlines are not allowed (debugfs uses ?offset=)", image)
	}
	abs, err := filepath.Abs(image)
	if err != nil {
		return nil, fmt.Errorf("image path: %w", err)
	}
	return &Root{image: abs, part: p, tools: tools}, nil
}

func (r *Root) device() string { return fmt.Sprintf("%s?offset=%d", r.image, r.part.Offset) }

var debugfsEnv = []string{"DEBUGFS_PAGER=__none__", "PAGER=__none__"}

func (r *Root) request(ctx context.Context, req string) (stdout, stderr []byte, err error) {
	return run(ctx, "", debugfsEnv, r.tools.Debugfs, "-R", req, r.device())
}

var (
	statTypeRe  = regexp.MustCompile(`Type:\s+(\S+)\s+Mode:\s+([0-7]+)`)
	statOwnerRe = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)(?:\s+Project:\s+\d+)?\s+Size:\s+(\d+)`)
	statLinkRe  = regexp.MustCompile(`Fast link dest:\s+"(.*)"`)
)

// Stat describes the inode at p without following a final symlink.
func (r *Root) Stat(ctx context.Context, p string) (Inode, error) {
	if err := checkPath(p); err != nil {
		return Inode{}, err
	}
	out, errOut, err := r.request(ctx, "stat "+p)
	if err != nil {
		return Inode{}, fmt.Errorf("stat %s: %w", p, err)
	}
	m := statTypeRe.FindSubmatch(out)
	if m == nil {
		if bytes.Contains(errOut, []byte("not found")) {
			return Inode{}, fmt.Errorf("stat %s: %w", p, ErrNotExist)
		}
		return Inode{}, fmt.Errorf("stat %s: unexpected debugfs output: %s", p, strings.TrimSpace(string(errOut)))
	}
	var ino Inode
	switch string(m[1]) {
	case "directory":
		ino.Kind = KindDir
	case "regular":
		ino.Kind = KindFile
	case "symlink":
		ino.Kind = KindSymlink
	}
	mode, err := strconv.ParseUint(string(m[2]), 8, 32)
	if err != nil {
		return Inode{}, fmt.Errorf("stat %s: mode %q: %w", p, m[2], err)
	}
	ino.Mode = fs.FileMode(mode) & 0o7777
	o := statOwnerRe.FindSubmatch(out)
	if o == nil {
		return Inode{}, fmt.Errorf("stat %s: no User/Group/Size in debugfs output", p)
	}
	uid, _ := strconv.ParseUint(string(o[1]), 10, 32)
	gid, _ := strconv.ParseUint(string(o[2]), 10, 32)
	size, _ := strconv.ParseInt(string(o[3]), 10, 64)
	ino.UID, ino.GID, ino.Size = uint32(uid), uint32(gid), size
	if ino.Kind == KindSymlink {
		if l := statLinkRe.FindSubmatch(out); l != nil {
			ino.Target = string(l[1])
		}
	}
	return ino, nil
}

// ReadFile returns the contents of the regular file at p.
func (r *Root) ReadFile(ctx context.Context, p string) ([]byte, error) {
	ino, err := r.Stat(ctx, p)
	if err != nil {
		return nil, err
	}
	if ino.Kind != KindFile {
		return nil, fmt.Errorf("read %s: is a %s, not a regular file", p, ino.Kind)
	}
	out, _, err := r.request(ctx, "cat "+p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if int64(len(out)) != ino.Size {
		return nil, fmt.Errorf("read %s: got %d bytes, inode says %d", p, len(out), ino.Size)
	}
	return out, nil
}

// Check runs e2fsck read-only on the root file system and fails on any
// inconsistency.
func (r *Root) Check(ctx context.Context) error {
	if _, _, err := run(ctx, "", nil, r.tools.E2fsck, "-f", "-n", r.device()); err != nil {
		return fmt.Errorf("e2fsck: %w", err)
	}
	return nil
}

func validate(entries []Entry) error {
	seen := map[string]bool{}
	for _, e := range entries {
		if err := checkPath(e.Path); err != nil {
			return err
		}
		if e.Path == "/" {
			return errors.New("path /: cannot write the root directory itself")
		}
		if seen[e.Path] {
			return fmt.Errorf("path %s: listed twice", e.Path)
		}
		seen[e.Path] = true
		if e.Mode&^0o7777 != 0 {
			return fmt.Errorf("path %s: mode %o has bits outside 07777", e.Path, e.Mode)
		}
		switch e.Kind {
		case KindDir:
		case KindFile:
			st, err := os.Stat(e.Source)
			if err != nil {
				return fmt.Errorf("path %s: source: %w", e.Path, err)
			}
			if !st.Mode().IsRegular() {
				return fmt.Errorf("path %s: source %s is not a regular file", e.Path, e.Source)
			}
		case KindSymlink:
			if err := checkPath(e.Target); err != nil {
				return fmt.Errorf("symlink %s: target: %w", e.Path, err)
			}
			if len(e.Target) > maxSymlinkTarget {
				return fmt.Errorf("symlink %s: target %q is longer than %d bytes", e.Path, e.Target, maxSymlinkTarget)
			}
		default:
			return fmt.Errorf("path %s: unknown kind %d", e.Path, e.Kind)
		}
	}
	return nil
}

// stage copies every file source into a private directory under names that
// need no quoting ("f000", ...) and returns the name for each entry index.
// debugfs then runs in that directory and names only those files, so host
// paths never need quoting in a debugfs request.
func stage(dir string, entries []Entry) (map[int]string, error) {
	names := map[int]string{}
	for i, e := range entries {
		if e.Kind != KindFile {
			continue
		}
		name := fmt.Sprintf("f%03d", i)
		if err := copyFile(e.Source, filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("path %s: stage source: %w", e.Path, err)
		}
		names[i] = name
	}
	return names, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Apply creates every entry in the root file system: missing parent
// directories (0755 root), listed directories (mode and owner set even when
// they exist), files (replacing an existing regular file) and symlinks
// (replacing an existing symlink). It refuses to replace anything of a
// different kind. Apply is idempotent. It does not verify: call Verify.
func (r *Root) Apply(ctx context.Context, entries []Entry) error {
	if err := validate(entries); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "image-inject-")
	if err != nil {
		return fmt.Errorf("staging directory: %w", err)
	}
	defer os.RemoveAll(dir)
	names, err := stage(dir, entries)
	if err != nil {
		return err
	}
	script, err := r.plan(ctx, entries, names)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "requests"), []byte(script), 0o600); err != nil {
		return fmt.Errorf("write debugfs requests: %w", err)
	}
	_, errOut, err := run(ctx, dir, debugfsEnv, r.tools.Debugfs, "-w", "-f", "requests", r.device())
	if err != nil {
		return fmt.Errorf("debugfs: %w", err)
	}
	// debugfs exits 0 even when a request fails; anything on stderr besides
	// its version banner is a failed request.
	var problems []string
	for _, line := range strings.Split(strings.TrimSpace(string(errOut)), "\n") {
		if line == "" || strings.HasPrefix(line, "debugfs ") {
			continue
		}
		problems = append(problems, line)
	}
	if len(problems) > 0 {
		return fmt.Errorf("debugfs requests failed: %s", strings.Join(problems, "; "))
	}
	return nil
}

// plan probes the file system and returns the debugfs request script.
func (r *Root) plan(ctx context.Context, entries []Entry, names map[int]string) (string, error) {
	declared := map[string]Entry{}
	for _, e := range entries {
		if e.Kind == KindDir {
			declared[e.Path] = e
		}
	}
	// Every directory the entries need, parents before children.
	dirSet := map[string]bool{}
	for _, e := range entries {
		for d := path.Dir(e.Path); d != "/"; d = path.Dir(d) {
			dirSet[d] = true
		}
		if e.Kind == KindDir {
			dirSet[e.Path] = true
		}
	}
	dirs := make([]string, 0, len(dirSet))
	for d := range dirSet {
		dirs = append(dirs, d)
	}
	sort.Slice(dirs, func(i, j int) bool {
		di, dj := strings.Count(dirs[i], "/"), strings.Count(dirs[j], "/")
		if di != dj {
			return di < dj
		}
		return dirs[i] < dirs[j]
	})

	var b strings.Builder
	req := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	owner := func(p string, uid, gid uint32) {
		req("sif %s uid %d", p, uid)
		req("sif %s gid %d", p, gid)
	}
	created := map[string]bool{}
	for _, d := range dirs {
		exists := false
		if !created[path.Dir(d)] {
			ino, err := r.Stat(ctx, d)
			switch {
			case err == nil && ino.Kind != KindDir:
				return "", fmt.Errorf("path %s: the image has a %s there, a directory is needed", d, ino.Kind)
			case err == nil:
				exists = true
			case !errors.Is(err, ErrNotExist):
				return "", err
			}
		}
		e, isDeclared := declared[d]
		if !exists {
			req("mkdir %s", d)
			created[d] = true
			if !isDeclared {
				e = Entry{Mode: 0o755}
			}
		}
		if !exists || isDeclared {
			req("sif %s mode 0%o", d, 0o040000|uint32(e.Mode))
			owner(d, e.UID, e.GID)
		}
	}
	for i, e := range entries {
		if e.Kind == KindDir {
			continue
		}
		if !created[path.Dir(e.Path)] {
			ino, err := r.Stat(ctx, e.Path)
			switch {
			case err == nil && ino.Kind != e.Kind:
				return "", fmt.Errorf("path %s: the image has a %s there, refusing to replace it with a %s", e.Path, ino.Kind, e.Kind)
			case err == nil:
				req("rm %s", e.Path)
			case !errors.Is(err, ErrNotExist):
				return "", err
			}
		}
		switch e.Kind {
		case KindFile:
			req("write %s %s", names[i], e.Path)
			req("sif %s mode 0%o", e.Path, 0o100000|uint32(e.Mode))
		case KindSymlink:
			req("symlink %s %s", e.Path, e.Target)
		}
		owner(e.Path, e.UID, e.GID)
	}
	return b.String(), nil
}

// Verify reads every entry back from the file system and checks kind, mode,
// owner, symlink target and (for files) the exact bytes of the source. The
// error lists every mismatch.
func (r *Root) Verify(ctx context.Context, entries []Entry) error {
	var bad []string
	for _, e := range entries {
		ino, err := r.Stat(ctx, e.Path)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		if ino.Kind != e.Kind {
			bad = append(bad, fmt.Sprintf("%s: is a %s, want %s", e.Path, ino.Kind, e.Kind))
			continue
		}
		if ino.UID != e.UID || ino.GID != e.GID {
			bad = append(bad, fmt.Sprintf("%s: owner %d:%d, want %d:%d", e.Path, ino.UID, ino.GID, e.UID, e.GID))
		}
		switch e.Kind {
		case KindSymlink:
			if ino.Target != e.Target {
				bad = append(bad, fmt.Sprintf("%s: links to %q, want %q", e.Path, ino.Target, e.Target))
			}
			continue
		default:
			if ino.Mode != e.Mode {
				bad = append(bad, fmt.Sprintf("%s: mode %04o, want %04o", e.Path, ino.Mode, e.Mode))
			}
		}
		if e.Kind == KindFile {
			want, err := fileSum(e.Source)
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s: source: %v", e.Path, err))
				continue
			}
			got, err := r.ReadFile(ctx, e.Path)
			if err != nil {
				bad = append(bad, err.Error())
				continue
			}
			if sha256.Sum256(got) != want {
				bad = append(bad, fmt.Sprintf("%s: contents differ from %s", e.Path, e.Source))
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("the file system does not hold what was written: %s", strings.Join(bad, "; "))
	}
	return nil
}

func fileSum(p string) ([32]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return [32]byte{}, err
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
