#!/usr/bin/env bash
# Sets up ckptstore and runs the demo: train with checkpoints into a local store, get
# interrupted, resume from the newest checkpoint and finish.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python examples/demo_train.py "$@"
