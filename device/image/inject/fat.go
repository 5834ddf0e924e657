package inject

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// BootFile is a file to write at the top of the FAT boot partition (seen as
// /boot/firmware/<Name> on the running Pi).
type BootFile struct {
	Name   string // file name, no directories: "userconf.txt", "ssh"
	Source string // host file whose bytes are written
}

var bootName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Boot is the FAT boot partition inside an image file, accessed with mtools
// through "image@@offset".
type Boot struct {
	image string
	part  Partition
	tools Tools
}

// NewBoot returns access to the FAT file system in partition p of image.
func NewBoot(image string, p Partition, tools Tools) (*Boot, error) {
	if strings.Contains(image, "@@") {
		return nil, fmt.Errorf("image path %q: '@@' is not allowed (mtools uses image@@offset)", image)
	}
	abs, err := filepath.Abs(image)
	if err != nil {
		return nil, fmt.Errorf("image path: %w", err)
	}
	return &Boot{image: abs, part: p, tools: tools}, nil
}

func (b *Boot) drive() string { return fmt.Sprintf("%s@@%d", b.image, b.part.Offset) }

// mtoolsEnv skips mtools' disk geometry check (an image file has none) and
// keeps a user's ~/.mtoolsrc out of the way.
var mtoolsEnv = []string{"MTOOLS_SKIP_CHECK=1", "MTOOLSRC=/dev/null"}

// Apply copies each file into the boot partition, replacing existing files.
func (b *Boot) Apply(ctx context.Context, files []BootFile) error {
	for _, f := range files {
		if !bootName.MatchString(f.Name) {
			return fmt.Errorf("boot file %q: want a plain file name of [A-Za-z0-9._-]", f.Name)
		}
		if _, _, err := run(ctx, "", mtoolsEnv, b.tools.Mcopy, "-o", "-i", b.drive(), f.Source, "::/"+f.Name); err != nil {
			return fmt.Errorf("boot file %s: %w", f.Name, err)
		}
	}
	return nil
}

// ReadFile returns the bytes of a file at the top of the boot partition.
func (b *Boot) ReadFile(ctx context.Context, name string) ([]byte, error) {
	if !bootName.MatchString(name) {
		return nil, fmt.Errorf("boot file %q: want a plain file name of [A-Za-z0-9._-]", name)
	}
	out, _, err := run(ctx, "", mtoolsEnv, b.tools.Mtype, "-i", b.drive(), "::/"+name)
	if err != nil {
		return nil, fmt.Errorf("read boot file %s: %w", name, err)
	}
	return out, nil
}

// Verify reads every file back and compares it with its source.
func (b *Boot) Verify(ctx context.Context, files []BootFile) error {
	var bad []string
	for _, f := range files {
		got, err := b.ReadFile(ctx, f.Name)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		want, err := fileSum(f.Source)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: source: %v", f.Name, err))
			continue
		}
		if sha256.Sum256(got) != want {
			bad = append(bad, fmt.Sprintf("%s: contents differ from %s", f.Name, f.Source))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("boot partition does not hold what was written: %s", strings.Join(bad, "; "))
	}
	return nil
}
