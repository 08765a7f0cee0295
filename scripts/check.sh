#!/usr/bin/env bash
# The gate CI runs before the tests: lint, format and types, with zero errors.
#   ruff check   the rule set in pyproject.toml ([tool.ruff.lint], each choice commented there)
#   ruff format  --check: the code is formatted as ruff formats it
#   mypy         ckptstore/ and adapters/ ([tool.mypy])
# Run it from anywhere; it uses .venv when there is one. `scripts/check.sh --fix` applies ruff's fixes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && . .venv/bin/activate
if [ "${1:-}" = "--fix" ]; then
  ruff check --fix ckptstore adapters tests benchmarks examples scripts
  ruff format ckptstore adapters tests benchmarks examples scripts
fi
echo "ruff check"; ruff check ckptstore adapters tests benchmarks examples scripts
echo "ruff format --check"; ruff format --check ckptstore adapters tests benchmarks examples scripts
echo "mypy"; mypy
echo "check: ok"
