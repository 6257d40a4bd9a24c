#!/bin/sh
# Debian packages for the operations tests: Chromium for the status page (tests/test_ops_statuspage_browser.py
# drives /usr/bin/chromium with Playwright; `playwright install` is never needed) and systemd for
# `systemd-analyze verify` on packaging/systemd/*.service (tests/test_ops_packaging.py), dicom3tools for dciodvfy
# (tests/test_conformance_dciodvfy.py: every object written validates as well as its original).
set -eu
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update
$SUDO apt-get install -y chromium systemd dicom3tools
chromium --version
systemd-analyze --version | head -n 1
command -v dciodvfy
