#!/usr/bin/env bash
# Make sure Debian's Chromium and its chromedriver are installed, for the browser end-to-end test
# (tests/e2e/test_browser.py drives Label Studio's labeling page with Selenium, headless).
# Idempotent: does nothing when both binaries are there; otherwise `apt-get update && apt-get install -y chromium
# chromium-driver` (needs root and the Debian mirror). Prints the two paths, chromium first.
#
#   scripts/chromium.sh                    # install (or confirm) and print the paths
#   CHROMIUM=/opt/chromium/chrome CHROMEDRIVER=/opt/chromium/chromedriver scripts/chromium.sh   # use other binaries
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"

say() { echo "chromium.sh: $*" >&2; }
fail() { echo "chromium.sh: ERROR: $*" >&2; exit 1; }

if [[ ! -x "$CHROMIUM" || ! -x "$CHROMEDRIVER" ]]; then
    missing=()
    [[ -x "$CHROMIUM" ]] || missing+=("$CHROMIUM")
    [[ -x "$CHROMEDRIVER" ]] || missing+=("$CHROMEDRIVER")
    say "missing: ${missing[*]}; installing Debian's chromium and chromium-driver"
    command -v apt-get >/dev/null 2>&1 \
        || fail "no apt-get on this machine: install Chromium and its chromedriver yourself and point CHROMIUM and CHROMEDRIVER at them"
    as_root=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
            || fail "installing chromium needs root (apt-get); run: sudo apt-get update && sudo apt-get install -y chromium chromium-driver"
        as_root=(sudo -n)
    fi
    start=$(date +%s)
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
        || fail "apt-get update failed (no access to the Debian mirror?); see its output above"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >&2 \
        || fail "apt-get install chromium chromium-driver failed; see its output above"
    say "apt-get took $(( $(date +%s) - start )) s"
    [[ -x "$CHROMIUM" ]] || fail "apt-get finished but $CHROMIUM is missing (set CHROMIUM to the browser binary)"
    [[ -x "$CHROMEDRIVER" ]] || fail "apt-get finished but $CHROMEDRIVER is missing (set CHROMEDRIVER)"
fi

# both must run: a half-installed browser (missing shared libraries) fails here with its own message
"$CHROMIUM" --version >&2 || fail "$CHROMIUM does not run"
"$CHROMEDRIVER" --version >&2 || fail "$CHROMEDRIVER does not run"
echo "$CHROMIUM"
echo "$CHROMEDRIVER"
