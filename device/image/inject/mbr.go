// Package inject writes files into a Raspberry Pi OS disk image file without
// mounting it: the FAT boot partition through mtools (mcopy/mtype with
// "image@@offset") and the ext4 root partition through debugfs (e2fsprogs),
// with explicit modes, owners and symlinks. Nothing needs root, loop devices
// or a privileged container, so the same step runs on a CI runner, a
// developer's machine and in the tests, which read every file back.
package inject

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// SectorSize is the logical sector size of the MBR partition table. Raspberry
// Pi OS images (and SD cards) use 512-byte sectors.
const SectorSize = 512

// Partition is one primary partition of an MBR partition table.
type Partition struct {
	Number int   // 1..4
	Type   byte  // MBR partition type (0x0c FAT32 LBA, 0x83 Linux, ...)
	Offset int64 // bytes from the start of the image
	Size   int64 // bytes
}

// FAT reports whether the partition type is one of the FAT types a Raspberry
// Pi boots from.
func (p Partition) FAT() bool {
	switch p.Type {
	case 0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e:
		return true
	}
	return false
}

// ReadMBR returns the non-empty primary partitions of the MBR partition table
// at the start of r. It rejects a missing boot signature, a GPT protective
// MBR, and partitions that extend past size (the image size in bytes).
func ReadMBR(r io.ReaderAt, size int64) ([]Partition, error) {
	var sector [SectorSize]byte
	if _, err := r.ReadAt(sector[:], 0); err != nil {
		return nil, fmt.Errorf("read MBR: %w", err)
	}
	if sector[510] != 0x55 || sector[511] != 0xaa {
		return nil, errors.New("no MBR partition table: boot signature 0x55aa missing in sector 0")
	}
	var parts []Partition
	for i := 0; i < 4; i++ {
		e := sector[446+16*i : 446+16*(i+1)]
		typ := e[4]
		start := int64(binary.LittleEndian.Uint32(e[8:12]))
		count := int64(binary.LittleEndian.Uint32(e[12:16]))
		if typ == 0 || count == 0 {
			continue
		}
		if typ == 0xee {
			return nil, errors.New("GPT protective MBR: GPT images are not supported, Raspberry Pi OS images use MBR")
		}
		p := Partition{Number: i + 1, Type: typ, Offset: start * SectorSize, Size: count * SectorSize}
		if p.Offset+p.Size > size {
			return nil, fmt.Errorf("partition %d (type 0x%02x) ends at byte %d, past the end of the image (%d bytes)", p.Number, typ, p.Offset+p.Size, size)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return nil, errors.New("MBR partition table has no partitions")
	}
	return parts, nil
}

// Layout is where the file systems of an image live: a Raspberry Pi OS
// image has two (boot, root); an A/B image as mender's full-system updates
// need has four (boot, rootfs A, rootfs B, data).
type Layout struct {
	Boot Partition // FAT boot partition, mounted at /boot/firmware on the Pi
	Root Partition // ext4 root file system (rootfs A on an A/B image)
	// RootB is partition 3 of an A/B image when it holds an ext4 file
	// system (a copy of rootfs A); nil when it is empty (mender writes it on
	// the first update) or the image is not A/B.
	RootB *Partition
	// Data is partition 4 of an A/B image: the ext4 data partition mounted at
	// /data by both root file systems, which keeps its contents across
	// updates. nil on a two-partition image.
	Data *Partition
}

// AB reports whether the image has the A/B layout (a data partition).
func (l Layout) AB() bool { return l.Data != nil }

// Roots returns the root file systems to write: rootfs A, and rootfs B when
// it is populated.
func (l Layout) Roots() []Partition {
	if l.RootB != nil {
		return []Partition{l.Root, *l.RootB}
	}
	return []Partition{l.Root}
}

// ReadLayout opens the image file and finds its boot partition (partition 1,
// FAT) and root partition (partition 2, Linux), checking each file system's
// signature so a wrong image fails here rather than inside debugfs or mtools.
// When partitions 3 and 4 are both Linux partitions the image has the A/B
// layout: partition 4 must hold an ext4 file system (the data partition) and
// partition 3 (rootfs B) is written too when it holds one.
func ReadLayout(image string) (Layout, error) {
	f, err := os.Open(image)
	if err != nil {
		return Layout{}, fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Layout{}, fmt.Errorf("stat image: %w", err)
	}
	parts, err := ReadMBR(f, st.Size())
	if err != nil {
		return Layout{}, fmt.Errorf("image %s: %w", image, err)
	}
	var l Layout
	var haveBoot, haveRoot bool
	var p3, p4 *Partition
	for _, p := range parts {
		switch {
		case p.Number == 1 && p.FAT():
			l.Boot, haveBoot = p, true
		case p.Number == 2 && p.Type == 0x83:
			l.Root, haveRoot = p, true
		case p.Number == 3 && p.Type == 0x83:
			p3 = &p
		case p.Number == 4 && p.Type == 0x83:
			p4 = &p
		}
	}
	if !haveBoot || !haveRoot {
		return Layout{}, fmt.Errorf("image %s: want partition 1 FAT (boot) and partition 2 Linux (root), found %s", image, describe(parts))
	}
	if err := checkFAT(f, l.Boot); err != nil {
		return Layout{}, fmt.Errorf("image %s: %w", image, err)
	}
	if err := checkExt(f, l.Root); err != nil {
		return Layout{}, fmt.Errorf("image %s: %w", image, err)
	}
	if p3 != nil && p4 != nil {
		if err := checkExt(f, *p4); err != nil {
			return Layout{}, fmt.Errorf("image %s: A/B layout (partitions 3 and 4 are Linux partitions): data partition 4: %w", image, err)
		}
		l.Data = p4
		if checkExt(f, *p3) == nil {
			l.RootB = p3
		}
	}
	return l, nil
}

func describe(parts []Partition) string {
	s := ""
	for i, p := range parts {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%d:0x%02x", p.Number, p.Type)
	}
	return s
}

func checkFAT(r io.ReaderAt, p Partition) error {
	var bs [SectorSize]byte
	if _, err := r.ReadAt(bs[:], p.Offset); err != nil {
		return fmt.Errorf("boot partition: read boot sector: %w", err)
	}
	if bs[510] != 0x55 || bs[511] != 0xaa || (string(bs[82:85]) != "FAT" && string(bs[54:57]) != "FAT") {
		return fmt.Errorf("boot partition at byte %d holds no FAT file system", p.Offset)
	}
	return nil
}

func checkExt(r io.ReaderAt, p Partition) error {
	name := "root partition"
	if p.Number != 2 {
		name = fmt.Sprintf("partition %d", p.Number)
	}
	var magic [2]byte
	if _, err := r.ReadAt(magic[:], p.Offset+1024+56); err != nil {
		return fmt.Errorf("%s: read superblock: %w", name, err)
	}
	if binary.LittleEndian.Uint16(magic[:]) != 0xef53 {
		return fmt.Errorf("%s at byte %d holds no ext2/3/4 file system", name, p.Offset)
	}
	return nil
}
