"""The Hugging Face callback with 2 processes (DDP on gloo, 127.0.0.1), launched by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ckptstore

from ._dcp_job import free_port

HERE = os.path.dirname(__file__)

pytest.importorskip("transformers")


def _torchrun(job: list[dict[str, Any]], tmp: Path, name: str) -> str:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(job))
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "_hf_job.py", str(path)]  # fmt: skip
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(argv, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_trainer_with_two_processes_commits_once_and_resumes(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = _torchrun([{"store": store, "output_dir": str(tmp_path / "out"), "max_steps": 8, "save_steps": 4}],
                      tmp_path, "first")  # fmt: skip
    assert first.count("DONE 8") == 2
    assert [i.step for i in ckptstore.list_checkpoints(store)] == [4, 8]  # one commit per save, by rank 0
    files = ckptstore.Store(store).manifest(8).tree["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "model.safetensors"} <= set(files)
    second = _torchrun(
        [{"store": store, "output_dir": str(tmp_path / "out2"), "max_steps": 12, "save_steps": 4, "resume": True}],
        tmp_path,
        "second",
    )
    assert second.count("resumed_from=") == 2 and second.count("checkpoint-8") >= 2, second[-2000:]
    assert second.count("DONE 12") == 2
    assert [i.step for i in ckptstore.list_checkpoints(store)] == [4, 8, 12]
    ckptstore.Store(store).verify(12)
