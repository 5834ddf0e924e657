package ota

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
)

const mountInfoPath = "/proc/self/mountinfo"

// ReadRootDevice returns the device ("major:minor") the running root
// file system is mounted from, as /proc/self/mountinfo lists it: on an A/B
// device, which of the two root partitions is running. After a full-system
// update it differs from the one before the install exactly when the
// device runs the new partition.
func ReadRootDevice() (string, error) {
	b, err := os.ReadFile(mountInfoPath)
	if err != nil {
		return "", fmt.Errorf("read root device: %w", err)
	}
	return rootDeviceFrom(b)
}

// rootDeviceFrom parses mountinfo: "ID PARENT MAJOR:MINOR ROOT MOUNTPOINT
// ...". The last mount on "/" is the one in effect; an overlay or other
// root without a block device (major 0) has no partition to tell.
func rootDeviceFrom(mountinfo []byte) (string, error) {
	dev := ""
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 5 && f[4] == "/" && strings.Contains(f[2], ":") {
			dev = f[2]
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read root device: %w", err)
	}
	switch {
	case dev == "":
		return "", fmt.Errorf("read root device: no mount on / in %s", mountInfoPath)
	case strings.HasPrefix(dev, "0:"):
		// An overlay, tmpfs or network root: its device number is
		// allocated at mount time and names no partition.
		return "", fmt.Errorf("read root device: the root file system (%s) is not mounted from a block device", dev)
	}
	return dev, nil
}
