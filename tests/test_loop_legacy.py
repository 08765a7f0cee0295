"""Importing plain torch.save checkpoints into a store (weights_only by default)."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pytest
import torch

import ckptstore
from ckptstore.adapters._legacy import parse_step_from_name
from ckptstore.adapters.loop import Checkpointer, import_torch_file


def _model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


@pytest.mark.parametrize("name,step,epoch", [
    ("checkpoint_step_4000.pt", 4000, None), ("checkpoint-500.pt", 500, None), ("model_iter12.pth", 12, None),
    ("ckpt_epoch_3.pt", None, 3), ("run1_epoch2_step300.pt", 300, 2), ("final_model.pt", None, None),
    ("global_step=77.ckpt", 77, None),
])
def test_step_and_epoch_from_file_names(name: str, step: int | None, epoch: int | None) -> None:
    assert parse_step_from_name(f"/x/{name}") == (step, epoch)


def test_import_step_file_then_final_model_and_resume(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "epoch": 2, "loss_history": [3.0, 2.5], "config": {"lr": 1e-3, "batch_size": 8}},
               tmp_path / "checkpoint_step_4000.pt")
    torch.save(model.state_dict(), tmp_path / "final_model.pt")
    store = tmp_path / "store"
    a = import_torch_file(tmp_path / "checkpoint_step_4000.pt", store)
    assert (a.step, a.epoch, a.tags, a.config) == (4000, 2, ("imported",), {"lr": 1e-3, "batch_size": 8})
    with pytest.warns(UserWarning, match="records no step"):
        b = import_torch_file(tmp_path / "final_model.pt", store)
    assert b.step == 4001 and b.tags == ("imported", "final") and b.meta["imported_from"].endswith("final_model.pt")
    state = ckptstore.load(store, step=4000)
    assert set(state) == {"model", "optimizer", "extra"} and state["extra"] == {"loss_history": [3.0, 2.5]}

    m2, o2 = _model(), None
    with torch.no_grad():
        for p in m2.parameters():
            p.zero_()
    o2 = torch.optim.Adam(m2.parameters())
    hist: dict = {}
    ck = Checkpointer(store, signals=())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # imported files carry no RNG states
        assert ck.resume(model=m2, optimizer=o2, extra=hist, step=4000) == 4000
    assert torch.equal(m2[0].weight, model[0].weight) and hist == {"loss_history": [3.0, 2.5]}
    assert ck.resumed is not None and ck.start_epoch == 2
    ck.close(final=False)


def test_step_in_contents_wins_and_explicit_step_wins_over_both(tmp_path: Path) -> None:
    torch.save({"model": _model().state_dict(), "global_step": torch.tensor(1234)}, tmp_path / "ckpt_step_9.pt")
    assert import_torch_file(tmp_path / "ckpt_step_9.pt", tmp_path / "s").step == 1234
    assert import_torch_file(tmp_path / "ckpt_step_9.pt", tmp_path / "s", step=5).step == 5


def test_pickled_objects_refused_unless_weights_only_false(tmp_path: Path) -> None:
    args = argparse.Namespace(lr=0.1, batch_size=4)
    torch.save({"model": _model().state_dict(), "args": args, "step": 10}, tmp_path / "old.pt")
    with pytest.raises(ckptstore.PickleNotAllowedError, match="weights_only=False"):
        import_torch_file(tmp_path / "old.pt", tmp_path / "s")
    assert not (tmp_path / "s" / "manifests").exists()
    info = import_torch_file(tmp_path / "old.pt", tmp_path / "s", weights_only=False)
    assert info.step == 10 and info.config == {"lr": 0.1, "batch_size": 4}


def test_clear_errors_for_missing_and_non_torch_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file to import"):
        import_torch_file(tmp_path / "nope.pt", tmp_path / "s")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ckptstore.CkptstoreError):
        import_torch_file(tmp_path / "junk.pt", tmp_path / "s")
