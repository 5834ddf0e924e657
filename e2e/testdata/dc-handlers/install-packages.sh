#!/bin/sh
# Stand-in for the AWS IoT Device Client's sample install-packages.sh: the
# same arguments (runAsUser, then package names) and messages; the
# packages are recorded in installed-packages next to this script instead
# of being installed by apt-get.
set -e
echo "Running install-packages.sh"
user=$1
shift 1
packages=$*
echo "Username: $user"
echo "Packages to install: $packages"
if [ -z "$packages" ]; then
	>&2 echo "No packages given"
	exit 1
fi
for p in $packages; do
	echo "$p" >> "$(dirname "$0")/installed-packages"
done
