#!/bin/sh
# The compose file's keys: each site's key pair in its own folder, with the other site's certificate beside
# it (what two real sites exchange, docs/two-sites.md), owned by the image's user (uid 10001), private keys
# 0600. From the repository root, after the README's install:
#   sudo packaging/container/keys.sh [DIR]     (DIR: default packaging/container/keys, what compose.yaml mounts)
#   MIADMARK=command                           (default .venv/bin/miadmark)
set -eu
KEYS=${1:-$(dirname "$0")/keys}
MIADMARK=${MIADMARK:-.venv/bin/miadmark}
$MIADMARK keys new hospital --out "$KEYS/hospital"
$MIADMARK keys new research --out "$KEYS/research"
cp "$KEYS/research/research.cert.pem" "$KEYS/hospital/"
cp "$KEYS/hospital/hospital.cert.pem" "$KEYS/research/"
if [ "$(id -u)" = 0 ]; then
  chown -R 10001 "$KEYS"      # the image's user reads its own 0600 key
else
  echo "keys.sh: not root: run 'sudo chown -R 10001 $KEYS' so that the image's user can read its key" >&2
fi
