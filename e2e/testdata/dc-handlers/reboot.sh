#!/bin/sh
# Stand-in for the AWS IoT Device Client's sample reboot.sh: it asks for a
# reboot and, like a real reboot, never returns. The test sees
# reboot-requested (this script's PID) next to this script and plays the
# reboot: the agent and this script are killed, the boot id changes, the
# agent starts again.
set -e
echo "Running reboot.sh"
user=$1
echo "Username: $user"
echo $$ > "$(dirname "$0")/reboot-requested"
exec sleep 600
