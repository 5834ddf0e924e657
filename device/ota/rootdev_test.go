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
	dev, err = rootDeviceFrom([]byte(info + "40 28 0:45 / / rw - overlay overlay rw\n"))
	require.NoError(t, err)
	assert.Equal(t, "0:45", dev)

	_, err = rootDeviceFrom([]byte("22 28 0:21 / /sys rw - sysfs sysfs rw\n"))
	require.ErrorContains(t, err, "no mount on /")

	// This machine's.
	dev, err = ReadRootDevice()
	require.NoError(t, err)
	assert.Regexp(t, `^\d+:\d+$`, dev)
}
