"""Retention through the Checkpointer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ckptstore
from ckptstore.adapters.loop import Checkpointer


@pytest.mark.parametrize("async_save", [False, True])
def test_keep_last_and_best(tmp_path: Path, async_save: bool) -> None:
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
    val = [9.0, 8.0, 1.0, 7.0, 6.5, 6.0, 5.9, 5.8, 5.7, 5.6]
    ck = Checkpointer(
        tmp_path, every_steps=1, keep_last=3, keep_best=("val_loss", "min"), async_save=async_save, signals=()
    )
    for i, v in enumerate(val):
        with torch.no_grad():
            model.weight.add_(1)
        ck.step(i, model=model, metrics={"val_loss": v})
    ck.close()
    assert [i.step for i in ckptstore.list_checkpoints(tmp_path)] == [3, 8, 9, 10]
    assert ck.best is not None and ck.best.step == 3
    assert (
        ckptstore.load(tmp_path, step=3)["model"]["weight"][0, 0]
        == ckptstore.load(tmp_path, step=8)["model"]["weight"][0, 0] - 5
    )


def test_explicit_retention_object(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    ck = Checkpointer(tmp_path, every_steps=1, retention=ckptstore.Retention(keep_last=2), signals=())
    for i in range(5):
        ck.step(i, model=model)
    ck.close()
    assert [i.step for i in ckptstore.list_checkpoints(tmp_path)] == [4, 5]
