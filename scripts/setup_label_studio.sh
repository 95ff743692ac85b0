#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own virtual environment for the end-to-end tests of the
# Label Studio ML backend (tests/backend/e2e). Label Studio pins its own label-studio-sdk, Django, ...
# so it never shares the project's venv.
#
#   scripts/setup_label_studio.sh [VENV_DIR]     (default: $LS_VENV or <repo>/.venv-ls)
#
# Idempotent: an existing, complete install of the right version is kept (checked by a marker file
# written only after a successful install); a half-finished one is removed and redone.
set -euo pipefail

LS_VERSION="1.23.2"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-${LS_VENV:-$ROOT/.venv-ls}}"
PYTHON="${LS_PYTHON:-python3}"
MARKER="$VENV/.label-studio-$LS_VERSION-installed"

if [ -f "$MARKER" ] && [ -x "$VENV/bin/label-studio" ]; then
    echo "Label Studio $LS_VERSION already installed in $VENV"
    exit 0
fi

# One installer at a time (a test run and CI may both call this).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if [ -f "$MARKER" ] && [ -x "$VENV/bin/label-studio" ]; then
    exit 0
fi

rm -rf "$VENV"
echo "Installing Label Studio $LS_VERSION into $VENV (about 1 GB, a minute or two) ..."
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION"
"$VENV/bin/python" -m pip check
touch "$MARKER"
echo "Label Studio $LS_VERSION installed in $VENV"
