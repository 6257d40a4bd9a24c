#!/bin/sh
# Chromium from Debian, for the status-page test (tests/test_ops_statuspage_browser.py drives it with
# Playwright through executable_path=/usr/bin/chromium; `playwright install` is never needed).
set -eu
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get install -y chromium
chromium --version
