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

// Layout is where the two file systems of a Raspberry Pi OS image live.
type Layout struct {
	Boot Partition // FAT boot partition, mounted at /boot/firmware on the Pi
	Root Partition // ext4 root file system
}

// ReadLayout opens the image file and finds its boot partition (partition 1,
// FAT) and root partition (partition 2, Linux), checking each file system's
// signature so a wrong image fails here rather than inside debugfs or mtools.
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
	for _, p := range parts {
		switch {
		case p.Number == 1 && p.FAT():
			l.Boot, haveBoot = p, true
		case p.Number == 2 && p.Type == 0x83:
			l.Root, haveRoot = p, true
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
	var magic [2]byte
	if _, err := r.ReadAt(magic[:], p.Offset+1024+56); err != nil {
		return fmt.Errorf("root partition: read superblock: %w", err)
	}
	if binary.LittleEndian.Uint16(magic[:]) != 0xef53 {
		return fmt.Errorf("root partition at byte %d holds no ext2/3/4 file system", p.Offset)
	}
	return nil
}
