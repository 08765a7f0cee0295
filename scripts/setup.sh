#!/usr/bin/env bash
# Creates ./.venv and installs ckptstore into it (idempotent).
#   scripts/setup.sh            the library + CLI
#   scripts/setup.sh test       + everything the test suite needs (servers, frameworks, and Chromium
#                               for the dashboard tests: installed with apt-get when missing, as root)
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
if [ "${1:-}" = "test" ]; then
  # tests/test_dashboard.py opens the dashboard in headless Chromium (skipped when there is none)
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    :
  elif ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no chromium and no apt-get: install Chromium yourself to run the dashboard tests" >&2
  elif [ "$(id -u)" != "0" ]; then
    echo "setup: chromium is missing; run as root (or: sudo apt-get install -y chromium) for the dashboard tests" >&2
  else
    echo "setup: installing chromium (apt-get) for the dashboard tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
      >/dev/null 2>&1 || echo "setup: apt-get could not install chromium; the dashboard tests will be skipped" >&2
  fi
fi
python -c "import ckptstore, torch; print(f'ckptstore {ckptstore.__version__} with torch {torch.__version__} ready in .venv')"
