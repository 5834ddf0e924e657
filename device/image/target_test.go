package image_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iot-fleet/iot-fleet/device/config"
	"github.com/iot-fleet/iot-fleet/device/image"
	"github.com/iot-fleet/iot-fleet/device/image/inject"
)

const abFstab = "/dev/root / ext4 defaults 0 1\n/dev/vda1 /boot/firmware vfat defaults 0 2\n/dev/vda4 /data ext4 defaults 0 2\n"

func TestStateFstab(t *testing.T) {
	out, err := image.StateFstab([]byte(abFstab))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(out), abFstab), "the base image's lines are kept")
	assert.True(t, strings.HasSuffix(string(out), "\n"+image.StateBindMount+"\n"))
	assert.Equal(t, "/data/fleet-agent /var/lib/fleet-agent none bind,x-systemd.requires-mounts-for=/data 0 0", image.StateBindMount)

	// Idempotent; a base without a final newline gets one.
	again, err := image.StateFstab(out)
	require.NoError(t, err)
	assert.Equal(t, string(out), string(again))
	out, err = image.StateFstab([]byte(strings.TrimSuffix(abFstab, "\n")))
	require.NoError(t, err)
	assert.Contains(t, string(out), "/data ext4 defaults 0 2\n#")

	// /data given with a trailing slash still counts; comments do not.
	_, err = image.StateFstab([]byte("/dev/vda4 /data/ ext4 defaults 0 2\n"))
	assert.NoError(t, err)
	for name, c := range map[string]struct{ fstab, want string }{
		"no data mount": {"/dev/root / ext4 defaults 0 1\n# /dev/vda4 /data ext4 defaults 0 2\n", "does not mount the data partition at /data"},
		"empty":         {"", "does not mount the data partition"},
		"state mounted": {abFstab + "tmpfs /var/lib/fleet-agent tmpfs defaults 0 0\n", "already a mount point"},
		"other bind":    {abFstab + "/data/x /var/lib/fleet-agent none bind 0 0\n", "already a mount point"},
		"short line":    {abFstab + "/dev/vda9 /mnt\n", "line 4: want at least 4 fields"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := image.StateFstab([]byte(c.fstab))
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestDataPlan(t *testing.T) {
	assert.Equal(t, []inject.Entry{{Kind: inject.KindDir, Path: "/fleet-agent", Mode: 0o700}}, image.DataPlan())
}

func TestApplyTarget(t *testing.T) {
	rendered, err := image.RenderConfig(stackValues())
	require.NoError(t, err)

	// The zero target changes nothing the agent reads.
	same, err := image.ApplyTarget(rendered, image.Target{})
	require.NoError(t, err)
	var a, b map[string]any
	require.NoError(t, json.Unmarshal(rendered, &a))
	require.NoError(t, json.Unmarshal(same, &b))
	assert.Equal(t, a, b)

	out, err := image.ApplyTarget(rendered, image.Target{
		Endpoint: "iot.vm.internal", Port: 8884, RootCAFile: image.RootCAPath,
		SerialFiles:  []string{"/sys/firmware/qemu_fw_cfg/by_name/opt/iot-fleet/serial/raw"},
		AllowedHosts: []string{"artifacts.vm.internal"}, AllowHTTP: true,
	})
	require.NoError(t, err)
	cfg, err := config.ParseValid(out)
	require.NoError(t, err)
	assert.Equal(t, "iot.vm.internal", cfg.Endpoint)
	assert.Equal(t, 8884, cfg.Port)
	assert.Equal(t, "/etc/fleet-agent/root-ca.pem", cfg.RootCAFile)
	assert.Equal(t, []string{"/sys/firmware/qemu_fw_cfg/by_name/opt/iot-fleet/serial/raw"}, cfg.Provisioning.SerialFiles)
	assert.Equal(t, []string{"artifacts.vm.internal"}, cfg.OTA.AllowedHosts)
	assert.True(t, cfg.OTA.AllowHTTP)
	// Everything else is the stack's.
	assert.Equal(t, "iot-fleet-dev", cfg.Provisioning.TemplateName)
	assert.Equal(t, image.ArtifactVerifyKeyPath, cfg.OTA.ArtifactVerifyKey)
	assert.Equal(t, "^[0-9a-f]{16}$", cfg.Provisioning.SerialPattern)

	for name, c := range map[string]struct {
		target image.Target
		want   string
	}{
		"endpoint with port":   {image.Target{Endpoint: "iot.vm.internal:8883"}, "endpoint"},
		"port out of range":    {image.Target{Port: 70000}, "port"},
		"relative serial file": {image.Target{SerialFiles: []string{"serial"}}, `serial file "serial"`},
		"serial file w/ space": {image.Target{SerialFiles: []string{"/a b"}}, `serial file "/a b"`},
		"bad artifact host":    {image.Target{AllowedHosts: []string{"https://x/"}}, "allowedHosts[0]"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := image.ApplyTarget(rendered, c.target)
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestCheckRootCA(t *testing.T) {
	amazon, err := image.Files().Open("certs/AmazonRootCA1.pem")
	require.NoError(t, err)
	defer amazon.Close()
	buf := make([]byte, 8192)
	n, _ := amazon.Read(buf)
	require.NoError(t, image.CheckRootCA(buf[:n]))
	require.NoError(t, image.CheckRootCA(append(append([]byte{}, buf[:n]...), buf[:n]...)), "a bundle of CAs")

	cert, key := claimPair(t)
	assert.ErrorContains(t, image.CheckRootCA(cert), "is not a CA certificate")
	assert.ErrorContains(t, image.CheckRootCA(key), "want only CERTIFICATE blocks")
	assert.ErrorContains(t, image.CheckRootCA(nil), "no PEM certificate")
	assert.ErrorContains(t, image.CheckRootCA(append(append([]byte{}, buf[:n]...), "junk"...)), "trailing data")
}
