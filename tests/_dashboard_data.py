"""Stores for the dashboard tests and benchmark.

``long_run(uri, n)`` makes a store of ``n`` checkpoints quickly: three real saves, then
``n - 3`` more manifests written as a writer would (the format's canonical JSON, named by its
hash) that reuse those saves' objects with other steps, times and metrics (a loss that is NaN
every 97th step, an ``eval_acc`` recorded every 10th). Every manifest is valid and loads.
"""

from __future__ import annotations

import math
from datetime import timedelta

import torch

import ckptstore
from ckptstore.format import _hashing
from ckptstore.format._layout import manifest_key
from ckptstore.format._manifest import dump


def loss_at(i: int) -> float:
    return math.nan if i % 97 == 50 else 2.0 * math.exp(-i / 150) + 0.01


def long_run(uri: str, n: int, *, total_steps: int | None = None) -> ckptstore.Store:
    store = ckptstore.Store(uri)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    bases = []
    for i in range(3):
        with torch.no_grad():
            model[2].weight.mul_(0.9)
        info = store.save(
            {"model": model.state_dict()},
            step=i * 10,
            metrics={"loss": loss_at(i)},
            meta={"trigger": "every_steps"},
            rng=False,
        )
        bases.append(store.manifest(id=info.id))
    t0 = bases[0].created_at
    for i in range(3, n):
        base = bases[i % 3]
        metrics = {"loss": loss_at(i)}
        if i % 10 == 0:
            metrics["eval_acc"] = min(0.99, 0.3 + i / (n * 1.5))
        meta = {"trigger": "every_steps"}
        if total_steps:
            meta.update(total_steps=total_steps, progress=min(1.0, i * 10 / total_steps))
        m = base.model_copy(
            update={
                "step": i * 10,
                "created_at": t0 + timedelta(seconds=30 * i),
                "metrics": metrics,
                "meta": meta,
                "parent": None,
            }
        )
        data = dump(m)
        store.backend.write(manifest_key(m.step, _hashing.digest(data)), data)
    store.backend.sync()
    store.catalog.clear()
    return store
