#!/bin/sh
# The image's build steps, in one place: the Dockerfile runs this script, and CI (which has no
# container runtime) runs it too, into a temporary prefix (tests/test_ops_packaging.py).
#
#   build.sh PREFIX            Debian packages (root only; MIADMARK_SKIP_APT=1 skips), a virtual
#                              environment in PREFIX/venv with torch and this project, configs in PREFIX/etc
#   MIADMARK_REUSE_SITE=DIR    reuse the dependencies installed in DIR (a site-packages folder)
#                              instead of downloading torch again (CI); the project itself is installed
set -eu
PREFIX=${1:?usage: build.sh PREFIX}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3}

if [ "${MIADMARK_SKIP_APT:-0}" != 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # Debian's Python 3.11 is the one Orthanc's Python plugin embeds: the same venv serves both
  apt-get install -y --no-install-recommends python3 python3-venv orthanc orthanc-python orthanc-dicomweb \
      libgl1 libglib2.0-0 ca-certificates
  rm -rf /var/lib/apt/lists/*
fi

mkdir -p "$PREFIX"
"$PYTHON" -m venv "$PREFIX/venv"
if [ -n "${MIADMARK_REUSE_SITE:-}" ]; then
  SITE=$("$PREFIX/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$MIADMARK_REUSE_SITE" > "$SITE/miadmark-reuse.pth"
  "$PREFIX/venv/bin/pip" install --quiet --no-deps "$SRC"
else
  "$PREFIX/venv/bin/pip" install --quiet --no-cache-dir "torch==2.13.0" "$SRC"
fi
mkdir -p "$PREFIX/etc"
cp "$SRC"/packaging/container/config/* "$PREFIX/etc/"
cp "$SRC/orthanc_plugin/plugin.py" "$PREFIX/etc/orthanc-plugin.py"
"$PREFIX/venv/bin/miadmark" --version
