#!/bin/sh
# Stand-in for the AWS IoT Device Client's sample remove-packages.sh: the
# packages are removed from installed-packages next to this script.
set -e
echo "Running remove-packages.sh"
user=$1
shift 1
packages=$*
echo "Username: $user"
echo "Packages to remove: $packages"
db="$(dirname "$0")/installed-packages"
touch "$db"
for p in $packages; do
	grep -vx "$p" "$db" > "$db.new" || true
	mv "$db.new" "$db"
done
