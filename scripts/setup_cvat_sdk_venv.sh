#!/usr/bin/env bash
# Build a virtual environment with another cvat-sdk / cvat-cli (e.g. the oldest supported, 2.23.0) for the
# compatibility tests in tests/backend/cvat/test_sdk_versions.py:
#
#     scripts/setup_cvat_sdk_venv.sh 2.23.0 .venv-cvat-2.23
#
# Only cvat-sdk, cvat-cli and their own requirements are installed into DIR (a few MB from PyPI). torch,
# dcsam and the rest come from the main environment (MAIN_VENV, default .venv) through a .pth file that
# adds its site-packages *after* DIR's own: the old SDK and its pinned dependencies win, and the model code
# is exactly the one the main tests run (a second torch install would be ~1 GB and could drift from it).
set -euo pipefail

VERSION=${1:?usage: $0 CVAT_SDK_VERSION DIR}
DIR=${2:?usage: $0 CVAT_SDK_VERSION DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAIN_VENV=${MAIN_VENV:-$ROOT/.venv}
PY="$MAIN_VENV/bin/python"
[ -x "$PY" ] || { echo "no main environment at $MAIN_VENV (set MAIN_VENV)" >&2; exit 1; }

if [ -x "$DIR/bin/python" ] && "$DIR/bin/python" -c "import cvat_sdk.version as v, sys; sys.exit(v.VERSION != '$VERSION')" 2>/dev/null; then
    echo "$DIR already has cvat-sdk $VERSION"
    exit 0
fi
rm -rf "$DIR"
"$PY" -m venv "$DIR"   # from a venv, this uses the same base interpreter (same Python ABI as torch's wheels)
"$DIR/bin/pip" install --quiet --disable-pip-version-check "cvat-sdk==$VERSION" "cvat-cli==$VERSION"

MAIN_SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
NEW_SITE=$("$DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
# addsitedir (not a bare path) so the main environment's own .pth files (the editable dcsam) are read too;
# the "zz" name sorts it after every .pth of DIR.
echo "import site; site.addsitedir('$MAIN_SITE')" > "$NEW_SITE/zz-dcsam-main-venv.pth"

"$DIR/bin/python" - "$VERSION" <<'PY'
import sys
import cvat_sdk.version
import torch  # noqa: F401  (from the main environment)
import backend.cvat.func  # noqa: F401
assert cvat_sdk.version.VERSION == sys.argv[1], cvat_sdk.version.VERSION
print(f"cvat-sdk {cvat_sdk.version.VERSION} from {cvat_sdk.__file__}; torch {torch.__version__}")
PY
