package ota

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRootDevice(t *testing.T) {
	// A Raspberry Pi running its second root partition, with a bind mount
	// and an overlay elsewhere.
	info := `22 28 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
28 1 179:3 / / ro,relatime shared:1 - ext4 /dev/mmcblk0p3 ro
30 28 179:4 /fleet-agent /var/lib/fleet-agent rw shared:9 - ext4 /dev/mmcblk0p4 rw
`
	dev, err := rootDeviceFrom([]byte(info))
	require.NoError(t, err)
	assert.Equal(t, "179:3", dev)

	// Mounted over: the last mount on / is in effect.
	dev, err = rootDeviceFrom([]byte(info + "40 28 254:2 / / rw - ext4 /dev/vda2 rw\n"))
	require.NoError(t, err)
	assert.Equal(t, "254:2", dev)
	// An overlay root's device number changes from boot to boot and names
	// no partition: unknown, never a false "another partition".
	_, err = rootDeviceFrom([]byte(info + "40 28 0:45 / / rw - overlay overlay rw\n"))
	require.ErrorContains(t, err, "not mounted from a block device")

	_, err = rootDeviceFrom([]byte("22 28 0:21 / /sys rw - sysfs sysfs rw\n"))
	require.ErrorContains(t, err, "no mount on /")

	// This machine's (a container's root is an overlay).
	dev, err = ReadRootDevice()
	if err != nil {
		assert.ErrorContains(t, err, "not mounted from a block device")
	} else {
		assert.Regexp(t, `^[1-9]\d*:\d+$`, dev)
	}
}
