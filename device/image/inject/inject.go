package inject

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// Plan is everything one build writes into an image.
type Plan struct {
	Root []Entry    // ext4 root partition (both root file systems of an A/B image)
	Boot []BootFile // FAT boot partition
	// Data is written to the data partition of an A/B image (paths relative
	// to that file system's root); an image without one refuses a plan that
	// has Data entries.
	Data []Entry
}

// Inject writes the plan into the image file, reads every entry back to
// verify kind, mode, owner, link target and bytes, and runs a read-only
// e2fsck on every ext4 partition it wrote. It is the single injection step
// used by `make image`, the build-image workflow, the Packer recipe, the
// virtual Pi and the tests. On an A/B image (Layout.AB) the root entries go
// to rootfs A and, when it is populated, rootfs B; Data goes to the data
// partition.
func Inject(ctx context.Context, log *slog.Logger, image string, plan Plan, tools Tools) error {
	layout, err := ReadLayout(image)
	if err != nil {
		return err
	}
	if len(plan.Data) > 0 && !layout.AB() {
		return errors.New("the plan writes to a data partition, but the image has none (want the A/B layout: boot, rootfs A, rootfs B, data)")
	}
	log.Info("image layout", "image", image, "ab", layout.AB(),
		"boot_offset", layout.Boot.Offset, "boot_size", layout.Boot.Size,
		"root_offset", layout.Root.Offset, "root_size", layout.Root.Size, "rootfs_b", layout.RootB != nil)

	type target struct {
		name    string
		fs      *Root
		entries []Entry
	}
	var targets []target
	for _, p := range layout.Roots() {
		r, err := NewRoot(image, p, tools)
		if err != nil {
			return err
		}
		name := "root"
		if layout.AB() {
			name = fmt.Sprintf("root (partition %d)", p.Number)
		}
		targets = append(targets, target{name, r, plan.Root})
	}
	if layout.AB() && len(plan.Data) > 0 {
		r, err := NewRoot(image, *layout.Data, tools)
		if err != nil {
			return err
		}
		targets = append(targets, target{"data (partition 4)", r, plan.Data})
	}
	boot, err := NewBoot(image, layout.Boot, tools)
	if err != nil {
		return err
	}
	for _, t := range targets {
		if err := t.fs.Apply(ctx, t.entries); err != nil {
			return fmt.Errorf("%s partition: %w", t.name, err)
		}
	}
	if err := boot.Apply(ctx, plan.Boot); err != nil {
		return fmt.Errorf("boot partition: %w", err)
	}
	for _, t := range targets {
		if err := t.fs.Verify(ctx, t.entries); err != nil {
			return fmt.Errorf("%s partition: %w", t.name, err)
		}
	}
	if err := boot.Verify(ctx, plan.Boot); err != nil {
		return err
	}
	for _, t := range targets {
		if err := t.fs.Check(ctx); err != nil {
			return fmt.Errorf("%s partition: %w", t.name, err)
		}
	}
	for _, t := range targets {
		for _, e := range t.entries {
			log.Info("wrote", "partition", t.name, "kind", e.Kind.String(), "path", e.Path, "mode", fmt.Sprintf("%04o", e.Mode), "owner", fmt.Sprintf("%d:%d", e.UID, e.GID))
		}
	}
	for _, f := range plan.Boot {
		log.Info("wrote", "partition", "boot", "path", "/"+f.Name)
	}
	return nil
}
