"""The Hugging Face callback and the Lightning plugin with 2 processes (DDP on gloo, 127.0.0.1),
launched by torchrun: one commit per save (by rank 0), every rank resumes from it."""

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


def _torchrun(job: list[dict[str, Any]], tmp: Path, name: str, script: str = "_hf_job.py") -> str:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(job))
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), script, str(path)]  # fmt: skip
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(argv, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_trainer_with_two_processes_commits_once_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
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


@pytest.mark.slow
def test_lightning_ddp_strategy_commits_once_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    store, script = str(tmp_path / "store"), "_lightning_job.py"
    job = {"store": store, "dir": str(tmp_path / "run"), "epochs": 3, "devices": 2, "strategy": "ddp"}
    first = _torchrun([job], tmp_path, "first", script)
    assert first.count("DONE 12") == 2
    steps = [i.step for i in ckptstore.list_checkpoints(store)]
    assert steps == [8, 12, 12]  # the two best epochs (save_top_k=2) and last.ckpt, each committed once
    again = {**job, "dir": str(tmp_path / "run2"), "epochs": 5, "ckpt_path": "last"}
    second = _torchrun([again], tmp_path, "second", script)
    assert second.count("RESUMED_FROM ckptstore://") == 2 and second.count("DONE 20") == 2
    assert [i.step for i in ckptstore.list_checkpoints(store)][-3:] == [16, 20, 20]
