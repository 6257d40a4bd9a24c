#!/bin/sh
# Debian packages for the operations tests: dcmtk (storescu/storescp/echoscu as real peers), dicom3tools
# (dciodvfy, the conformance test), Chromium for the status page (tests/test_ops_statuspage_browser.py
# drives /usr/bin/chromium with Playwright; `playwright install` is never needed) and systemd for
# `systemd-analyze verify` on packaging/systemd/*.service (tests/test_ops_packaging.py).
set -eu
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update
$SUDO apt-get install -y chromium systemd dcmtk dicom3tools
chromium --version
systemd-analyze --version | head -n 1
storescu --version | head -n 1
dciodvfy 2>&1 | head -n 1 || true
