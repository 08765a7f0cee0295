#!/usr/bin/env bash
# Creates ./.venv and installs ckptstore into it (idempotent).
#   scripts/setup.sh            the library + CLI
#   scripts/setup.sh test       + everything the test suite needs (servers, frameworks)
# torch is pinned to 2.13.0 here (a local CPU build on our machines); the package itself accepts torch>=2.3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "torch==2.13.0" > .venv/constraints.txt
pip install -q -c .venv/constraints.txt "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
pip install -q -c .venv/constraints.txt -e ".${extras}" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import ckptstore, torch; print(f'ckptstore {ckptstore.__version__} with torch {torch.__version__} ready in .venv')"
