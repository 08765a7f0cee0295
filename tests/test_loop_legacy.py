"""Importing plain torch.save checkpoints into a store: one importer behind import_torch_file,
import_checkpoint and `ckptstore import`, with one rule for steps in names, one for step keys,
one pickle rule."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import pytest
import torch

import ckptstore
from ckptstore.adapters import loop
from ckptstore.adapters.loop import Checkpointer
from ckptstore.cli import main


class Opaque:
    """Not plain data: a file holding one needs real unpickling."""

    def __init__(self, n: int = 1) -> None:
        self.n = n


def _model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


NAME_CASES = [
    ("checkpoint_step_4000.pt", 4000, None),
    ("ep3_it900.pt", 900, 3),
    ("laststep5.pt", 5, None),
    ("final_model.pt", None, None),
    ("model-epoch=2-step=300.ckpt", 300, 2),
    ("checkpoint-500.pt", 500, None),
    ("model_iter12.pth", 12, None),
    ("ckpt_epoch_3.pt", None, 3),
    ("run1_epoch2_step300.pt", 300, 2),
    ("global_step=77.ckpt", 77, None),
    ("iteration_8.pt", 8, None),
    ("split3.pt", None, None),
    ("deep3.pt", None, None),
    ("ckpt7.pt", 7, None),
]


@pytest.mark.parametrize("entry", ["import_torch_file", "import_checkpoint", "cli", "loop"])
@pytest.mark.parametrize("name,step,epoch", NAME_CASES)
def test_step_and_epoch_from_file_names(
    tmp_path: Path, name: str, step: int | None, epoch: int | None, entry: str
) -> None:
    """Every entry point gives the same step and epoch for a file that carries them only in its name."""
    path = tmp_path / name
    torch.save({"model": {"w": torch.ones(2)}}, path)
    store = tmp_path / "store"
    ckptstore.save({"x": 1}, store, step=10)  # a nameless file is numbered after this one: 11
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "records no step"
        if entry == "import_torch_file":
            info = ckptstore.import_torch_file(path, store)
        elif entry == "loop":
            info = loop.import_torch_file(path, store)
        elif entry == "import_checkpoint":
            [info] = ckptstore.import_checkpoint(path, store)
        else:
            assert main(["import", str(path), str(store)]) == 0
            [info] = [i for i in ckptstore.list_checkpoints(store) if i.meta.get("name") == name]
    assert (info.step, info.epoch) == (11 if step is None else step, epoch)


@pytest.mark.parametrize("value", [torch.tensor(4000), torch.tensor(4000.0), 4000.0, 4000])
@pytest.mark.parametrize("key", ["step", "global_step", "iteration"])
@pytest.mark.parametrize("entry", ["import_torch_file", "import_checkpoint"])
def test_step_inside_the_file_is_an_int_and_wins_over_the_name(
    tmp_path: Path, key: str, value: object, entry: str
) -> None:
    torch.save({"model": _model().state_dict(), key: value, "epoch": torch.tensor(2.0)}, tmp_path / "laststep5.pt")
    fn = (
        ckptstore.import_torch_file
        if entry == "import_torch_file"
        else (lambda *a, **kw: ckptstore.import_checkpoint(*a, **kw)[0])
    )
    info = fn(tmp_path / "laststep5.pt", tmp_path / "s")
    assert info.step == 4000 and type(info.step) is int and info.epoch == 2
    assert "step" not in ckptstore.load(tmp_path / "s").get("extra", {})  # the step is the manifest's field
    assert fn(tmp_path / "laststep5.pt", tmp_path / "s2", step=5, epoch=0).step == 5  # the caller wins


def test_step_key_order_and_plans_are_not_progress(tmp_path: Path) -> None:
    torch.save(
        {"model": {"w": torch.ones(1)}, "step": 7, "global_step": 9, "total_steps": 100, "epochs": 4}, tmp_path / "a.pt"
    )
    info = ckptstore.import_torch_file(tmp_path / "a.pt", tmp_path / "s")
    assert (info.step, info.epoch) == (9, None)  # global_step first; total_steps/epochs are plans
    assert ckptstore.load(tmp_path / "s")["extra"] == {"step": 7, "total_steps": 100, "epochs": 4}


def test_import_resumes_in_the_checkpointer(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "step": 4000,
            "epoch": 2,
            "loss_history": [3.0, 2.5],
            "config": {"lr": 1e-3, "batch_size": 8},
        },
        tmp_path / "checkpoint.pt",
    )
    torch.save(model.state_dict(), tmp_path / "final_model.pt")
    store = tmp_path / "store"
    a = ckptstore.import_torch_file(tmp_path / "checkpoint.pt", store, tags=["old"])
    assert (a.step, a.epoch, a.tags, a.config) == (4000, 2, ("old",), {"lr": 1e-3, "batch_size": 8})
    assert a.meta["framework"] == "torch" and a.meta["source_keys"] == {
        "model": "model_state_dict",
        "optimizer": "optimizer_state_dict",
        "step": "step",
        "epoch": "epoch",
        "config": "config",
    }
    with pytest.warns(UserWarning, match="records no step") as rec:
        b = ckptstore.import_torch_file(tmp_path / "final_model.pt", store)
    assert rec[0].filename == __file__  # the warning points at the caller's line
    assert b.step == 4001 and b.meta["imported_from"] == str(tmp_path / "final_model.pt")
    state = ckptstore.load(store, step=4000)
    assert set(state) == {"model", "optimizer", "extra"} and state["extra"] == {"loss_history": [3.0, 2.5]}

    m2 = _model()
    with torch.no_grad():
        for p in m2.parameters():
            p.zero_()
    o2 = torch.optim.Adam(m2.parameters())
    hist: dict = {}
    ck = Checkpointer(store, signals=())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # imported files carry no RNG states
        assert ck.resume(model=m2, optimizer=o2, extra=hist, step=4000) == 4000
    assert all(torch.equal(x, y) for x, y in zip(m2.parameters(), model.parameters()))
    assert torch.equal(o2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert hist == {"loss_history": [3.0, 2.5]}
    assert ck.resumed is not None and ck.start_epoch == 2
    ck.close(final=False)


def test_pickle_rule_is_the_same_on_both_entry_points(tmp_path: Path) -> None:
    torch.save({"model": _model().state_dict(), "step": 10, "extra": Opaque(5)}, tmp_path / "old.pt")
    for fn in (ckptstore.import_torch_file, ckptstore.import_checkpoint):
        with pytest.raises(ckptstore.PickleNotAllowedError, match=r"Opaque.*allow_pickle=True"):
            fn(tmp_path / "old.pt", tmp_path / "s")
        assert not (tmp_path / "s").exists()
    info = ckptstore.import_torch_file(tmp_path / "old.pt", tmp_path / "s", allow_pickle=True)
    assert info.step == 10
    assert ckptstore.load(tmp_path / "s", allow_pickle=True)["extra"]["extra"].n == 5
    [again] = ckptstore.import_checkpoint(tmp_path / "old.pt", tmp_path / "s", allow_pickle=True, step=11)
    assert again.step == 11


def test_harmless_classes_load_without_pickle(tmp_path: Path) -> None:
    args = argparse.Namespace(lr=0.1, batch_size=4)  # allowlisted: no allow_pickle needed
    torch.save({"model": _model().state_dict(), "args": args, "step": 10}, tmp_path / "old.pt")
    info = ckptstore.import_torch_file(tmp_path / "old.pt", tmp_path / "s")
    assert info.step == 10 and info.config == {"lr": 0.1, "batch_size": 4}


def test_clear_errors_for_missing_and_non_torch_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file to import"):
        ckptstore.import_torch_file(tmp_path / "nope.pt", tmp_path / "s")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    for allow_pickle in (False, True):
        with pytest.raises(ckptstore.UnsupportedFormatError, match="not a torch.save file"):
            ckptstore.import_torch_file(tmp_path / "junk.pt", tmp_path / "s", allow_pickle=allow_pickle)
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(1000)}}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])
    with pytest.raises(ckptstore.UnsupportedFormatError, match="damaged"):
        ckptstore.import_torch_file(tmp_path / "cut.pt", tmp_path / "s")
    assert not os.path.exists(tmp_path / "s")


def test_export_writes_the_original_layout_back(tmp_path: Path) -> None:
    model = _model()
    src = {
        "net": model.state_dict(),
        "iteration": torch.tensor(300),
        "cfg": {"lr": 0.5},
        "val_loss": 0.25,
        "history": [1, 2],
    }
    torch.save(src, tmp_path / "x.pt")
    info = ckptstore.import_torch_file(tmp_path / "x.pt", tmp_path / "s")
    assert info.metrics == {"val_loss": 0.25}
    ckptstore.export_checkpoint(tmp_path / "s", tmp_path / "out")
    back = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert set(back) == set(src) and back["iteration"] == 300 and back["cfg"] == {"lr": 0.5}
    assert back["history"] == [1, 2] and all(torch.equal(back["net"][k], v) for k, v in src["net"].items())
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    ckptstore.import_torch_file(tmp_path / "bare.pt", tmp_path / "s", step=400)
    ckptstore.export_checkpoint(tmp_path / "s", tmp_path / "out2")
    bare = torch.load(tmp_path / "out2" / "checkpoint.pt", weights_only=True)
    assert bare.keys() == model.state_dict().keys()


def test_adapters_reexport_the_core_importer() -> None:
    from ckptstore.adapters import interop

    assert loop.import_torch_file is ckptstore.import_torch_file
    assert interop.import_checkpoint is ckptstore.import_checkpoint
    assert interop.export_checkpoint is ckptstore.export_checkpoint
