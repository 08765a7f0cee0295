"""The README demo (examples/demo_train.py) runs: interrupted by Ctrl+C, then resumed to the end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ckptstore

DEMO = Path(__file__).parent.parent / "examples" / "demo_train.py"


@pytest.mark.slow
def test_demo_is_interrupted_then_resumes_and_finishes(tmp_path: Path) -> None:
    store = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, str(DEMO), "--store", str(store)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "run 1 exited with status 130" in out
    assert "resumed from step 131" in out and "signal:SIGINT" in out
    assert "finished: 300 steps, final loss" in out
    steps = [i.step for i in ckptstore.list_checkpoints(store)]
    # the emergency checkpoint 131 was resumed from; keep_last=3 leaves the last three
    assert steps == [200, 250, 300]
