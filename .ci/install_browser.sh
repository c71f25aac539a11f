#!/usr/bin/env bash
# Installs Debian's chromium for tests/test_browser.py (real JupyterLab in a real browser).
# Idempotent: does nothing when /usr/bin/chromium exists. Never downloads a browser build of its
# own (`playwright install` is not used); Playwright drives this system chromium.
# Exits 0 in every case it cannot act (not root, no apt-get); the browser test then skips
# with a reason. Exits non-zero only when an install was attempted and failed.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $CHROMIUM present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser: $CHROMIUM missing and not root; skipping (tests/test_browser.py will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: $CHROMIUM missing and no apt-get; skipping (tests/test_browser.py will skip)"
    exit 0
fi

echo "install_browser: installing Debian chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
"$CHROMIUM" --version
