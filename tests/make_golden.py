"""Writes tests/golden/v1: a tiny store in format v1 that every later ckptstore must load.

Run once when the format version changes (never to "fix" a failing golden test):
    python tests/make_golden.py
"""

import collections
import os
import shutil

import torch

import ckptstore

HERE = os.path.dirname(__file__)


def golden_state(step: int):
    return {
        "model": collections.OrderedDict(
            [
                ("w", torch.arange(12, dtype=torch.float32).reshape(3, 4) + step),
                ("b", torch.arange(3, dtype=torch.bfloat16)),
            ]
        ),
        "optimizer": {
            "state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.full((3, 4), 0.5)}},
            "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0]}],
        },
        "step": step,
        "history": [1.0, float("nan"), -0.0],
        "bytes": b"\x00\x01",
        "big": torch.arange(70_000, dtype=torch.int64) * step,
    }


if __name__ == "__main__":
    root = os.path.join(HERE, "golden", "v1")
    shutil.rmtree(root, ignore_errors=True)
    store = ckptstore.Store(root, chunk_size=256 << 10)
    for step in (10, 20):
        store.save(
            golden_state(step),
            step=step,
            epoch=step // 10,
            config={"lr": 0.001},
            metrics={"loss": 1.0 / step},
            tags=["golden"],
            rng=False,
            compression="zstd" if step == 20 else None,
        )
    print(root)
