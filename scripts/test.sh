#!/usr/bin/env bash
# Sets everything up from nothing and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
[ $# -gt 0 ] || set -- tests   # the whole suite unless pytest arguments are given
exec python -m pytest -q -p no:cacheprovider "$@"
