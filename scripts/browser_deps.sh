#!/usr/bin/env bash
# Debian's chromium + chromium-driver for the `browser` tests (tests/cluster/serving/test_ui_browser.py).
# Installs only when /usr/bin/chromium is absent; uses sudo when not root.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
