package inject

import (
	"context"
	"fmt"
	"log/slog"
)

// Plan is everything one build writes into an image.
type Plan struct {
	Root []Entry    // ext4 root partition
	Boot []BootFile // FAT boot partition
}

// Inject writes the plan into the image file, reads every entry back to
// verify kind, mode, owner, link target and bytes, and runs a read-only
// e2fsck on the root partition. It is the single injection step used by
// `make image`, the build-image workflow, the Packer recipe and the tests.
func Inject(ctx context.Context, log *slog.Logger, image string, plan Plan, tools Tools) error {
	layout, err := ReadLayout(image)
	if err != nil {
		return err
	}
	log.Info("image layout", "image", image,
		"boot_offset", layout.Boot.Offset, "boot_size", layout.Boot.Size,
		"root_offset", layout.Root.Offset, "root_size", layout.Root.Size)
	root, err := NewRoot(image, layout.Root, tools)
	if err != nil {
		return err
	}
	boot, err := NewBoot(image, layout.Boot, tools)
	if err != nil {
		return err
	}
	if err := root.Apply(ctx, plan.Root); err != nil {
		return fmt.Errorf("root partition: %w", err)
	}
	if err := boot.Apply(ctx, plan.Boot); err != nil {
		return fmt.Errorf("boot partition: %w", err)
	}
	if err := root.Verify(ctx, plan.Root); err != nil {
		return err
	}
	if err := boot.Verify(ctx, plan.Boot); err != nil {
		return err
	}
	if err := root.Check(ctx); err != nil {
		return err
	}
	for _, e := range plan.Root {
		log.Info("wrote", "partition", "root", "kind", e.Kind.String(), "path", e.Path, "mode", fmt.Sprintf("%04o", e.Mode), "owner", fmt.Sprintf("%d:%d", e.UID, e.GID))
	}
	for _, f := range plan.Boot {
		log.Info("wrote", "partition", "boot", "path", "/"+f.Name)
	}
	return nil
}
