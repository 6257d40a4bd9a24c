#!/bin/sh
# Orthanc with the Python and DICOMweb plugins (Debian bookworm packages), for the real-Orthanc
# tests (tests/test_orthanc_*.py), which start their own Orthanc processes on free ports.
set -eu
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update
$SUDO apt-get install -y orthanc orthanc-python orthanc-dicomweb
# Where the package started the system service, stop it: the tests do not use it.
$SUDO service orthanc stop >/dev/null 2>&1 || true
Orthanc --version | head -n 1
test -f /usr/share/orthanc/plugins/libOrthancPython.so
