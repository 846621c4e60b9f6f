#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own venv (.lsvenv at the repository root) for the end-to-end tests, from
# scripts/labelstudio.lock (exact versions and hashes; `make lock` refreshes it from scripts/labelstudio.in).
# Idempotent: does nothing when .lsvenv/bin/label-studio already reports 1.23.2, installed from this very lock.
# Its own venv on purpose: label-studio pins rq<2.7 and redis<5.3, which would downgrade the project's rq 3.
#
#   scripts/labelstudio.sh            # install (or confirm) and print the label-studio path
#   PYTHON=python3.12 LSVENV=/tmp/ls scripts/labelstudio.sh
set -euo pipefail

LS_VERSION="1.23.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LSVENV="${LSVENV:-$ROOT/.lsvenv}"
PYTHON="${PYTHON:-python3.11}"
LS_BIN="$LSVENV/bin/label-studio"
LOCK="$ROOT/scripts/labelstudio.lock"
[[ -f "$LOCK" ]] || { echo "labelstudio.sh: ERROR: $LOCK is missing" >&2; exit 1; }
LOCK_SUM="$(sha256sum "$LOCK" | cut -d' ' -f1)"

say() { echo "labelstudio.sh: $*"; }
fail() { echo "labelstudio.sh: ERROR: $*" >&2; exit 1; }

installed_version() {
    # `label-studio --version` prints a banner with the version; the package metadata is quicker and exact
    "$LSVENV/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
print(version("label-studio"))
PY
}

if [[ -x "$LS_BIN" && -x "$LSVENV/bin/python" ]]; then
    have="$(installed_version)"
    if [[ "$have" == "$LS_VERSION" && "$(cat "$LSVENV/.lock-sha256" 2>/dev/null)" == "$LOCK_SUM" ]]; then
        say "label-studio $LS_VERSION already installed in $LSVENV"
        echo "$LS_BIN"
        exit 0
    fi
    say "found label-studio '${have:-unknown}' in $LSVENV, want $LS_VERSION from $LOCK: reinstalling"
fi

command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found on PATH (Label Studio $LS_VERSION needs Python >= 3.10)"

if [[ ! -x "$LSVENV/bin/python" ]]; then
    say "creating venv $LSVENV with $PYTHON"
    "$PYTHON" -m venv "$LSVENV" || fail "could not create the venv $LSVENV"
fi

say "installing label-studio==$LS_VERSION into $LSVENV from $LOCK (a few minutes the first time, ~1 GB)"
start=$(date +%s)
# Python 3.11's bundled pip (23.2) rejects the lock in hash-checking mode when a dependency asks for an extra (jsf wants
# smart-open[http]); the same pinned pip as the Makefile's PIP
"$LSVENV/bin/python" -m pip install --quiet --progress-bar off pip==25.3 || fail "could not install pip==25.3 into $LSVENV"
if ! "$LSVENV/bin/python" -m pip install --quiet --progress-bar off --require-hashes -r "$LOCK"; then
    fail "pip install -r $LOCK failed (no network / no access to PyPI?). See pip's output above."
fi
say "pip install took $(( $(date +%s) - start )) s"

[[ -x "$LS_BIN" ]] || fail "pip finished but $LS_BIN is missing"
have="$(installed_version)"
[[ "$have" == "$LS_VERSION" ]] || fail "installed label-studio reports '${have:-nothing}', expected $LS_VERSION"
echo "$LOCK_SUM" > "$LSVENV/.lock-sha256"
say "label-studio $LS_VERSION ready in $LSVENV"
echo "$LS_BIN"
