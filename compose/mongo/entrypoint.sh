#!/bin/bash
# The mongo image's entrypoint, after making the replica set's key file once: auth on a
# replica set needs one (members prove to each other they belong), readable by mongod only.
set -euo pipefail
key=/data/db/replica.key
if [ ! -s "$key" ]; then
  umask 077
  head -c 756 /dev/urandom | base64 -w0 > "$key.tmp"
  mv "$key.tmp" "$key"
fi
chown mongodb:mongodb "$key"
chmod 400 "$key"
exec docker-entrypoint.sh "$@"
