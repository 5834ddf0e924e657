#!/bin/sh
# Stand-in for the AWS IoT Device Client's sample download-file.sh: the same
# arguments (runAsUser, URL, output file), the same messages and exit
# codes, but the file comes from mirror/ next to this script (named after
# the URL's last path element) instead of the network.
set -e
echo "Running download-file.sh"
user=$1
fileUrl=$2
outputFile=$3
echo "Username: $user"
echo "File URL: $fileUrl"
echo "Write documents to file: $outputFile"
src="$(dirname "$0")/mirror/${fileUrl##*/}"
if [ ! -f "$src" ]; then
	>&2 echo "download failed: $fileUrl is not in the mirror"
	exit 1
fi
if [ -d "$outputFile" ]; then
	cp "$src" "$outputFile/"
else
	cp "$src" "$outputFile"
fi
