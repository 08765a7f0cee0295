"""The Lightning adapter: a store-only CheckpointIO, ckpt_path="last" from the store, exact resume."""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

import ckptstore  # noqa: E402

from . import _lightning_job  # noqa: E402
from ._fw_util import damage_newest, run_jobs  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning",
    "ignore::FutureWarning",
    "ignore:.*does not have many workers.*",
    "ignore:.*LeafSpec.*",
    "ignore:.*no last checkpoint available.*",
)


class Custom:
    """A value the store cannot hold without pickle."""


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("pl_ref")
    out = _lightning_job.run({"store": str(tmp / "store"), "dir": str(tmp / "run")})
    weights = {k: v.detach().clone() for k, v in out["model"].state_dict().items()}
    return {"store": tmp / "store", "dir": tmp / "run", "weights": weights, **out}


def test_top_k_and_last_are_what_the_store_keeps(reference: dict) -> None:
    cb = reference["callback"]
    infos = ckptstore.list_checkpoints(reference["store"])
    names = sorted(i.meta["name"] for i in infos)
    expected = sorted([os.path.basename(p) for p in cb.best_k_models] + ["last.ckpt"])
    assert names == expected and len(names) == 3  # removals were honoured, last.ckpt replaced in place
    assert [i.step for i in infos if i.meta["name"] == "last.ckpt"] == [48]
    assert infos[-1].meta["total_steps"] == 48 and infos[-1].meta["progress"] == 1.0
    assert not (reference["dir"] / "checkpoints").exists() or not os.listdir(reference["dir"] / "checkpoints")
    best = min(infos, key=lambda i: i.metrics["val_loss"])
    assert best.meta["path"] == cb.best_model_path
    with ckptstore.Store(reference["store"]) as store:
        for i in infos:  # data shared with forgotten checkpoints is still there
            store.verify(id=i.id)


def test_checkpoint_dict_round_trips_without_pickle(reference: dict) -> None:
    io = reference["io"]
    with ckptstore.Store(reference["store"]) as store:
        info = store.latest()
        raw = store.load()  # plain load, allow_pickle=False: nothing in it needs pickle
    assert raw["hyper_parameters"]["opts"] == {"depth": 2, "name": "tiny"}
    ckpt = io.load_checkpoint(info.meta["path"])
    hp = ckpt["hyper_parameters"]
    assert isinstance(hp["opts"], argparse.Namespace) and hp["opts"].depth == 2
    assert isinstance(hp["data_dir"], pathlib.PurePath)
    assert ckpt["global_step"] == 48 and ckpt["epoch"] == 5
    assert isinstance(ckpt["optimizer_states"][0]["state"][0]["exp_avg"], torch.Tensor)
    assert ckpt["lr_schedulers"][0]["step_size"] == 10
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 5
    assert _equal(dict(ckpt["state_dict"]), reference["weights"])


@pytest.mark.slow
def test_sigkill_then_fit_last_resumes_exactly(reference: dict, tmp_path: Path) -> None:
    store, run = tmp_path / "store", tmp_path / "run"
    rc, stdout, _ = run_jobs(
        "_lightning_job.py",
        [{"store": str(store), "dir": str(run), "announce": True, "pause": 0.3}],
        tmp_path,
        kill_after="COMMITTED 24 last.ckpt",
    )
    assert rc == -9, stdout
    for name in ("damaged", "explicit", "norng"):
        shutil.copytree(store, tmp_path / name)
    bad = damage_newest(tmp_path / "damaged")
    older = [i for i in ckptstore.list_checkpoints(tmp_path / "damaged") if i.step < bad.step][-1]
    explicit = [i for i in ckptstore.list_checkpoints(store) if i.step == 16][0].meta["path"]
    assert not os.path.exists(explicit)  # only the store has it

    finals = {k: tmp_path / f"{k}.safetensors" for k in ("last", "damaged", "explicit", "norng")}
    rc, stdout, stderr = run_jobs(
        "_lightning_job.py",
        [
            {"store": str(store), "dir": str(run), "ckpt_path": "last", "final": str(finals["last"])},
            {"store": str(tmp_path / "damaged"), "dir": str(run), "ckpt_path": "last", "final": str(finals["damaged"])},
            {
                "store": str(tmp_path / "explicit"),
                "dir": str(run),
                "ckpt_path": explicit,
                "final": str(finals["explicit"]),
            },
            {
                "store": str(tmp_path / "norng"),
                "dir": str(run),
                "ckpt_path": "last",
                "restore_rng": False,
                "final": str(finals["norng"]),
            },
        ],
        tmp_path,
    )
    assert rc == 0, stderr[-3000:]
    assert stdout.count("RESUMED_FROM ckptstore://") == 3 and f"RESUMED_FROM {explicit}" in stdout
    assert f"step {bad.step} ({bad.short_id})" in stderr and "is damaged" in stderr
    assert f"Resuming from step {older.step} ({older.short_id}) instead" in stderr

    from safetensors.torch import load_file

    for k in ("last", "damaged", "explicit"):
        assert _equal(load_file(str(finals[k])), reference["weights"]), f"resume via {k} differs"
    # Lightning alone does not restore RNG states: shuffling and dropout then differ.
    assert not _equal(load_file(str(finals["norng"])), reference["weights"])
    assert max(i.step for i in ckptstore.list_checkpoints(store)) == 48


def test_stock_model_checkpoint_with_store_warns_instead_of_silently_restarting(
    reference: dict, tmp_path: Path
) -> None:
    shutil.copytree(reference["store"], tmp_path / "store")
    with pytest.warns(UserWarning, match="already holds checkpoints up to step 48, but this run did not resume"):
        _lightning_job.run(
            {
                "store": str(tmp_path / "store"),
                "dir": str(tmp_path / "run"),
                "ckpt_path": "last",
                "plain": True,
                "epochs": 1,
            }
        )


def test_last_on_empty_store_trains_from_scratch_and_missing_path_is_clear(tmp_path: Path) -> None:
    out = _lightning_job.run(
        {"store": str(tmp_path / "store"), "dir": str(tmp_path / "run"), "ckpt_path": "last", "epochs": 1}
    )
    assert out["trainer"].ckpt_path is None and out["trainer"].global_step == 8
    with pytest.raises(ckptstore.CheckpointNotFoundError, match="no checkpoint saved as 'nope.ckpt'"):
        out["io"].load_checkpoint("nope.ckpt")


def test_values_that_need_pickle_are_refused_unless_allowed(tmp_path: Path) -> None:
    from ckptstore.adapters.lightning import CkptstoreCheckpointIO

    ckpt = {"global_step": 3, "epoch": 0, "state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"x": Custom()}}
    with pytest.raises(ckptstore.UnsupportedValueError, match="allow_pickle=True"):
        CkptstoreCheckpointIO(tmp_path / "a").save_checkpoint(ckpt, tmp_path / "x.ckpt")
    io = CkptstoreCheckpointIO(tmp_path / "b", allow_pickle=True)
    io.save_checkpoint(ckpt, tmp_path / "x.ckpt")
    assert isinstance(io.load_checkpoint(tmp_path / "x.ckpt")["hyper_parameters"]["x"], Custom)
    with pytest.raises(ckptstore.PickleNotAllowedError):
        CkptstoreCheckpointIO(tmp_path / "b").load_checkpoint(tmp_path / "x.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.remove_checkpoint(tmp_path / "x.ckpt")
    assert ckptstore.list_checkpoints(tmp_path / "b") == []
